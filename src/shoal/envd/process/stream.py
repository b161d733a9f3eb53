"""The event stream one client sees of one process: shared by ``Start`` and ``Connect``.

``start{pid}`` first, then ``data`` as it arrives, a ``keepalive`` after each quiet
``Keepalive-Ping-Interval``, and exactly one ``end``. A client that disconnects just
unsubscribes; the process keeps running.
"""

from __future__ import annotations

import asyncio
import signal as signals
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from shoal.envd.errors import to_connect
from shoal.envd.process.subscriber import Subscriber, SubscriberClosed
from shoal.envd.process.table import Ended, Failed, Output, ProcessEvent, RunningProcess
from shoal.envd.request import EnvdRequest
from shoal.errors import SandboxGone, ShoalError
from shoal.runtime.process import ExitStatus
from shoal.wire.envd import process_pb as pb

R = TypeVar("R")

KEEPALIVE_HEADER = "keepalive-ping-interval"
DEFAULT_KEEPALIVE = 90.0
TIMEOUT_HEADER = "connect-timeout-ms"

# Go's names for signals (os.ProcessState.String()), which clients may show or match on.
_SIGNAL_TEXT = {
    1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction",
    5: "trace/breakpoint trap", 6: "aborted", 7: "bus error", 8: "floating point exception",
    9: "killed", 10: "user defined signal 1", 11: "segmentation fault",
    12: "user defined signal 2", 13: "broken pipe", 14: "alarm clock", 15: "terminated",
    16: "stack fault", 17: "child exited", 18: "continued", 19: "stopped (signal)",
    20: "stopped", 21: "stopped (tty input)", 22: "stopped (tty output)",
    23: "urgent I/O condition", 24: "CPU time limit exceeded", 25: "file size limit exceeded",
    26: "virtual timer expired", 27: "profiling timer expired", 28: "window changed",
    29: "I/O possible", 30: "power failure", 31: "bad system call",
}  # fmt: skip


def status_text(status: ExitStatus) -> str:
    """``exit status 1`` / ``signal: killed``, as upstream envd (Go) words it."""
    if status.signal is not None:
        name = _SIGNAL_TEXT.get(status.signal)
        if name is None:
            try:
                name = signals.Signals(status.signal).name
            except ValueError:
                name = f"signal {status.signal}"
        return f"signal: {name}"
    return f"exit status {status.code if status.code is not None else 0}"


def end_event(status: ExitStatus) -> pb.ProcessEvent.EndEvent:
    text = status_text(status)
    ok = status.signal is None and not status.code
    return pb.ProcessEvent.EndEvent(
        exit_code=-1 if status.signal is not None else (status.code or 0),
        exited=status.exited,
        status=text,
        error=None if ok else text,
    )


def keepalive_interval(headers: Mapping[str, str]) -> float:
    raw = headers.get(KEEPALIVE_HEADER)
    try:
        value = float(raw) if raw else DEFAULT_KEEPALIVE
    except ValueError:
        return DEFAULT_KEEPALIVE
    return value if value > 0 else DEFAULT_KEEPALIVE


def timeout_seconds(headers: Mapping[str, str]) -> float | None:
    """The request's ``Connect-Timeout-Ms`` in seconds; None when absent or 0 (no limit)."""
    raw = headers.get(TIMEOUT_HEADER)
    if not raw:
        return None
    try:
        ms = int(raw)
    except ValueError as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid timeout header: {raw!r}") from exc
    return ms / 1000 if ms > 0 else None


def _event(**kwargs: object) -> pb.ProcessEvent:
    ((field, value),) = kwargs.items()
    return pb.ProcessEvent(event=Oneof(field, value))  # type: ignore[arg-type]


def _data(output: Output) -> pb.ProcessEvent:
    return _event(data=pb.ProcessEvent.DataEvent(output=Oneof(output.kind, output.data)))  # type: ignore[arg-type]


async def follow(
    proc: RunningProcess,
    sub: Subscriber[ProcessEvent],
    request: EnvdRequest,
    wrap: Callable[[pb.ProcessEvent], R],
    *,
    keepalive: float,
    deadline: float | None,
) -> AsyncIterator[R]:
    """Yield ``proc``'s events for one client; ``deadline`` is a loop time or None."""
    loop = asyncio.get_running_loop()
    remove_callback = request.on_disconnect(sub.close)
    try:
        yield wrap(_event(start=pb.ProcessEvent.StartEvent(pid=proc.pid)))
        while True:
            wait = keepalive
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                wait = min(wait, left)
            try:
                item = await sub.get(wait)
            except SubscriberClosed:
                if sub.dropped:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED, "output consumer too slow, stream dropped"
                    ) from None
                return  # the client went away
            if item is None:
                if deadline is None or deadline - loop.time() > 0:
                    yield wrap(_event(keepalive=pb.ProcessEvent.KeepAlive()))
                continue
            match item:
                case Output():
                    yield wrap(_data(item))
                case Ended(status=status):
                    yield wrap(_event(end=end_event(status)))
                    return
                case Failed(error=SandboxGone() as gone):
                    raise gone  # the service marks the response aborted
                case Failed(error=ShoalError() as err):
                    raise to_connect(err)
                case Failed(error=err):
                    raise ConnectError(Code.INTERNAL, f"waiting for process failed: {err}")
    finally:
        remove_callback()
        proc.unsubscribe(sub)
