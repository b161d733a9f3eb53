"""The envd gate and unary RPCs through httpx's ASGI transport (no sockets)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fakes.envd_sandbox import FakeDirectory, FakeSandbox

from shoal.envd.app import EnvdApp, build_envd_app

UNAUTHORIZED = {
    "code": 401,
    "message": "unauthorized access, please provide a valid access token"
    " or method signing if supported",
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[EnvdApp, FakeSandbox, httpx.AsyncClient]]:
    directory = FakeDirectory()
    sbx = directory.add(
        FakeSandbox(
            "sbx1", home=str(tmp_path), access_token="tok", env_vars={"E2B_SANDBOX": "true"}
        )
    )
    app = build_envd_app(directory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://envd") as client:
        yield app, sbx, client
    app.forget("sbx1")
    await sbx.spawner.aclose()


def headers(**extra: str) -> dict[str, str]:
    return {"e2b-sandbox-id": "sbx1", "e2b-sandbox-port": "49983", "x-access-token": "tok", **extra}


def rpc(client: httpx.AsyncClient, method: str, body: object, **extra: str) -> object:
    return client.post(f"/process.Process/{method}", json=body, headers=headers(**extra))


def frames(body: bytes) -> list[tuple[int, dict[str, object]]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + size])))
        body = body[5 + size :]
    return out


async def test_health_is_204_without_token(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, _, client = env
    response = await client.get("/health", headers={"e2b-sandbox-id": "sbx1"})
    assert response.status_code == 204
    assert response.content == b""


async def test_unknown_sandbox_is_502_was_not_found(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, _, client = env
    for path in ("/health", "/envs", "/process.Process/List"):
        response = await client.request(
            "GET" if path != "/process.Process/List" else "POST",
            path,
            headers={"e2b-sandbox-id": "nope", "content-type": "application/json"},
        )
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "sandboxId": "nope",
            "message": "The sandbox was not found",
            "code": 502,
        }


async def test_token_is_required_everywhere_but_health(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, _, client = env
    for token in (None, "wrong"):
        hdrs = headers()
        hdrs.pop("x-access-token")
        if token:
            hdrs["x-access-token"] = token
        envs = await client.get("/envs", headers=hdrs)
        assert (envs.status_code, envs.json()) == (401, UNAUTHORIZED)
        listing = await client.post("/process.Process/List", json={}, headers=hdrs)
        assert (listing.status_code, listing.json()) == (401, UNAUTHORIZED)


async def test_envs_returns_sandbox_variables(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, _, client = env
    response = await client.get("/envs", headers=headers())
    assert response.status_code == 200
    assert response.json() == {"E2B_SANDBOX": "true"}


async def test_unary_rpcs_and_their_errors(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, _, client = env
    listing = await rpc(client, "List", {"someFutureField": 1})  # type: ignore[misc]
    assert listing.status_code == 200
    assert listing.headers["content-type"] == "application/json"
    assert listing.json() == {}

    missing = await rpc(
        client, "SendSignal", {"process": {"pid": 424242}, "signal": "SIGNAL_SIGKILL"}
    )  # type: ignore[misc]
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"

    for method in ("SendInput", "CloseStdin", "Update"):
        response = await rpc(client, method, {"process": {"tag": "nothing"}})  # type: ignore[misc]
        assert response.status_code == 404, method
        assert response.json() == {
            "code": "not_found",
            "message": "process with tag nothing not found",
        }

    bad = await client.post(
        "/process.Process/List",
        content=b"{not json",
        headers=headers(**{"content-type": "application/json"}),
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_argument"


async def test_start_through_the_gate_runs_as_the_sandbox_user(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    _, sbx, client = env
    body = json.dumps(
        {"process": {"cmd": "/bin/bash", "args": ["-c", "echo $E2B_SANDBOX $HOME"]}, "stdin": False}
    ).encode()
    response = await client.post(
        "/process.Process/Start",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers=headers(**{"content-type": "application/connect+json"}),
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    got = frames(response.content)
    assert "start" in got[0][1]["event"]  # type: ignore[operator]
    out = b"".join(
        base64.b64decode(f["event"]["data"]["stdout"])  # type: ignore[index]
        for _, f in got
        if "data" in f.get("event", {})  # type: ignore[operator]
    )
    assert out == f"true {sbx.home}\n".encode()
    assert got[-1] == (2, {})
    request = sbx.spawner.requests[-1]
    assert (request.uid, request.gid, request.stdin, request.pty) == (
        sbx.users["user"].uid,
        sbx.users["user"].gid,
        False,
        None,
    )
    assert request.cwd == sbx.home


async def test_a_cancelled_stream_is_aborted_not_ended_cleanly(
    env: tuple[EnvdApp, FakeSandbox, httpx.AsyncClient],
) -> None:
    """The agent cancels a request whose sandbox died: no clean end-stream may go out."""
    app, sbx, _ = env
    body = json.dumps({"process": {"cmd": "sleep", "args": ["30"]}, "stdin": False}).encode()
    request_parts = [
        {
            "type": "http.request",
            "body": struct.pack(">BI", 0, len(body)) + body,
            "more_body": False,
        }
    ]
    never = asyncio.Event()

    async def receive() -> dict[str, object]:
        if request_parts:
            return request_parts.pop()
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []
    first_frame = asyncio.Event()

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_frame.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/process.Process/Start",
        "raw_path": b"/process.Process/Start",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (k.encode(), v.encode())
            for k, v in headers(**{"content-type": "application/connect+json"}).items()
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 49983),
    }
    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
    await asyncio.wait_for(first_frame.wait(), 5)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    bodies = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert [flags for flags, _ in frames(bodies)] == [0]  # the start event, nothing after
    assert not any(m.get("more_body") is False for m in sent)
    assert sbx.spawner.handles  # the process was started and is cleaned up by the fixture
