"""Harness for envd integration tests: a real uvicorn serving the envd app on 127.0.0.1
(ephemeral port), in its own thread.

Streaming, disconnects and aborts need real HTTP framing, and the official SDK's sync
client blocks, so the server runs on a loop of its own; ``EnvdServer.run`` executes a
coroutine there (the fake spawner and the process tables live on that loop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fakes.envd_sandbox import FakeDirectory, FakeSandbox

from shoal.envd.app import EnvdApp, build_envd_app

T = TypeVar("T")
_ids = itertools.count()


class EnvdServer:
    def __init__(self) -> None:
        self.directory = FakeDirectory()
        self.app: EnvdApp = build_envd_app(self.directory)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, name="envd-server", daemon=True)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(
            lambda _loop, ctx: self.errors.append(
                ctx.get("exception") or RuntimeError(ctx["message"])
            )
        )
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("envd test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add_sandbox(self, home: Path, sandbox_id: str | None = None, **kwargs: Any) -> FakeSandbox:
        sbx = FakeSandbox(sandbox_id or f"sbx{next(_ids)}", home=str(home), **kwargs)
        return self.directory.add(sbx)

    def remove_sandbox(self, sbx: FakeSandbox) -> None:
        self.directory.sandboxes.pop(sbx.sandbox_id, None)

        async def cleanup() -> None:
            self.app.forget(sbx.sandbox_id)
            await sbx.spawner.aclose()

        self.run(cleanup())


# -- Connect wire helpers ----------------------------------------------------------------


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


class EnvelopeReader:
    """Splits a Connect streaming body into ``(flags, json)`` frames as bytes arrive."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, dict[str, Any]]]:
        self._buf += chunk
        frames = []
        while len(self._buf) >= 5:
            flags, size = struct.unpack(">BI", self._buf[:5])
            if len(self._buf) < 5 + size:
                break
            frames.append((flags, json.loads(self._buf[5 : 5 + size])))
            self._buf = self._buf[5 + size :]
        return frames


def stream_headers(sandbox: FakeSandbox, **extra: str) -> dict[str, str]:
    headers = {
        "content-type": "application/connect+json",
        "connect-protocol-version": "1",
        "e2b-sandbox-id": sandbox.sandbox_id,
        "e2b-sandbox-port": "49983",
    }
    if sandbox.access_token:
        headers["x-access-token"] = sandbox.access_token
    headers.update(extra)
    return headers


def unary_headers(sandbox: FakeSandbox, **extra: str) -> dict[str, str]:
    headers = stream_headers(sandbox, **extra)
    headers["content-type"] = "application/json"
    return headers


def run_stream(
    http: httpx.Client, sandbox: FakeSandbox, method: str, body: dict[str, Any], **headers: str
) -> list[tuple[int, dict[str, Any]]]:
    """Every frame of one streaming call, to the end."""
    reader = EnvelopeReader()
    frames: list[tuple[int, dict[str, Any]]] = []
    with http.stream(
        "POST",
        f"/process.Process/{method}",
        content=envelope(body),
        headers=stream_headers(sandbox, **headers),
    ) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            frames += reader.feed(chunk)
    return frames


def unary(
    http: httpx.Client, sandbox: FakeSandbox, method: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return http.post(
        f"/process.Process/{method}", json=body, headers=unary_headers(sandbox, **headers)
    )
