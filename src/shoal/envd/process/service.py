"""The ``process.Process`` Connect service for every sandbox of a node.

State is per sandbox (one :class:`ProcessTable` each, created on first use) and lives until
the agent calls :meth:`ProcessService.forget` when the sandbox goes away. A restarted agent
calls :meth:`ProcessService.adopt_processes` for each sandbox it takes back, which fills the
table again from what the sandbox's init kept (:mod:`.adopt`).

Errors are mapped once, by :mod:`shoal.envd.rpc` (shared with the filesystem service).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from connectrpc.request import RequestContext

from shoal.envd import rpc
from shoal.envd.process import connect, input, list, signal, start, update
from shoal.envd.process.adopt import adopt_into
from shoal.envd.process.table import ProcessTable
from shoal.envd.sandbox import EnvdSandbox
from shoal.wire.envd import process_pb as pb
from shoal.wire.envd.process_connect import Process

log = logging.getLogger(__name__)

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

    # -- process.Process -----------------------------------------------------------------

    async def list(self, request: pb.ListRequest, ctx: RequestContext) -> pb.ListResponse:
        return await rpc.unary(list.list_processes(self, request, ctx))

    def connect(
        self, request: pb.ConnectRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.ConnectResponse]:
        return rpc.stream(connect.connect(self, request, ctx))

    def start(
        self, request: pb.StartRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.StartResponse]:
        return rpc.stream(start.start(self, request, ctx))

    async def update(self, request: pb.UpdateRequest, ctx: RequestContext) -> pb.UpdateResponse:
        return await rpc.unary(update.update(self, request, ctx))

    async def stream_input(
        self, request: AsyncIterator[pb.StreamInputRequest], ctx: RequestContext
    ) -> pb.StreamInputResponse:
        return await rpc.unary(input.stream_input(self, request, ctx))

    async def send_input(
        self, request: pb.SendInputRequest, ctx: RequestContext
    ) -> pb.SendInputResponse:
        return await rpc.unary(input.send_input(self, request, ctx))

    async def send_signal(
        self, request: pb.SendSignalRequest, ctx: RequestContext
    ) -> pb.SendSignalResponse:
        return await rpc.unary(signal.send_signal(self, request, ctx))

    async def close_stdin(
        self, request: pb.CloseStdinRequest, ctx: RequestContext
    ) -> pb.CloseStdinResponse:
        return await rpc.unary(input.close_stdin(self, request, ctx))
