"""One sandbox's process table: fan-out, draining, and letting go without killing."""

from __future__ import annotations

import asyncio
import os
import signal

from fakes.spawner import FakeSpawner
from protobuf import Oneof

from shoal.envd.process.subscriber import SubscriberClosed
from shoal.envd.process.table import Ended, Failed, Output, ProcessTable, RunningProcess
from shoal.errors import SandboxGone
from shoal.runtime.process import SpawnRequest
from shoal.wire.envd import process_pb as pb


async def spawn(spawner: FakeSpawner, script: str, **kwargs: object) -> RunningProcess:
    handle = await spawner.spawn(
        SpawnRequest(
            argv=["/bin/sh", "-c", script],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            uid=0,
            gid=0,
            **kwargs,
        )  # type: ignore[arg-type]
    )
    return RunningProcess(handle, pb.ProcessConfig(cmd="/bin/sh"), None, spawner)


async def collect(sub: object) -> list[object]:
    items: list[object] = []
    while True:
        try:
            item = await sub.get(5)  # type: ignore[attr-defined]
        except SubscriberClosed:
            return items
        items.append(item)


async def test_every_subscriber_sees_all_output_then_the_end() -> None:
    spawner = FakeSpawner()
    proc = await spawn(spawner, "echo one; echo two >&2")
    a, b = proc.subscribe(), proc.subscribe()
    table = ProcessTable()
    table.add(proc)
    seen_a, seen_b = await asyncio.gather(collect(a), collect(b))
    for seen in (seen_a, seen_b):
        assert {(o.kind, o.data) for o in seen if isinstance(o, Output)} == {
            ("stdout", b"one\n"),
            ("stderr", b"two\n"),
        }
        assert isinstance(seen[-1], Ended) and seen[-1].status.code == 0
    assert table.running() == []
    assert table.find(_pid(proc.pid), include_ended=True) is proc
    assert table.find(_pid(proc.pid)) is None


def _targets(fds: list[int | None] | None = None) -> set[str]:
    names = (
        os.listdir("/proc/self/fd") if fds is None else [str(fd) for fd in fds if fd is not None]
    )
    found = set()
    for name in names:
        try:
            found.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return found


def _pid(pid: int) -> pb.ProcessSelector:
    return pb.ProcessSelector(selector=Oneof("pid", pid))  # type: ignore[arg-type]


async def test_grandchild_holding_the_pipe_does_not_delay_the_end() -> None:
    spawner = FakeSpawner()
    proc = await spawn(spawner, "sleep 30 & echo parent")
    sub = proc.subscribe()
    ProcessTable().add(proc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = await collect(sub)
    assert loop.time() - started < 1.5
    assert [o.data for o in items if isinstance(o, Output)] == [b"parent\n"]
    assert isinstance(items[-1], Ended)
    await spawner.aclose()


async def test_release_aborts_streams_and_closes_fds_but_does_not_kill() -> None:
    spawner = FakeSpawner()
    proc = await spawn(spawner, "sleep 30")
    sub = proc.subscribe()
    table = ProcessTable()
    table.add(proc)
    await asyncio.sleep(0.05)
    pipes = _targets([proc.handle.stdout, proc.handle.stderr])
    assert len(pipes) == 2
    table.release()
    items = await collect(sub)
    assert isinstance(items[-1], Failed) and isinstance(items[-1].error, SandboxGone)
    assert not pipes & _targets()
    os.kill(proc.pid, 0)  # still alive: forgetting a sandbox kills nothing
    os.killpg(proc.pid, signal.SIGKILL)
    await spawner.aclose()


async def test_sandbox_gone_while_waiting_is_reported_as_failed() -> None:
    spawner = FakeSpawner()
    proc = await spawn(spawner, "sleep 30")
    sub = proc.subscribe()
    ProcessTable().add(proc)
    spawner.gone()
    items = await collect(sub)
    assert isinstance(items[-1], Failed) and isinstance(items[-1].error, SandboxGone)
