"""The ``process.Process`` Connect service for every sandbox of a node.

State is per sandbox (one :class:`ProcessTable` each, created on first use) and lives until
the agent calls :meth:`ProcessService.forget` when the sandbox goes away. A restarted agent
calls :meth:`ProcessService.adopt_processes` for each sandbox it takes back, which fills the
table again from what the sandbox's init kept (:mod:`.adopt`).

Errors are mapped here, once: :class:`~shoal.errors.ShoalError` becomes a Connect error,
except :class:`~shoal.errors.SandboxGone`, which marks the response aborted and propagates
so the client sees a broken response rather than a clean end (e2b-compat §3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from shoal.envd.errors import to_connect
from shoal.envd.process import connect, input, list, signal, start, update
from shoal.envd.process.adopt import adopt_into
from shoal.envd.process.table import ProcessTable
from shoal.envd.request import abort_response
from shoal.envd.sandbox import EnvdSandbox
from shoal.errors import SandboxGone, ShoalError
from shoal.wire.envd import process_pb as pb
from shoal.wire.envd.process_connect import Process

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


def _translate(exc: Exception) -> BaseException:
    if isinstance(exc, SandboxGone):
        abort_response()
        return exc
    if isinstance(exc, ShoalError):
        return to_connect(exc)
    if isinstance(exc, ConnectError):
        return exc
    log.exception("envd process handler failed", exc_info=exc)
    return ConnectError(Code.INTERNAL, f"internal error: {exc}")


class ProcessService(Process):
    """Implements the generated ``process_connect.Process`` protocol."""

    def __init__(self) -> None:
        self._tables: dict[str, ProcessTable] = {}

    def table(self, sandbox: EnvdSandbox) -> ProcessTable:
        table = self._tables.get(sandbox.sandbox_id)
        if table is None:
            table = self._tables[sandbox.sandbox_id] = ProcessTable()
        return table

    async def adopt_processes(self, sandbox: EnvdSandbox) -> Sequence[int]:
        """After an agent restart: list, follow and report again every process envd started
        in ``sandbox`` that is still running; returns their pids. Safe to call again."""
        pids = await adopt_into(self.table(sandbox), sandbox.spawner)
        if pids:
            log.info("sandbox %s: took back processes %s", sandbox.sandbox_id, pids)
        return pids

    def forget(self, sandbox_id: str) -> None:
        """Release fds, pumps and timers of a sandbox that is gone; signals nothing.

        Streams still attached to its processes are aborted.
        """
        table = self._tables.pop(sandbox_id, None)
        if table is not None:
            table.release()

    async def aclose(self) -> None:
        for sandbox_id in [*self._tables]:
            self.forget(sandbox_id)

    async def _unary(
        self,
        handler: Callable[[ProcessService, Req, RequestContext], Awaitable[Res]],
        request: Req,
        ctx: RequestContext,
    ) -> Res:
        try:
            return await handler(self, request, ctx)
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def _stream(self, responses: AsyncIterator[Res]) -> AsyncIterator[Res]:
        async with contextlib.aclosing(responses):  # type: ignore[type-var]
            try:
                async for response in responses:
                    yield response
            except Exception as exc:
                translated = _translate(exc)
                if translated is exc:
                    raise
                raise translated from exc

    # -- process.Process -----------------------------------------------------------------

    async def list(self, request: pb.ListRequest, ctx: RequestContext) -> pb.ListResponse:
        return await self._unary(list.list_processes, request, ctx)

    def connect(
        self, request: pb.ConnectRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.ConnectResponse]:
        return self._stream(connect.connect(self, request, ctx))

    def start(
        self, request: pb.StartRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.StartResponse]:
        return self._stream(start.start(self, request, ctx))

    async def update(self, request: pb.UpdateRequest, ctx: RequestContext) -> pb.UpdateResponse:
        return await self._unary(update.update, request, ctx)

    async def stream_input(
        self, request: AsyncIterator[pb.StreamInputRequest], ctx: RequestContext
    ) -> pb.StreamInputResponse:
        return await self._unary(input.stream_input, request, ctx)

    async def send_input(
        self, request: pb.SendInputRequest, ctx: RequestContext
    ) -> pb.SendInputResponse:
        return await self._unary(input.send_input, request, ctx)

    async def send_signal(
        self, request: pb.SendSignalRequest, ctx: RequestContext
    ) -> pb.SendSignalResponse:
        return await self._unary(signal.send_signal, request, ctx)

    async def close_stdin(
        self, request: pb.CloseStdinRequest, ctx: RequestContext
    ) -> pb.CloseStdinResponse:
        return await self._unary(input.close_stdin, request, ctx)
