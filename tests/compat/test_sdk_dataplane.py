"""The data plane (``E2B_SANDBOX_URL``): routing, envd's gate, ports, streaming, death.

What the SDK relies on (e2b-compat §3, §4.4): 502 ``"was not found"`` for gone sandboxes,
envd ``/health`` 204 without a token and everything else behind ``X-Access-Token``,
other ports reachable by ``E2b-Sandbox-Port``, streams that are neither buffered nor
ended cleanly when the sandbox dies.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from compat_helpers import wait_for
from e2b import Sandbox, SandboxException, SandboxNotRunningException
from support.server import ShoalServer

ENVD_PORT = 49983
UNAUTHORIZED = {
    "code": 401,
    "message": "unauthorized access, please provide a valid access token or method signing "
    "if supported",
}


def raw(server: ShoalServer) -> httpx.Client:
    return httpx.Client(base_url=server.sandbox_url, trust_env=False, timeout=30)


def routed(sbx: Sandbox, port: int = ENVD_PORT, token: bool = True) -> dict[str, str]:
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
    if token:
        headers["X-Access-Token"] = sbx._envd_access_token or ""
    return headers


def not_found_body(sandbox_id: str) -> dict[str, object]:
    return {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}


def test_unknown_sandbox_is_502_not_found(shoal_server: ShoalServer) -> None:
    with raw(shoal_server) as client:
        for sandbox_id in ("abcdefghij0123456789", "nosuchsandbox"):
            for port in (ENVD_PORT, 8000):
                r = client.get(
                    "/health", headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}
                )
                assert r.status_code == 502
                assert r.headers["content-type"].startswith("application/json")
                assert r.json() == not_found_body(sandbox_id)


def test_killed_sandbox_is_not_running(sandbox_factory, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    assert sbx.is_running() is True
    headers = routed(sbx)
    sbx.kill()
    assert sbx.is_running() is False
    with raw(shoal_server) as client:
        r = client.get("/health", headers=headers)
        assert r.status_code == 502
        assert r.json() == not_found_body(sbx.sandbox_id)
        r = client.post(
            "/process.Process/List",
            json={},
            headers={**headers, "Connect-Protocol-Version": "1"},
        )
        assert r.status_code == 502
        assert r.json() == not_found_body(sbx.sandbox_id)
    with pytest.raises(SandboxNotRunningException, match="was not found"):
        sbx.commands.run("true")


def test_envd_health_and_access_token(shared_sandbox, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    sbx = shared_sandbox
    with raw(shoal_server) as client:
        r = client.get("/health", headers=routed(sbx, token=False))
        assert r.status_code == 204
        assert r.content == b""

        list_call = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
        for token in (None, "wrong-token", ""):
            headers = {**routed(sbx, token=False), **list_call}
            if token is not None:
                headers["X-Access-Token"] = token
            r = client.post("/process.Process/List", content=b"{}", headers=headers)
            assert r.status_code == 401, token
            assert r.json() == UNAUTHORIZED
            r = client.get("/envs", headers=headers)
            assert r.status_code == 401
            assert r.json() == UNAUTHORIZED

        r = client.post(
            "/process.Process/List", content=b"{}", headers={**routed(sbx), **list_call}
        )
        assert r.status_code == 200
        assert "processes" in r.json() or r.json() == {}

        r = client.get("/envs", headers=routed(sbx))
        assert r.status_code == 200
        envs = r.json()
        assert envs["E2B_SANDBOX"] == "true"
        assert envs["E2B_SANDBOX_ID"] == sbx.sandbox_id


def test_a_port_inside_the_sandbox(sandbox, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    sandbox.commands.run("mkdir -p /home/user/site && echo hello-port > /home/user/site/marker.txt")
    with raw(shoal_server) as client:
        # Nothing listens yet: the proxy says so in the SDK's words.
        r = client.get("/", headers=routed(sandbox, 8000, token=False))
        assert r.status_code == 502
        body = r.json()
        assert "port is not open" in body["message"]
        assert body["sandboxId"] == sandbox.sandbox_id
        assert body["code"] == 502

        server = sandbox.commands.run(
            "python3 -m http.server 8000 --bind 127.0.0.1", background=True, cwd="/home/user/site"
        )

        def listing() -> httpx.Response | None:
            resp = client.get("/", headers=routed(sandbox, 8000, token=False))
            return resp if resp.status_code == 200 else None

        r = wait_for(listing, within=20, what="http.server in the sandbox")
        assert "marker.txt" in r.text
        r = client.get("/marker.txt", headers=routed(sandbox, 8000, token=False))
        assert r.status_code == 200
        assert r.text == "hello-port\n"
        r = client.get("/missing", headers=routed(sandbox, 8000, token=False))
        assert r.status_code == 404

        # The Host form <port>-<id>.<domain> routes the same way.
        r = client.get("/marker.txt", headers={"Host": f"8000-{sandbox.sandbox_id}.shoal.local"})
        assert r.status_code == 200
        assert r.text == "hello-port\n"

        # A closed port next to an open one is still "not open".
        r = client.get("/", headers=routed(sandbox, 8001, token=False))
        assert r.status_code == 502
        assert "port is not open" in r.json()["message"]
    assert server.kill() is True


def test_output_streams_before_the_command_ends(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    """The command only finishes after the test has seen its first line: a proxy or envd
    that buffered output until exit would deadlock here (and hit the command timeout)."""
    sbx = shared_sandbox
    flag = "/tmp/stream-go"
    sbx.commands.run(f"rm -f {flag}")
    seen: list[str] = []

    def on_stdout(chunk: str) -> None:
        seen.append(chunk)
        if "first" in chunk:
            sbx.commands.run(f"touch {flag}")

    result = sbx.commands.run(
        f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo second",
        on_stdout=on_stdout,
        timeout=20,
    )
    assert result.stdout == "first\nsecond\n"
    assert seen[0] == "first\n"


def test_lines_arrive_as_separate_chunks(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    import time

    stamps: list[tuple[float, str]] = []
    result = shared_sandbox.commands.run(
        "for i in 1 2 3 4; do echo line$i; sleep 0.5; done",
        on_stdout=lambda s: stamps.append((time.monotonic(), s)),
    )
    returned = time.monotonic()
    assert result.stdout == "line1\nline2\nline3\nline4\n"
    assert [s for _, s in stamps] == ["line1\n", "line2\n", "line3\n", "line4\n"]
    assert [t for t, _ in stamps] == sorted(t for t, _ in stamps)
    assert stamps[0][0] < stamps[-1][0] <= returned


def test_kill_while_a_command_streams_raises(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = sbx.commands.run("echo started; sleep 60", timeout=90)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_for(
        lambda: any("sleep 60" in " ".join(p.args) for p in sbx.commands.list()),
        what="sleep to be running",
    )
    assert Sandbox.kill(sbx.sandbox_id) is True
    worker.join(30)
    assert not worker.is_alive(), "the command kept streaming after its sandbox was killed"
    assert "result" not in outcome
    err = outcome["error"]
    assert isinstance(err, SandboxException), repr(err)
    assert isinstance(err, SandboxNotRunningException), repr(err)
    assert "killed" in str(err)


def test_background_handle_of_a_killed_sandbox_raises(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    handle = sbx.commands.run("sleep 60", background=True, timeout=90)
    sbx.kill()
    with pytest.raises(SandboxNotRunningException, match="killed"):
        handle.wait()


ECHO_SERVER = r"""
import hashlib, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        out = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
        self.send_response(201)
        self.send_header("X-Echo", self.headers.get("X-Custom", ""))
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


