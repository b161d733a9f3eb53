"""The proxy's ASGI app: find the sandbox's node, hand the request to it.

A node agent in the same process is called directly as an ASGI app (no socket, no copy);
a remote one through :func:`shoal.proxy.forward.forward`. Either way the response
streams, and an upstream that breaks mid-response aborts the client's connection.

**Pauses.** While the control plane pauses a sandbox (``leaving``), no new request is
routed to it: it shows as paused already, and a request that reached it mid-checkpoint
would be cut off.

**Auto-resume.** A request for a sandbox that is not running goes to ``resume`` (the
control plane's :meth:`shoal.api.lifecycle.Lifecycle.auto_resume`) before the 502: a
paused sandbox created with ``autoResume`` is resumed while the request waits (its body
not yet read; a pause under way is waited for first), then the request is forwarded as if
nothing happened. Concurrent requests for the same sandbox share one attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from shoal.proxy.forward import UpstreamUnavailable, forward, make_client
from shoal.proxy.responses import sandbox_not_found, send_json
from shoal.proxy.routing import ENVD_PORT, route_of


@dataclass(frozen=True)
class Upstream:
    node_id: str
    app: ASGIApp | None = None
    """The node agent's ASGI app when it runs in this process."""
    url: str | None = None
    """The node agent's base URL otherwise."""


Locator = Callable[[str], Awaitable[Upstream | None]]

Resumer = Callable[[str], Awaitable[bool]]
"""``sandbox_id -> running now?``: resume a paused sandbox that asked for it on traffic."""

SignatureLocator = Callable[[str, bytes], Awaitable[str | None]]
"""``(method, query_string) -> sandbox_id``: the sandbox whose envd access token signed a
header-less ``/files`` URL (see :class:`shoal.envd.files.signature.SignatureFinder`)."""

SIGNED_METHODS = frozenset({"GET", "POST"})

CACHE_TTL = 5.0


class Proxy:
    def __init__(
        self,
        locate: Locator,
        *,
        node_token: str | None = None,
        find_by_signature: SignatureLocator | None = None,
        resume: Resumer | None = None,
        leaving: Callable[[str], bool] | None = None,
    ) -> None:
        self._locate = locate
        self._find_by_signature = find_by_signature
        self._resume = resume
        self._leaving = leaving or (lambda _sandbox_id: False)
        self._waking: dict[str, asyncio.Task[bool]] = {}
        self._cache: dict[str, tuple[float, Upstream]] = {}
        self._client = make_client()
        self._extra = [(b"x-shoal-node-token", node_token.encode())] if node_token else []

    def forget(self, sandbox_id: str) -> None:
        self._cache.pop(sandbox_id, None)

    async def _upstream(self, sandbox_id: str) -> Upstream | None:
        hit = self._cache.get(sandbox_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        up = await self._locate(sandbox_id)
        if up is not None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[sandbox_id] = (now + CACHE_TTL, up)
        return up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _noop_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        route = route_of(scope)
        if route is None and scope["path"] == "/files" and scope["method"] in SIGNED_METHODS:
            routed = await self._route_signed(scope, send)
            if routed is None:
                return
            scope = routed
            route = route_of(scope)
        if route is None:
            if scope["path"] == "/health":
                await send_json(send, 200, {"status": "ok"})
                return
            await send_json(
                send,
                400,
                {"code": 400, "message": "missing E2b-Sandbox-Id / E2b-Sandbox-Port headers"},
            )
            return
        sandbox_id, _port = route
        up = None if self._leaving(sandbox_id) else await self._upstream(sandbox_id)
        if up is None and await self._wake(sandbox_id):
            self.forget(sandbox_id)
            up = await self._upstream(sandbox_id)
        if up is None:
            await sandbox_not_found(send, sandbox_id)
            return
        if up.app is not None:
            await up.app(scope, receive, send)
            return
        assert up.url is not None
        try:
            await forward(scope, receive, send, self._client, up.url, extra_headers=self._extra)
        except UpstreamUnavailable:
            self.forget(sandbox_id)
            await sandbox_not_found(send, sandbox_id)

    async def _wake(self, sandbox_id: str) -> bool:
        """Auto-resume ``sandbox_id`` if it wants that; one attempt for concurrent callers."""
        if self._resume is None:
            return False
        task = self._waking.get(sandbox_id)
        if task is None:
            task = asyncio.ensure_future(self._resume(sandbox_id))
            self._waking[sandbox_id] = task
            task.add_done_callback(lambda t: self._woken(sandbox_id, t))
        with contextlib.suppress(Exception):
            # Shielded: a client that gives up does not cancel the others' resume.
            return await asyncio.shield(task)
        return False

    def _woken(self, sandbox_id: str, task: asyncio.Task[bool]) -> None:
        self._waking.pop(sandbox_id, None)
        if not task.cancelled():
            task.exception()  # retrieved even if every waiting client went away

    async def _route_signed(self, scope: Scope, send: Send) -> Scope | None:
        """``download_url()`` / ``upload_url()`` with ``E2B_SANDBOX_URL`` come without routing
        headers (any HTTP client opens them): route by the signature instead, or answer
        401 as envd would. Returns the scope with routing headers, or None when answered."""
        query = scope.get("query_string", b"")
        sandbox_id = None
        if self._find_by_signature is not None:
            sandbox_id = await self._find_by_signature(scope["method"], query)
        if sandbox_id is None:
            names = {n for n, _ in urllib.parse.parse_qsl(query.decode("latin-1"), True)}
            message = (
                "invalid signature" if "signature" in names else "missing signature query parameter"
            )
            await send_json(send, 401, {"code": 401, "message": message})
            return None
        headers = [
            (n, v)
            for n, v in scope["headers"]
            if n.lower() not in (b"e2b-sandbox-id", b"e2b-sandbox-port")
        ]
        headers += [
            (b"e2b-sandbox-id", sandbox_id.encode()),
            (b"e2b-sandbox-port", str(ENVD_PORT).encode()),
        ]
        return {**scope, "headers": headers}

    async def aclose(self) -> None:
        await self._client.aclose()


async def _noop_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
