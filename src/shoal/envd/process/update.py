"""``Update``: resize a process's terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.process.input import find_running
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService


async def update(
    svc: ProcessService, request: pb.UpdateRequest, ctx: RequestContext
) -> pb.UpdateResponse:
    proc = find_running(svc, request.process)
    if request.pty is not None:
        size = request.pty.size
        cols, rows = (size.cols, size.rows) if size is not None else (0, 0)
        proc.resize(cols, rows)
    return pb.UpdateResponse()
