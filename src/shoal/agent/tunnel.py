"""HTTP into a port of a sandbox, through its own network namespace.

No port forwarding, no NAT rules, no veth: a helper thread ``setns()``es into the
sandbox's network namespace and connects to its loopback (``shoal.runtime.netns``); the
socket keeps that namespace after the thread is done, so the event loop can use it.
httpcore does the HTTP/1.1 on top, via a network backend that opens sockets that way.
"""

from __future__ import annotations

import asyncio
import socket
import typing

import httpcore
import httpx

from shoal.runtime.netns import connect_tcp_in_netns


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class _NetnsBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, netns_path: str) -> None:
        self.netns_path = netns_path

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                sock: socket.socket = await connect_tcp_in_netns(self.netns_path, host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        reader, writer = await asyncio.open_connection(sock=sock)
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self, *args: typing.Any, **kwargs: typing.Any
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable in sandboxes")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class SandboxTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections land on the sandbox's own 127.0.0.1."""

    def __init__(self, netns_path: str) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_NetnsBackend(netns_path), max_connections=256, keepalive_expiry=30.0
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        try:
            resp = await self._pool.handle_async_request(req)
        except httpcore.ConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except httpcore.ConnectTimeout as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),  # type: ignore[arg-type]
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
