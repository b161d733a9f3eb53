"""``SendSignal``: SIGTERM or SIGKILL to a process's whole process group."""

from __future__ import annotations

import signal as signals
from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.process.connect import describe
from shoal.envd.process.input import find_running
from shoal.envd.request import current_request
from shoal.errors import InvalidArgument, NotFound
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService

_SIGNALS = {
    pb.Signal.SIGKILL: signals.SIGKILL,
    pb.Signal.SIGTERM: signals.SIGTERM,
}


async def send_signal(
    svc: ProcessService, request: pb.SendSignalRequest, ctx: RequestContext
) -> pb.SendSignalResponse:
    proc = find_running(svc, request.process)
    signum = _SIGNALS.get(request.signal)
    if signum is None:
        raise InvalidArgument(f"invalid signal: {request.signal!r}")
    spawner = current_request.get().sandbox.spawner
    if not await spawner.signal(proc.pid, signum, group=True):
        raise NotFound(describe(request.process))
    return pb.SendSignalResponse()
