"""Sandbox traffic arriving at a node agent: envd (port 49983) or any port inside.

The proxy has already resolved the sandbox to this node and passes the request on with
``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port``. Every request runs as a task raced against
the sandbox's ``gone`` event: when the sandbox dies mid-response the task is cancelled
and :class:`SandboxDied` escapes to the ASGI server, which then aborts the connection
(no terminating chunk), exactly what the SDKs need to report "the sandbox was killed".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.agent.manager import SandboxManager
from shoal.agent.sandbox import LocalSandbox
from shoal.agent.tunnel import SandboxTransport
from shoal.proxy.forward import UpstreamUnavailable, forward, make_client
from shoal.proxy.responses import port_not_open, sandbox_not_found, send_json
from shoal.proxy.routing import ENVD_PORT, route_of
from shoal.wire.node.models import NODE_TOKEN_HEADER

PRIVATE_HEADERS = frozenset({NODE_TOKEN_HEADER.lower().encode()})


class SandboxDied(Exception):
    """Raised out of the ASGI app to abort a response whose sandbox went away."""


class DataPlane:
    def __init__(self, manager: SandboxManager, envd_app: ASGIApp) -> None:
        self.manager = manager
        self.envd_app = envd_app
        self._clients: dict[str, httpx.AsyncClient] = {}
        manager.on_gone(self._forget)

    def _forget(self, sandbox_id: str) -> None:
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            asyncio.get_running_loop().create_task(client.aclose())

    def _client_for(self, sbx: LocalSandbox) -> httpx.AsyncClient:
        client = self._clients.get(sbx.sandbox_id)
        if client is None:
            client = make_client(SandboxTransport(sbx.netns_path))
            self._clients[sbx.sandbox_id] = client
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        if route is None:
            await send_json(send, 400, {"code": 400, "message": "missing E2b-Sandbox-Id header"})
            return
        sandbox_id, port = route
        sbx = self.manager.get(sandbox_id)
        if sbx is None:
            await sandbox_not_found(send, sandbox_id)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if port == ENVD_PORT:
            work = self._to_envd(scope, receive, tracked_send)
        else:
            work = self._to_port(sbx, port, scope, receive, tracked_send)
        if await self._race(sbx, work):
            return
        if not started:
            await sandbox_not_found(send, sandbox_id)
            return
        raise SandboxDied(sandbox_id)

    async def _to_envd(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.envd_app(scope, receive, send)

    async def _to_port(
        self, sbx: LocalSandbox, port: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            await forward(
                scope,
                receive,
                send,
                self._client_for(sbx),
                f"http://127.0.0.1:{port}",
                # The node token authenticates the proxy to this agent; it must never
                # reach code inside a sandbox.
                drop_headers=PRIVATE_HEADERS,
            )
        except UpstreamUnavailable:
            await port_not_open(send, sbx.sandbox_id, port)

    @staticmethod
    async def _race(sbx: LocalSandbox, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` until done (True) or until the sandbox is gone (False)."""
        if sbx.gone.is_set():
            work.close()
            return False
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(sbx.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if task.done() and not sbx.gone.is_set():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False