def test_request_bodies_and_headers_reach_a_sandbox_port(  # type: ignore[no-untyped-def]
    sandbox, shoal_server: ShoalServer
) -> None:
    import hashlib
    import os

    sandbox.commands.run(f"cat > /tmp/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF")
    sandbox.commands.run("python3 /tmp/echo.py", background=True, timeout=0)
    payload = os.urandom(8 * 1024 * 1024)
    headers = {**routed(sandbox, 8080, token=False), "X-Custom": "passed-through"}
    with raw(shoal_server) as client:

        def post() -> httpx.Response | None:
            resp = client.post("/upload", content=payload, headers=headers)
            return resp if resp.status_code == 201 else None

        r = wait_for(post, within=20, what="echo server in the sandbox")
    assert r.text == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert r.headers["x-echo"] == "passed-through"


def test_streams_of_a_dying_sandbox_are_aborted(sandbox_factory, shoal_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    """No end-stream frame and no terminating chunk: the connection just breaks."""
    import struct

    sbx = sandbox_factory()
    body = b'{"process":{"cmd":"/bin/bash","args":["-c","echo up; sleep 60"]}}'
    headers = {
        **routed(sbx),
        "Content-Type": "application/connect+json",
        "Connect-Protocol-Version": "1",
    }
    received = bytearray()
    with (
        raw(shoal_server) as client,
        client.stream(
            "POST",
            "/process.Process/Start",
            content=struct.pack(">BI", 0, len(body)) + body,
            headers=headers,
        ) as r,
    ):
        assert r.status_code == 200
        chunks = r.iter_raw()
        while b"dXAK" not in received:  # base64 of "up\n"
            received.extend(next(chunks))
        assert Sandbox.kill(sbx.sandbox_id) is True
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in chunks:
                received.extend(chunk)
    flags = []
    while len(received) >= 5:
        size = struct.unpack(">I", received[1:5])[0]
        flags.append(received[0])
        del received[: 5 + size]
    assert flags and 2 not in flags, "the stream must not end cleanly (no end-stream frame)"
