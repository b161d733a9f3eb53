"""``Connect``: re-attach to a running (or just ended) process by pid or tag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.process.stream import follow, keepalive_interval, timeout_seconds
from shoal.envd.request import current_request
from shoal.errors import NotFound
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService


def describe(selector: pb.ProcessSelector | None) -> str:
    choice = selector.selector if selector is not None else None
    if choice is None:
        return "process with no selector not found"
    if choice.field == "pid":
        return f"process with pid {choice.value} not found"
    return f"process with tag {choice.value} not found"


async def connect(
    svc: ProcessService, request: pb.ConnectRequest, ctx: RequestContext
) -> AsyncIterator[pb.ConnectResponse]:
    envd_request = current_request.get()
    table = svc.table(envd_request.sandbox)
    selector = request.process
    proc = table.find(selector, include_ended=True) if selector is not None else None
    if proc is None:
        # Sent as an end-stream error on a 200: connect-web reads codes only from there.
        raise NotFound(describe(selector))
    timeout = timeout_seconds(ctx.request_headers)
    deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
    sub = proc.subscribe()
    async for response in follow(
        proc,
        sub,
        envd_request,
        lambda event: pb.ConnectResponse(event=event),
        keepalive=keepalive_interval(ctx.request_headers),
        deadline=deadline,
    ):
        yield response
