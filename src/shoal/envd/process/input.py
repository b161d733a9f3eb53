"""``SendInput``, ``StreamInput`` and ``CloseStdin``: bytes into a process's stdin or pty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.process.connect import describe
from shoal.envd.process.table import RunningProcess
from shoal.envd.request import current_request
from shoal.errors import InvalidArgument, NotFound
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService


def find_running(svc: ProcessService, selector: pb.ProcessSelector | None) -> RunningProcess:
    table = svc.table(current_request.get().sandbox)
    proc = table.find(selector) if selector is not None else None
    if proc is None or proc.finished:
        raise NotFound(describe(selector))
    return proc


async def write(proc: RunningProcess, given: pb.ProcessInput | None) -> None:
    choice = given.input if given is not None else None
    if choice is None:
        raise InvalidArgument("input carries neither stdin nor pty bytes")
    await proc.write_input(choice.value, pty=choice.field == "pty")


async def send_input(
    svc: ProcessService, request: pb.SendInputRequest, ctx: RequestContext
) -> pb.SendInputResponse:
    await write(find_running(svc, request.process), request.input)
    return pb.SendInputResponse()


async def stream_input(
    svc: ProcessService, requests: AsyncIterator[pb.StreamInputRequest], ctx: RequestContext
) -> pb.StreamInputResponse:
    proc: RunningProcess | None = None
    async for message in requests:
        event = message.event
        if event is None or event.field == "keepalive":
            continue
        if event.field == "start":
            proc = find_running(svc, event.value.process)  # type: ignore[union-attr]
            continue
        if proc is None:
            raise InvalidArgument("stream input must begin with a start event")
        await write(proc, event.value.input)  # type: ignore[union-attr]
    return pb.StreamInputResponse()


async def close_stdin(
    svc: ProcessService, request: pb.CloseStdinRequest, ctx: RequestContext
) -> pb.CloseStdinResponse:
    find_running(svc, request.process).close_stdin()
    return pb.CloseStdinResponse()
