"""Signed /files URLs, the token-or-signature gate, and /files itself through the envd app
(httpx's ASGI transport, a sandbox whose root is a tmp dir), plus header-less proxy routing."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from e2b.sandbox.signature import get_signature
from fakes.envd_sandbox import FakeDirectory, FakeSandbox

from shoal.envd.app import EnvdApp, build_envd_app
from shoal.envd.files.download import choose_encoding, content_disposition
from shoal.envd.files.metadata import from_headers
from shoal.envd.files.signature import (
    EXPIRED_MESSAGE,
    SignatureFinder,
    SignedRequest,
    authorize,
    first_values,
    sign,
)
from shoal.errors import InvalidArgument, Unauthenticated
from shoal.proxy.app import Proxy, Upstream
from shoal.runtime.rootfs import RootFS

TOKEN = "tok-123"


# --- signatures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "op", "user", "expiration"),
    [
        ("a.txt", "read", None, None),
        ("/home/user/ü b.txt", "write", "user", None),
        ("x", "read", "root", 1_900_000_000),
        ("", "write", None, 1),
    ],
)
def test_signature_is_the_sdks(
    path: str, op: str, user: str | None, expiration: int | None
) -> None:
    sdk = get_signature(path, op, user, TOKEN)  # type: ignore[arg-type]
    if expiration is not None:
        sdk = get_signature(path, op, user, TOKEN, expiration - int(time.time()))  # type: ignore[arg-type]
        expiration = sdk["expiration"]
    assert sign(path, op, user or "", TOKEN, expiration) == sdk["signature"]


def signed(
    path: str, op: str = "read", username: str = "", exp: int | None = None
) -> SignedRequest:
    return SignedRequest(path, op, username, sign(path, op, username, TOKEN, exp), exp)


def test_authorize_order_and_messages() -> None:
    authorize(None, None, SignedRequest("a", "read", "", None, None))  # open sandbox
    authorize(TOKEN, TOKEN, SignedRequest("a", "read", "", None, None))  # header suffices
    with pytest.raises(Unauthenticated, match="does not match"):
        authorize(TOKEN, "wrong", signed("a"))  # a wrong header is not saved by a signature
    with pytest.raises(Unauthenticated, match=r"^missing signature query parameter$"):
        authorize(TOKEN, None, SignedRequest("a", "read", "", None, None))
    authorize(TOKEN, None, signed("a"))
    authorize(TOKEN, None, signed("a", exp=int(time.time()) + 60))
    for bad in (
        SignedRequest("b", "read", "", signed("a").signature, None),  # other path
        SignedRequest("a", "write", "", signed("a").signature, None),  # other operation
        SignedRequest("a", "read", "root", signed("a").signature, None),  # other user
        SignedRequest("a", "read", "", "v1_" + "A" * 43, None),
        SignedRequest("a", "read", "", "v1_é", None),
    ):
        with pytest.raises(Unauthenticated, match=r"^invalid signature$"):
            authorize(TOKEN, None, bad)
    # The expiration is signed: moving it invalidates; an honest past one is "expired".
    past = signed("a", exp=int(time.time()) - 120)
    with pytest.raises(Unauthenticated, match=r"^invalid signature$"):
        authorize(TOKEN, None, SignedRequest("a", "read", "", past.signature, 4_000_000_000))
    with pytest.raises(Unauthenticated, match=f"^{EXPIRED_MESSAGE}$"):
        authorize(TOKEN, None, past)


def test_query_first_value_wins_and_keeps_raw_bytes() -> None:
    q = first_values(b"path=a%2Fb&path=evil&username=&signature=v1_x%2By&p=%FF%00")
    assert q == {"path": "a/b", "username": "", "signature": "v1_x+y", "p": "\udcff\x00"}
    with pytest.raises(InvalidArgument):
        SignedRequest.parse("read", {"signature_expiration": "soon"})
    assert SignedRequest.parse("read", {"signature_expiration": "0120"}).expiration == 120


async def test_finder_routes_by_signing_token_and_caches() -> None:
    calls = 0

    async def candidates() -> list[tuple[str, str | None]]:
        nonlocal calls
        calls += 1
        return [("open", None), ("other", "t-other"), ("mine", TOKEN)]

    finder = SignatureFinder(candidates)
    query = f"path=a.txt&signature={sign('a.txt', 'write', '', TOKEN)}".replace("+", "%2B")
    assert await finder("POST", query.encode()) == "mine"
    assert await finder("POST", query.encode()) == "mine"
    assert calls == 1
    assert await finder("GET", query.encode()) is None  # signed for write, not read
    assert await finder("POST", b"path=a.txt") is None
    assert await finder("DELETE", query.encode()) is None
    finder.forget("mine")
    assert await finder("POST", query.encode()) == "mine"
    assert calls == 3


# --- small pure rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("gzip", "gzip"),
        ("GZIP;q=0.5", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, deflate", None),  # httpx's default: identity is the better choice here
        ("gzip;q=0, identity", None),
        ("*", None),
        ("identity;q=0, *", "gzip"),
        ("br, identity;q=0, gzip;q=0.1", "gzip"),
    ],
)
def test_choose_encoding(header: str | None, expected: str | None) -> None:
    assert choose_encoding(header) == expected


def test_nothing_acceptable_is_406() -> None:
    with pytest.raises(Exception) as info:
        choose_encoding("identity;q=0, br")
    assert getattr(info.value, "status", None) == 406


def test_content_disposition() -> None:
    assert content_disposition("a.txt") == "inline; filename=a.txt"
    assert content_disposition('a "b".txt') == 'inline; filename="a \\"b\\".txt"'
    assert content_disposition("ü.txt") == "inline; filename*=UTF-8''%C3%BC.txt"
    assert content_disposition("\udcff") == "inline; filename*=UTF-8''%FF"


def test_metadata_headers() -> None:
    headers = [(b"X-Metadata-Author", b"me"), (b"x-metadata-author", b"second"), (b"a", b"b")]
    assert from_headers(headers) == {"author": "me"}
    assert from_headers([(b"x-metadata-", b"dropped")]) == {}
    for bad in (
        [(b"x-metadata-k", b"line\nbreak")],
        [(b"x-metadata-bad key", b"v")],
        [(b"x-metadata-" + b"k" * 247, b"v")],
        [(b"x-metadata-k%d" % i, b"v" * 100) for i in range(50)],
    ):
        with pytest.raises(InvalidArgument):
            from_headers(bad)


# --- /files through the envd app -------------------------------------------------------


@dataclass
class RootedSandbox(FakeSandbox):
    """A fake sandbox whose root filesystem is a host directory (uid_base 0, the test's
    own uid as ``user``), enough for /files."""

    root: Path = field(default_factory=Path)
    _fs: RootFS | None = None

    @property
    def uid_base(self) -> int:
        return 0

    @property
    def fs(self) -> RootFS:
        if self._fs is None:
            self._fs = RootFS(str(self.root), uid_base=0)
        return self._fs


@pytest.fixture
async def files_env(tmp_path: Path) -> AsyncIterator[tuple[RootedSandbox, httpx.AsyncClient]]:
    (tmp_path / "home/user").mkdir(parents=True)
    directory = FakeDirectory()
    sbx = directory.add(RootedSandbox("sbx1", home="/home/user", access_token=TOKEN, root=tmp_path))
    app: EnvdApp = build_envd_app(directory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://envd", headers={"e2b-sandbox-id": "sbx1"}
    ) as client:
        yield sbx, client
    app.forget("sbx1")
    await sbx.spawner.aclose()
    sbx.fs.close()


AUTH = {"x-access-token": TOKEN}


async def test_files_gate_accepts_token_or_signature(
    files_env: tuple[RootedSandbox, httpx.AsyncClient],
) -> None:
    sbx, client = files_env
    (sbx.root / "home/user/a.txt").write_bytes(b"hello")
    r = await client.get("/files", params={"path": "a.txt"})
    assert (r.status_code, r.json()) == (
        401,
        {"code": 401, "message": "missing signature query parameter"},
    )
    r = await client.get(
        "/files", params={"path": "a.txt", "signature": sign("a.txt", "read", "", TOKEN)}
    )
    assert (r.status_code, r.content) == (200, b"hello")
    assert r.headers["content-disposition"] == "inline; filename=a.txt"
    exp = int(time.time()) - 1
    r = await client.get(
        "/files",
        params={
            "path": "a.txt",
            "signature": sign("a.txt", "read", "", TOKEN, exp),
            "signature_expiration": str(exp),
        },
    )
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}
    r = await client.get("/files", params={"path": "a.txt"}, headers={"x-access-token": "no"})
    assert r.status_code == 401
    # Other methods on /files and other routes still need the token itself.
    r = await client.delete("/files", params={"signature": sign("a.txt", "read", "", TOKEN)})
    assert r.status_code == 401
    r = await client.get("/envs", params={"signature": sign("a.txt", "read", "", TOKEN)})
    assert r.status_code == 401


async def test_upload_download_roundtrip_rules(
    files_env: tuple[RootedSandbox, httpx.AsyncClient],
) -> None:
    sbx, client = files_env
    home = sbx.root / "home/user"
    files = [("file", ("d1/a.txt", b"A")), ("file", ("/tmp/abs.txt", b"B"))]
    r = await client.post("/files", files=files, headers={**AUTH, "X-Metadata-Tag": "t1"})
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"path": "/home/user/d1/a.txt", "name": "a.txt", "type": "file", "metadata": {"tag": "t1"}},
        {"path": "/tmp/abs.txt", "name": "abs.txt", "type": "file", "metadata": {"tag": "t1"}},
    ]
    assert (home / "d1/a.txt").read_bytes() == b"A"
    assert (sbx.root / "tmp/abs.txt").read_bytes() == b"B"
    assert os.stat(home / "d1/a.txt").st_mode & 0o777 == 0o644
    assert os.getxattr(home / "d1/a.txt", "user.e2b.tag") == b"t1"
    # An overwrite without metadata clears it.
    r = await client.post(
        "/files", params={"path": "d1/a.txt"}, files=[("file", ("x", b"AA"))], headers=AUTH
    )
    assert r.json() == [{"path": "/home/user/d1/a.txt", "name": "a.txt", "type": "file"}]
    assert os.listxattr(home / "d1/a.txt") == []
    # The same destination twice: 400, the first one written.
    r = await client.post(
        "/files", files=[("file", ("dup", b"1")), ("file", ("dup", b"2"))], headers=AUTH
    )
    assert r.status_code == 400 and "same path" in r.json()["message"]
    assert (home / "dup").read_bytes() == b"1"
    # octet-stream, gzip-encoded, then read back gzip'd and plain.
    data = os.urandom(3 << 20)
    r = await client.post(
        "/files",
        params={"path": "raw.bin"},
        content=gzip.compress(data),
        headers={**AUTH, "content-type": "application/octet-stream", "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    r = await client.get(
        "/files", params={"path": "raw.bin"}, headers={**AUTH, "accept-encoding": "gzip"}
    )
    assert r.headers["content-encoding"] == "gzip" and r.content == data
    r = await client.get("/files", params={"path": "raw.bin"}, headers=AUTH)
    assert "content-encoding" not in r.headers and r.content == data
    assert r.headers["content-length"] == str(len(data))


@pytest.mark.parametrize(
    ("method", "params", "kwargs", "status"),
    [
        ("GET", {"path": "missing"}, {}, 404),
        ("GET", {"path": ""}, {}, 400),  # the workdir: a directory
        ("GET", {"path": "a\x00b"}, {}, 400),
        ("GET", {"path": "a", "username": "nobody"}, {}, 401),
        ("GET", {"path": "x" * 5000}, {}, 400),
        (
            "POST",
            {},
            {"content": b"x", "headers": {"content-type": "application/octet-stream"}},
            400,
        ),
        ("POST", {"path": "a"}, {"content": b"x", "headers": {"content-type": "text/plain"}}, 400),
        (
            "POST",
            {"path": "a"},
            {
                "content": b"nope",
                "headers": {"content-type": "application/octet-stream", "content-encoding": "gzip"},
            },
            400,
        ),
        (
            "POST",
            {"path": "a"},
            {
                "content": b"x",
                "headers": {"content-type": "application/octet-stream", "content-encoding": "br"},
            },
            400,
        ),
        (
            "POST",
            {},
            {
                "content": b"--b\r\nContent-Disposition: form-data; "
                b'name="file"; filename="t"\r\n\r\nxx',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
        ),
        (
            "POST",
            {"path": "/home"},
            {"content": b"x", "headers": {"content-type": "application/octet-stream"}},
            400,
        ),
    ],
)
async def test_bad_requests_get_json_errors(
    files_env: tuple[RootedSandbox, httpx.AsyncClient],
    method: str,
    params: dict[str, str],
    kwargs: dict[str, object],
    status: int,
) -> None:
    _, client = files_env
    headers = {**AUTH, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    r = await client.request(method, "/files", params=params, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status and isinstance(body["message"], str)


async def test_fifo_and_devices_are_refused_not_opened(
    files_env: tuple[RootedSandbox, httpx.AsyncClient],
) -> None:
    sbx, client = files_env
    os.mkfifo(sbx.root / "home/user/fifo")
    for method, kwargs in (
        ("GET", {}),
        (
            "POST",
            {"content": b"x", "headers": {**AUTH, "content-type": "application/octet-stream"}},
        ),
    ):
        kwargs.setdefault("headers", AUTH)
        r = await client.request(method, "/files", params={"path": "fifo"}, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 400, r.text


# --- header-less routing in the proxy --------------------------------------------------


async def test_proxy_routes_signed_files_requests_without_headers() -> None:
    seen: list[dict[str, str]] = []

    async def upstream_app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def locate(sandbox_id: str) -> Upstream | None:
        return Upstream(node_id="n", app=upstream_app) if sandbox_id == "sbxa" else None

    async def candidates() -> list[tuple[str, str | None]]:
        return [("sbxa", TOKEN)]

    proxy = Proxy(locate, find_by_signature=SignatureFinder(candidates))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p"
    ) as c:
        sig = sign("a.txt", "read", "user", TOKEN)
        r = await c.get("/files", params={"path": "a.txt", "username": "user", "signature": sig})
        assert r.status_code == 204
        assert seen[-1]["e2b-sandbox-id"] == "sbxa" and seen[-1]["e2b-sandbox-port"] == "49983"
        r = await c.get("/files", params={"path": "a.txt", "signature": sig})  # other user
        assert (r.status_code, r.json()) == (401, {"code": 401, "message": "invalid signature"})
        r = await c.post("/files", params={"path": "a.txt"})
        assert r.json() == {"code": 401, "message": "missing signature query parameter"}
        r = await c.get("/envs", params={"signature": sig})
        assert r.status_code == 400  # only /files is routed by signature
    await proxy.aclose()
