"""Bad input, on both planes: each gets E2B's error shape, and the server stays up.

Through the SDK where a user can send it, as raw HTTP where only a broken or hostile
client could.
"""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from compat_helpers import unique
from e2b import InvalidArgumentException, Sandbox, SandboxException, SandboxQuery
from support.server import ShoalServer

ENVD_PORT = 49983


def assert_error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body  # type: ignore[no-any-return]


def still_serving(sbx: Sandbox | None = None) -> None:
    if sbx is None:
        sbx = Sandbox.create(timeout=30)
        try:
            assert sbx.commands.run("echo ok").stdout == "ok\n"
        finally:
            sbx.kill()
    else:
        assert sbx.commands.run("echo ok").stdout == "ok\n"


# control plane


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
        (b"[]", "not an object"),
        (b'{"templateID": ""}', "empty template"),
        (b'{"templateID": 42}', "template not a string"),
        (b'{"templateID": "base", "timeout": "soon"}', "timeout not a number"),
        (b'{"templateID": "base", "timeout": -1}', "negative timeout"),
        (b'{"templateID": "base", "timeout": 10000000000}', "huge timeout"),
        (b'{"templateID": "base", "metadata": {"a": 1}}', "metadata value not a string"),
        (b'{"templateID": "base", "metadata": ["a"]}', "metadata not an object"),
        (b'{"templateID": "base", "envVars": {"A=B": "c"}}', "env name with ="),
        (b'{"templateID": "base", "envVars": {"A": "nul\\u0000"}}', "env value with NUL"),
        (b'{"templateID": "base\\u0000"}', "NUL in template"),
        (b'{"templateID": "\xff\xfe"}', "invalid UTF-8"),
    ],
)
def test_create_rejects_bad_bodies(shoal_server: ShoalServer, body: bytes, why: str) -> None:
    with shoal_server.api() as api:
        before = len(api.get("/v2/sandboxes").json())
        r = api.post("/v2/sandboxes", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 404), why
        assert_error(r, r.status_code)
        r = api.post("/sandboxes", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 404), why
        assert_error(r, r.status_code)
        assert len(api.get("/v2/sandboxes").json()) == before, "a bad create left a sandbox"


def test_sdk_bad_timeouts_are_errors(sandbox) -> None:  # type: ignore[no-untyped-def]
    for timeout in (-1, 10**9):
        with pytest.raises(SandboxException) as exc_info:
            Sandbox.create(timeout=timeout)
        assert exc_info.value.status_code == 400
        with pytest.raises(SandboxException) as exc_info:
            sandbox.set_timeout(timeout)
        assert exc_info.value.status_code == 400
    # The failed calls did not touch the sandbox's own timeout.
    assert sandbox.is_running()


def test_oversized_metadata_and_envs(shoal_server: ShoalServer) -> None:
    big = {f"k{i}": "v" * 1000 for i in range(200)}
    with pytest.raises(SandboxException) as exc_info:
        Sandbox.create(metadata=big)
    assert exc_info.value.status_code == 400
    with pytest.raises(SandboxException) as exc_info:
        Sandbox.create(envs=big)
    assert exc_info.value.status_code == 400
    with shoal_server.api() as api:
        huge = json.dumps({"templateID": "base", "metadata": {"x": "y" * 5_000_000}})
        r = api.post("/v2/sandboxes", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 413)
        assert_error(r, r.status_code)
    still_serving()


def test_odd_sandbox_ids(shoal_server: ShoalServer) -> None:
    odd = ["x" * 5000, "..", "%2e%2e", "a%2Fb", "ü", "-", "0" * 20, "DROP TABLE sandboxes"]
    with shoal_server.api() as api:
        for sandbox_id in odd:
            for method, path, body in [
                ("GET", f"/sandboxes/{sandbox_id}", None),
                ("DELETE", f"/sandboxes/{sandbox_id}", None),
                ("POST", f"/sandboxes/{sandbox_id}/timeout", {"timeout": 5}),
                ("POST", f"/v2/sandboxes/{sandbox_id}/connect", {"timeout": 5}),
                ("POST", f"/sandboxes/{sandbox_id}/connect", {"timeout": 5}),
            ]:
                r = api.request(method, path, json=body)
                assert r.status_code in (400, 404, 405), (method, path, r.status_code, r.text)
                if r.status_code != 405:
                    assert_error(r, r.status_code)
    still_serving()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-3"},
        {"limit": "1000"},
        {"limit": "many"},
        {"state": "exploded"},
        {"order": "sideways"},
        {"startedAfter": "yesterday"},
        {"nextToken": "not-a-token"},
        {"metadata": "novalue"},
    ],
)
def test_list_rejects_bad_filters(shoal_server: ShoalServer, params: dict[str, str]) -> None:
    with shoal_server.api() as api:
        assert_error(api.get("/v2/sandboxes", params=params), 400)


def test_list_with_metadata_that_matches_nothing(shoal_server: ShoalServer) -> None:
    paginator = Sandbox.list(query=SandboxQuery(metadata={unique("k"): "&=%?#/ ü"}))
    assert paginator.next_items() == []
    assert not paginator.has_next


