"""Forward one ASGI HTTP request to an upstream over httpx, streaming both ways.

Used twice: by the proxy to reach a remote node agent, and by a node agent to reach a
port inside a sandbox. Neither side buffers a body. If the upstream breaks while the
response is streaming, the error propagates so the ASGI server aborts the client's
connection instead of ending it cleanly: a client must be able to tell "the sandbox
died" from "the stream ended". The other way round, a client that goes away mid-response
closes the upstream connection: ASGI servers drop writes to a gone client silently, so
without that a stream that never ends on its own (a kernel told to ``sleep`` forever,
with keepalives) would hold the upstream open, and the upstream (the code interpreter,
which interrupts the kernel on disconnect) would never learn its caller gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import httpx
from starlette.types import Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def make_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An httpx client that adds nothing of its own to forwarded requests (no default
    ``Accept-Encoding`` or ``User-Agent``), never follows redirects and has no overall
    timeout: streams (command output, kernels) may legitimately stay open for hours."""
    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(None, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )
    client.headers = httpx.Headers()
    return client


class UpstreamUnavailable(Exception):
    """The upstream refused or dropped the connection before answering."""


class _RequestBody:
    """The client's request body as an async iterator; ``complete`` once all of it was
    read, after which ``receive`` has nothing left to give but the disconnect."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                self.complete = True
                return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(streaming: Awaitable[None], receive: Receive) -> None:
    """Run ``streaming`` to its end, or until the client disconnects (then it is cancelled
    and this returns, so the caller closes the upstream). Upstream errors propagate."""
    pumping = asyncio.ensure_future(streaming)
    watching = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            task.cancel()  # no-op on a finished one
        with contextlib.suppress(BaseException):
            await asyncio.gather(pumping, watching, return_exceptions=True)
    if not pumping.cancelled():
        pumping.result()


def request_headers(
    scope: Scope, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in scope["headers"]:
        low = name.lower()
        if low in HOP_BY_HOP or low in drop:
            continue
        out.append((low, value))
    return out


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: httpx.AsyncClient,
    base_url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    drop_headers: frozenset[bytes] = frozenset(),
) -> None:
    path = scope.get("raw_path") or scope["path"].encode()
    if isinstance(path, str):
        path = path.encode()
    url = base_url.rstrip("/") + path.decode("latin-1")
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    headers = request_headers(scope, drop_headers) + list(extra_headers)
    has_body = any(n == b"content-length" and v != b"0" for n, v in scope["headers"]) or any(
        n == b"transfer-encoding" for n, _ in scope["headers"]
    )
    body = _RequestBody(receive) if has_body else None
    request = client.build_request(scope["method"], url, headers=headers, content=body)
    try:
        response = await client.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnavailable(str(exc)) from exc

    async def stream() -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(n, v) for n, v in response.headers.raw if n.lower() not in HOP_BY_HOP],
            }
        )
        async for chunk in response.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    try:
        if body is None or body.complete:
            await _until_disconnect(stream(), receive)
        else:  # the upstream answered before reading all of it: receive is still the body's
            await stream()
    finally:
        await response.aclose()
