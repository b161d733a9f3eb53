"""``List``: the processes envd started in this sandbox that are still running."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.request import current_request
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService


async def list_processes(
    svc: ProcessService, request: pb.ListRequest, ctx: RequestContext
) -> pb.ListResponse:
    table = svc.table(current_request.get().sandbox)
    return pb.ListResponse(
        processes=[
            pb.ProcessInfo(config=proc.config, pid=proc.pid, tag=proc.tag)
            for proc in sorted(table.running(), key=lambda p: p.pid)
            if not proc.finished
        ]
    )