# data plane and envd


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def envelopes(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        out.append((flags, data[5 : 5 + size]))
        data = data[5 + size :]
    return out


def start_stream(
    client: httpx.Client, sbx: Sandbox, body: bytes, **headers: str
) -> tuple[httpx.Response, list[dict[str, object]], dict[str, object]]:
    """POST a Start envelope: the response, its data messages and its end-stream message."""
    r = client.post(
        "/process.Process/Start",
        content=envelope(body),
        headers={
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "E2b-Sandbox-Port": str(ENVD_PORT),
            "X-Access-Token": sbx._envd_access_token or "",
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": "10000",
            **headers,
        },
    )
    if r.status_code != 200:
        return r, [], {}
    assert r.headers["content-type"].startswith("application/connect+json")
    frames = envelopes(r.content)
    assert [f for f, _ in frames[:-1]] == [0] * (len(frames) - 1)
    flags, last = frames[-1]
    assert flags == 2, "a stream must end with an end-stream envelope"
    return r, [json.loads(p) for _, p in frames[:-1]], json.loads(last)


def start_raw(client: httpx.Client, sbx: Sandbox, body: bytes) -> tuple[int, str | None]:
    """POST a Start envelope; the Connect error code it ends with (None = no error)."""
    r, _, end = start_stream(client, sbx, body)
    if r.status_code != 200:
        return r.status_code, r.json().get("code")
    error = end.get("error")
    return r.status_code, error["code"] if isinstance(error, dict) else None


def test_start_stream_shape(shared_sandbox, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    """start first, output, keepalives while quiet, exactly one end, then end-stream."""
    body = b'{"process":{"cmd":"/bin/bash","args":["-c","echo hi; sleep 2.5; exit 3"]}}'
    with httpx.Client(base_url=shoal_server.sandbox_url, trust_env=False, timeout=30) as client:
        r, messages, end = start_stream(
            client, shared_sandbox, body, **{"Keepalive-Ping-Interval": "1"}
        )
    assert r.status_code == 200 and end == {}
    events = [m["event"] for m in messages]
    kinds = [next(iter(e)) for e in events]  # type: ignore[call-overload]
    assert kinds[0] == "start"
    assert int(events[0]["start"]["pid"]) > 0  # type: ignore[index]
    assert kinds.count("end") == 1 and kinds[-1] == "end"
    assert "keepalive" in kinds, "a quiet stream gets keepalives at the requested interval"
    data = [e["data"] for e in events if "data" in e]  # type: ignore[operator]
    assert data == [{"stdout": "aGkK"}]  # base64 of "hi\n"
    end_event = events[-1]["end"]  # type: ignore[index]
    assert end_event["exitCode"] == 3
    assert end_event["exited"] is True
    assert end_event["status"] == "exit status 3"
    assert end_event["error"] == "exit status 3"


def test_bad_process_configs_are_invalid_argument(
    shared_sandbox, shoal_server: ShoalServer
) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "lone surrogate in an arg": b'{"process":{"cmd":"/bin/bash","args":["-c","echo \\udcff"]}}',
        "invalid UTF-8 bytes": b'{"process":{"cmd":"/bin/bash","args":["-c","echo \xff\xfe"]}}',
        "NUL in an arg": b'{"process":{"cmd":"/bin/bash","args":["-c","echo a\\u0000b"]}}',
        "surrogate in an env": b'{"process":{"cmd":"/bin/true","envs":{"A":"\\ud800"}}}',
        "not JSON": b"{process",
        "wrong type": b'{"process":{"cmd":5}}',
        "no such binary": b'{"process":{"cmd":"/no/such/binary"}}',
        "missing cwd": b'{"process":{"cmd":"/bin/true","cwd":"/no/such/dir"}}',
    }
    with httpx.Client(base_url=shoal_server.sandbox_url, trust_env=False, timeout=30) as client:
        for why, body in cases.items():
            status, code = start_raw(client, shared_sandbox, body)
            assert code == "invalid_argument", (why, status, code)
            assert status in (200, 400), why
        # A well-formed request on the same path still works.
        ok = b'{"process":{"cmd":"/bin/echo","args":["fine"]},"stdin":false}'
        assert start_raw(client, shared_sandbox, ok) == (200, None)
    still_serving(shared_sandbox)


def test_bad_unary_rpcs(shared_sandbox, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    headers = {
        "E2b-Sandbox-Id": shared_sandbox.sandbox_id,
        "E2b-Sandbox-Port": str(ENVD_PORT),
        "X-Access-Token": shared_sandbox._envd_access_token or "",
        "Content-Type": "application/json",
        "Connect-Protocol-Version": "1",
    }
    with httpx.Client(base_url=shoal_server.sandbox_url, trust_env=False, timeout=30) as client:
        r = client.post("/process.Process/SendSignal", content=b"{oops", headers=headers)
        assert r.status_code == 400
        assert r.json()["code"] == "invalid_argument"

        r = client.post(
            "/process.Process/SendSignal",
            content=b'{"process":{"pid":999999},"signal":"SIGNAL_SIGKILL"}',
            headers=headers,
        )
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"

        r = client.post("/process.Process/NoSuchMethod", content=b"{}", headers=headers)
        assert r.status_code in (404, 501)

        r = client.get("/")  # no routing headers at all
        assert r.status_code == 400
        assert r.json()["code"] == 400
    still_serving(shared_sandbox)


def test_sdk_invalid_input_errors(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.commands.run("true", cwd="/no/such/dir")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.commands.run("true", envs={"BAD": "nul\x00"})
    still_serving(shared_sandbox)
