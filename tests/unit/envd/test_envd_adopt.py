"""What envd stores with each process for a restarted agent, and how it takes them back.

The spawner here is a scripted fake: its "processes" are pipes the test writes to and
exit futures the test resolves, so each branch of the adoption is reached on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field

import pytest
from protobuf import Oneof

from shoal.envd.process.adopt import (
    AdoptingSpawner,
    ProcessMeta,
    adopt_into,
    decode_metadata,
    encode_metadata,
)
from shoal.envd.process.subscriber import SubscriberClosed
from shoal.envd.process.table import Ended, Output, ProcessTable
from shoal.errors import InvalidStateTransition, NotFound
from shoal.runtime.initclient import InitTooOld
from shoal.runtime.process import ExitStatus, SpawnRequest
from shoal.wire.envd import process_pb as pb


def meta(**kw: object) -> ProcessMeta:
    config = pb.ProcessConfig(
        cmd="/bin/bash", args=["-l", "-c", "sleep 1"], envs={"A": "1"}, cwd="/tmp"
    )
    values: dict[str, object] = {"config": config, "tag": "t", "pty": False, "deadline": None}
    values.update(kw)
    return ProcessMeta(**values)  # type: ignore[arg-type]


def test_metadata_round_trips() -> None:
    for m in (
        meta(),
        meta(tag=None, deadline=1234.5, pty=True),
        meta(config=pb.ProcessConfig(cmd="x")),  # no cwd: stays absent
        meta(config=pb.ProcessConfig(cmd="x", cwd="")),  # an empty cwd stays present
    ):
        back = decode_metadata(encode_metadata(m))
        assert back is not None
        assert (back.tag, back.pty, back.deadline) == (m.tag, m.pty, m.deadline)
        for name in ("cmd", "args", "envs", "cwd"):
            assert getattr(back.config, name) == getattr(m.config, name)
        assert back.config.has_field("cwd") == m.config.has_field("cwd")


def test_metadata_over_the_limit_drops_envs_then_args() -> None:
    big_env = meta(config=pb.ProcessConfig(cmd="c", args=["a"], envs={"E": "x" * 500}))
    small = decode_metadata(encode_metadata(big_env, limit=300))
    assert small is not None
    assert (small.config.cmd, small.config.args, small.config.envs) == ("c", ["a"], {})
    big_args = meta(config=pb.ProcessConfig(cmd="c", args=["y" * 500], envs={"E": "1"}))
    smaller = decode_metadata(encode_metadata(big_args, limit=300))
    assert smaller is not None
    assert (smaller.config.cmd, smaller.config.args, smaller.tag) == ("c", [], "t")
    assert json.loads(encode_metadata(big_args, limit=300))["truncated"] is True
    assert encode_metadata(meta(tag="z" * 500), limit=300) == b""


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"envd": 2, "cmd": "x"}',
        b'{"envd": 1}',
        b'{"envd": 1, "cmd": 5}',
        b'{"envd": 1, "cmd": "x", "args": "ab"}',
        b'{"envd": 1, "cmd": "x", "envs": {"A": 1}}',
        b'{"envd": 1, "cmd": "x", "deadline": "soon"}',
        b"[" * 100_000,
    ],
)
def test_anything_envd_did_not_write_is_not_metadata(blob: bytes) -> None:
    assert decode_metadata(blob) is None


@dataclass
class Handle:
    pid: int
    metadata: bytes
    exit: asyncio.Future[ExitStatus]
    stdout: int | None = None
    stderr: int | None = None
    stdin: int | None = None
    pty: int | None = None

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self.exit)


@dataclass
class ScriptedSpawner:
    """Processes as the sandbox's init would report them after a restart."""

    blobs: dict[int, bytes]
    refuse: dict[int, Exception] = field(default_factory=dict)
    writers: dict[int, int] = field(default_factory=dict)
    err_writers: dict[int, int] = field(default_factory=dict)
    handles: dict[int, Handle] = field(default_factory=dict)
    signals: list[tuple[int, int]] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)

    async def spawn(self, request: SpawnRequest, *, metadata: bytes = b"") -> Handle:
        raise NotImplementedError

    async def list_pids(self) -> list[int]:
        return list(self.blobs)

    async def adopt_process(self, pid: int) -> Handle:
        self.adopted.append(pid)
        if pid in self.refuse:
            raise self.refuse[pid]
        if pid in self.handles:
            return self.handles[pid]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.writers[pid] = out_w
        self.err_writers[pid] = err_w
        fut = asyncio.get_running_loop().create_future()
        handle = Handle(pid, self.blobs[pid], fut, stdout=out_r, stderr=err_r)
        self.handles[pid] = handle
        return handle

    async def signal(self, pid: int, signum: int, *, group: bool = True) -> bool:
        self.signals.append((pid, signum))
        handle = self.handles[pid]
        if handle.exit.done():
            return False
        os.close(self.writers.pop(pid))
        os.close(self.err_writers.pop(pid))
        handle.exit.set_result(ExitStatus(code=None, signal=signum))
        return True

    async def aclose(self) -> None:
        for fd in [*self.writers.values(), *self.err_writers.values()]:
            os.close(fd)

    def reader_gone(self, pid: int) -> bool:
        """Whether every read end of ``pid``'s pipes is closed (a write fails with EPIPE)."""
        gone = []
        for writer in (self.writers[pid], self.err_writers[pid]):
            try:
                os.write(writer, b"x")
            except BrokenPipeError:
                gone.append(True)
            else:
                gone.append(False)
        return all(gone)


