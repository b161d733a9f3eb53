"""The envd ASGI app the node agent serves for all of its sandboxes (port 49983 traffic).

Every request names its sandbox in ``E2b-Sandbox-Id`` (set by the data-plane proxy, or by
the SDK in debug mode). The gate here resolves it (unknown → 502 "was not found", which
the SDK reads as "sandbox not running"), checks ``X-Access-Token`` and then hands the
request to the Connect services or the plain-HTTP routes.

    app = build_envd_app(directory)
    ...
    app.forget(sandbox_id)   # when the sandbox is gone: drops its process table and fds
"""

from __future__ import annotations

import asyncio
from typing import Any

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from shoal.envd.auth import ACCESS_TOKEN_HEADER, token_matches
from shoal.envd.errors import sandbox_not_found, unauthorized
from shoal.envd.files import files as files_endpoint
from shoal.envd.filesystem import FilesystemService
from shoal.envd.process import ProcessService
from shoal.envd.request import EnvdRequest, current_request
from shoal.envd.sandbox import SandboxDirectory
from shoal.wire.envd.filesystem_connect import FilesystemASGIApplication
from shoal.wire.envd.process_connect import ProcessASGIApplication

SANDBOX_ID_HEADER = "e2b-sandbox-id"
OPEN_PATHS = frozenset({"/health"})
SELF_AUTHORIZED = frozenset({("GET", "/files"), ("POST", "/files")})
"""Routes that check ``X-Access-Token`` *or* a URL signature themselves (§4.4)."""
READ_MAX_BYTES = 64 * 1024 * 1024
"""Largest request message (e.g. one ``send_stdin`` chunk, base64 in JSON). Upstream envd
sets no limit; connectrpc's default of 4 MiB made a 5 MB ``send_stdin`` fail with a
misleading "rate limit exceeded" in the SDK."""
"""Paths that need no access token. (``/files`` will check token *or* signature itself.)"""


class _LenientCodec:
    """A codec whose decode failures are the client's fault (``invalid_argument``).

    Without this a malformed body (bad JSON, invalid UTF-8) escapes connectrpc as an
    unexpected exception, which our dispatcher would treat as a dead sandbox.
    """

    def __init__(self, inner: Codec) -> None:
        self._inner = inner

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self._inner.decode(data, message_class)
        except ConnectError:
            raise
        except Exception as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"invalid request message: {exc}") from exc


async def _health(request: Request) -> Response:
    return Response(status_code=204)


async def _envs(request: Request) -> Response:
    return JSONResponse(dict(current_request.get().sandbox.env_vars))


class EnvdApp:
    """The gate (sandbox, token) in front of ``process.Process``, ``/health`` and ``/envs``."""

    def __init__(
        self, directory: SandboxDirectory, processes: ProcessService | None = None
    ) -> None:
        self.directory = directory
        self.processes = processes or ProcessService()
        self.filesystem = FilesystemService()
        # JSON is what the SDKs speak; proto binary costs nothing and serves other clients.
        # Compression stays off: the SDKs disable it and nothing may buffer a stream.
        codecs: list[Codec] = [
            _LenientCodec(proto_json_codec(ignore_unknown_fields=True)),
            _LenientCodec(proto_binary_codec()),
        ]
        self._rpc: dict[str, Any] = {
            "/process.Process/": ProcessASGIApplication(
                self.processes, codecs=codecs, compressions=[], read_max_bytes=READ_MAX_BYTES
            ),
            "/filesystem.Filesystem/": FilesystemASGIApplication(
                self.filesystem, codecs=codecs, compressions=[], read_max_bytes=READ_MAX_BYTES
            ),
        }
        self._router = Router(
            routes=[
                Route("/health", _health, methods=["GET"]),
                Route("/envs", _envs, methods=["GET"]),
                Route("/files", files_endpoint, methods=["GET", "POST"]),
            ]
        )

    def forget(self, sandbox_id: str) -> None:
        """Drop all per-sandbox state (process tables, fds); kills nothing."""
        self.processes.forget(sandbox_id)
        self.filesystem.forget(sandbox_id)

    async def aclose(self) -> None:
        await self.processes.aclose()
        await self.filesystem.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"envd serves HTTP only, not {scope['type']}")

        headers = Headers(scope=scope)
        sandbox_id = headers.get(SANDBOX_ID_HEADER, "")
        sandbox = self.directory.get(sandbox_id) if sandbox_id else None
        if sandbox is None:
            await sandbox_not_found(sandbox_id)(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            path not in OPEN_PATHS
            and (scope["method"], path) not in SELF_AUTHORIZED
            and not token_matches(sandbox, headers.get(ACCESS_TOKEN_HEADER))
        ):
            await unauthorized()(scope, receive, send)
            return

        request = EnvdRequest(sandbox)

        async def guarded_send(message: Message) -> None:
            # Once the sandbox died under this request (or the agent cancelled it) nothing
            # more goes out: connectrpc would otherwise finish the stream cleanly, and the
            # exception that follows makes the server drop the connection mid-response.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                request.aborted = True
            if not request.aborted:
                await send(message)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                request.mark_disconnected()
            return message

        token = current_request.set(request)
        try:
            for prefix, rpc_app in self._rpc.items():
                if path.startswith(prefix):
                    await rpc_app(scope, watched_receive, guarded_send)
                    return
            await self._router(scope, watched_receive, guarded_send)
        finally:
            current_request.reset(token)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_envd_app(directory: SandboxDirectory) -> EnvdApp:
    """The envd app for every sandbox ``directory`` knows; see :class:`EnvdApp`."""
    return EnvdApp(directory)