async def test_adoption_restores_entries_and_skips_what_is_not_envds() -> None:
    ours = encode_metadata(meta())
    spawner = ScriptedSpawner(
        blobs={10: ours, 11: b"", 12: b'{"from": "a tool in the sandbox"}', 13: ours, 14: ours},
        refuse={13: NotFound("ended meanwhile"), 14: InvalidStateTransition("owned")},
    )
    assert isinstance(spawner, AdoptingSpawner)
    table = ProcessTable()
    assert await adopt_into(table, spawner) == [10]
    (proc,) = table.running()
    assert (proc.pid, proc.tag, proc.config.cmd, proc.config.args) == (
        10,
        "t",
        "/bin/bash",
        ["-l", "-c", "sleep 1"],
    )
    assert (proc.config.envs, proc.config.cwd) == ({"A": "1"}, "/tmp")
    # fds of processes envd does not list are closed, not leaked
    assert spawner.reader_gone(11) and spawner.reader_gone(12)
    assert not spawner.reader_gone(10)
    # output flows to a new subscriber, then the end
    sub = proc.subscribe()
    os.write(spawner.writers[10], b"after the restart\n")
    got = b""
    while b"after the restart\n" not in got:
        item = await sub.get(5)
        assert isinstance(item, Output) and item.kind in ("stdout", "stderr")
        got += item.data if item.kind == "stdout" else b""
    # a second adoption finds it known and takes nothing
    spawner.adopted.clear()
    assert await adopt_into(table, spawner) == []
    assert 10 not in spawner.adopted
    assert await spawner.signal(10, signal.SIGKILL)
    events = []
    while True:
        try:
            events.append(await sub.get(5))
        except SubscriberClosed:
            break
    assert events[-1] == Ended(ExitStatus(code=None, signal=signal.SIGKILL))
    table.release()
    await spawner.aclose()


async def test_the_timeout_deadline_survives_the_restart() -> None:
    spawner = ScriptedSpawner(
        blobs={
            20: encode_metadata(meta(deadline=time.time() - 1)),  # passed while we were away
            21: encode_metadata(meta(deadline=time.time() + 3600)),
        }
    )
    table = ProcessTable()
    assert await adopt_into(table, spawner) == [20, 21]
    late = table.find(pb.ProcessSelector(selector=Oneof("pid", 20)))  # type: ignore[arg-type]
    assert late is not None
    assert await asyncio.wait_for(late.handle.wait(), 5) == ExitStatus(None, signal.SIGKILL)
    await asyncio.sleep(0.05)
    assert spawner.signals == [(20, signal.SIGKILL)]
    table.release()
    await spawner.aclose()


async def test_an_init_too_old_to_adopt_stops_quietly() -> None:
    spawner = ScriptedSpawner(
        blobs={30: b"", 31: encode_metadata(meta())}, refuse={30: InitTooOld("old init")}
    )
    table = ProcessTable()
    assert await adopt_into(table, spawner) == []
    assert spawner.adopted == [30]  # no point asking about the others
    assert table.running() == []


async def test_a_spawner_that_cannot_adopt_is_left_alone() -> None:
    from fakes.spawner import FakeSpawner

    spawner = FakeSpawner()
    assert not isinstance(spawner, AdoptingSpawner)
    assert await adopt_into(ProcessTable(), spawner) == []
