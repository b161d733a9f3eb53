"""Pause and resume when things go wrong (the "Failure behaviour" list of the pause issue),
driven through the official SDK against a live server with real checkpoints (CRIU).

* 50 sandboxes paused and resumed at once, each keeping a file and a process, and nothing
  left on the host after they are killed (checkpoints included);
* a server restart while sandboxes are paused (memory and disk-only);
* a pause in the middle of a command stream, and of writes into the sandbox (host-side
  uploads included: one in flight fails as for a sandbox gone, and none answered 200 is
  lost);
* checkpoint and snapshot bytes freed on kill and delete; metrics of a resumed sandbox;
* a restore that fails leaves the sandbox paused, and the next connect resumes it;
* a checkpoint that fails leaves the sandbox running and serving.

Node-side paths these tests look at (``<data_dir>/paused/``, ``<data_dir>/snapshots/``,
``<data_dir>/sandboxes/``) are the layout ``agent/checkpoints.py`` and
``runtime/container.py`` document.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hoststate import HostState, snapshot, wait_for, wait_until_clean
from support.server import ShoalServer, scratch_dir, sdk_env

pytestmark = [pytest.mark.root, pytest.mark.sdk]

IGNORE_FDS = 10**6
"""After a restart the server is a new process: its fd count is not comparable."""


# -- what the node holds -------------------------------------------------------------


def held(server: ShoalServer, kind: str) -> set[str]:
    """The checkpoints (``paused`` or ``snapshots``) the node keeps on disk, finished or not,
    once those it set aside after a resume (``.gone-*``, removed in the background) are gone."""
    root = server.data_dir / kind
    if not root.is_dir():
        return set()
    deadline = time.monotonic() + 20
    while any(p.name.startswith(".gone-") for p in root.iterdir()):
        assert time.monotonic() < deadline, f"{root}: a consumed checkpoint was never removed"
        time.sleep(0.05)
    return {p.name for p in root.iterdir()}


def bytes_under(path: Path) -> int:
    """Bytes allocated on disk below ``path`` (checkpoint disk images are sparse)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def accounted(server: ShoalServer) -> int:
    """Checkpoint and snapshot bytes the control plane counts against the node (what
    placement sees; read from its store, the default SQLite one)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'shoal.db'}?mode=ro", uri=True)
    try:
        paused = db.execute(
            "SELECT coalesce(sum(checkpoint_bytes), 0) FROM sandboxes "
            "WHERE state IN ('paused', 'resuming')"
        ).fetchone()[0]
        snapshots = db.execute("SELECT coalesce(sum(size_bytes), 0) FROM snapshots").fetchone()[0]
    finally:
        db.close()
    return int(paused) + int(snapshots)


def loop_devices(server: ShoalServer) -> set[str]:
    """Loop devices backed by a file of this server's sandboxes or checkpoints (pool
    containers' disks aside: the warm pool keeps those on purpose)."""
    prefix = str(server.data_dir).rstrip("/") + "/"
    found = set()
    for dev in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            backing = (dev / "loop" / "backing_file").read_text().strip()
            if backing.startswith(prefix) and "/pool-" not in backing:
                found.add(f"{dev.name} -> {backing}")
    return found


def client_connections(server: ShoalServer) -> int:
    """TCP connections this test process holds open to the server (the SDK keeps them
    alive in its pools; the server holds the other end of each)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    ports = {server.api_port, server.sandbox_port}
    n = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        if remote_port in ports and state == "01" and inode in mine:  # 01: ESTABLISHED
            n += 1
    return n


def server_fds(server: ShoalServer) -> tuple[int, int]:
    """The server's open fds: (sockets, everything else)."""
    assert server.proc is not None
    sockets = other = 0
    for fd in os.listdir(f"/proc/{server.proc.pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{server.proc.pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
            else:
                other += 1
    return sockets, other


def assert_clean(server: ShoalServer, base: HostState, *, restarted: bool = False) -> None:
    """Nothing of this server's sandboxes is left: processes, mounts, cgroups, netns,
    sandbox directories, containers, loop devices, fds, and no checkpoint of a paused one.

    Sockets the server holds for this process's live SDK connections are not a leak."""
    assert server.proc is not None and server.proc.poll() is None, server.log()
    leaks = wait_until_clean(server.data_dir, server.proc.pid, base, fd_slack=IGNORE_FDS)
    assert leaks == [], "\n".join(leaks)
    assert wait_for(lambda: not loop_devices(server), timeout=10), loop_devices(server)
    assert held(server, "paused") == set()
    if not restarted:
        base_sockets = base.fd_kinds.get("socket", 0)
        base_other = base.server_fds - base_sockets

        def fds_back() -> bool:
            sockets, other = server_fds(server)
            return (
                other <= base_other + 8 and sockets <= base_sockets + client_connections(server) + 8
            )

        assert wait_for(fds_back, timeout=10), (base.fd_kinds, server_fds(server))


@pytest.fixture(scope="module")
def e2e_server() -> Iterator[ShoalServer]:
    """This module's server: as the e2e one, sampling metrics every second (a resumed
    sandbox's metrics are looked at without waiting the default 5 s)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, crun)")
    server = ShoalServer(scratch_dir("e2e-pausefail"), extra_env={"SHOAL_METRICS_INTERVAL": "1"})
    server.start()
    try:
        with sdk_env(server):
            yield server
    finally:
        server.kill_all_sandboxes()
        server.stop()


@pytest.fixture
def baseline(e2e_server: ShoalServer) -> Iterator[HostState]:
    """The host with no sandbox of this server on it; tests compare against it."""
    e2e_server.kill_all_sandboxes()
    assert e2e_server.proc is not None
    base = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    assert not base.sandbox_dirs and not base.containers and not base.cgroups, base
    yield base


# -- 1. fifty at once ------------------------------------------------------------------


@pytest.mark.slow
async def test_fifty_sandboxes_paused_and_resumed_at_once(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import AsyncSandbox, SandboxState

    count = 50
    sem = asyncio.Semaphore(8)

    async def make(i: int) -> tuple[AsyncSandbox, int]:
        async with sem:
            sbx = await AsyncSandbox.create(timeout=300, metadata={"burst": str(i)})
        await sbx.files.write("/home/user/kept.txt", f"sandbox {i}")
        proc = await sbx.commands.run("sleep 3600", background=True, timeout=0)
        return sbx, proc.pid

    made = await asyncio.gather(*(make(i) for i in range(count)), return_exceptions=True)
    boxes = [m for m in made if not isinstance(m, BaseException)]
    try:
        assert len(boxes) == count, [m for m in made if isinstance(m, BaseException)][:3]

        paused = await asyncio.gather(*(sbx.pause() for sbx, _ in boxes))
        assert paused == [True] * count
        assert held(e2e_server, "paused") == {sbx.sandbox_id for sbx, _ in boxes}
        infos = await asyncio.gather(*(sbx.get_info() for sbx, _ in boxes))
        assert {i.state for i in infos} == {SandboxState.PAUSED}
        assert not any(await asyncio.gather(*(sbx.is_running() for sbx, _ in boxes)))

        await asyncio.gather(*(sbx.connect() for sbx, _ in boxes))
        assert held(e2e_server, "paused") == set()  # a resume consumes its checkpoint

        async def check(i: int, sbx: AsyncSandbox, pid: int) -> None:
            assert await sbx.files.read("/home/user/kept.txt") == f"sandbox {i}"
            running = {p.pid for p in await sbx.commands.list()}
            assert pid in running, (sbx.sandbox_id, pid, running)
            alive = await sbx.commands.run(f"kill -0 {pid} && echo alive")
            assert alive.stdout == "alive\n"

        await asyncio.gather(*(check(i, sbx, pid) for i, (sbx, pid) in enumerate(boxes)))
        # Half of them are killed while paused: that frees their checkpoints too.
        again = await asyncio.gather(*(sbx.pause() for sbx, _ in boxes[::2]))
        assert again == [True] * len(boxes[::2])
    finally:
        killed = await asyncio.gather(*(sbx.kill() for sbx, _ in boxes), return_exceptions=True)
    assert killed == [True] * count
    assert_clean(e2e_server, baseline)


# -- 2. a server restart while sandboxes are paused ---------------------------------------

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
COUNTER = "bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done'"
ALIVE = (
    "a=$(cat /tmp/counter); sleep 0.5; b=$(cat /tmp/counter); "
    '[ "$a" != "$b" ] && echo alive || echo gone'
)


def test_paused_sandboxes_survive_a_server_restart(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox, SandboxQuery, SandboxState

    assert fresh_server.proc is not None
    base = snapshot(fresh_server.data_dir, fresh_server.proc.pid)
    memory = Sandbox.create(timeout=300, metadata={"restart": "memory"})
    disk = Sandbox.create(timeout=300, metadata={"restart": "disk"})
    try:
        counter = memory.commands.run(COUNTER, background=True, timeout=0)
        memory.files.write("/home/user/note.txt", "memory pause")
        assert wait_for(lambda: memory.files.exists("/tmp/counter"), timeout=10)
        boot_id = memory.commands.run(BOOT_ID).stdout
        disk.files.write("/home/user/note.txt", "disk pause")
        disk.commands.run("sleep 3600", background=True, timeout=0)

        assert memory.pause() is True
        assert disk.pause(mode="filesystem") is True
        fresh_server.stop()
        fresh_server.start()

        paused = SandboxQuery(state=[SandboxState.PAUSED])
        listed = {(s.sandbox_id, s.state) for s in Sandbox.list(query=paused).next_items()}
        assert listed == {
            (memory.sandbox_id, SandboxState.PAUSED),
            (disk.sandbox_id, SandboxState.PAUSED),
        }
        assert held(fresh_server, "paused") == {memory.sandbox_id, disk.sandbox_id}
        assert memory.is_running() is False and disk.is_running() is False

        memory.connect()
        assert memory.get_info().state == SandboxState.RUNNING
        assert memory.files.read("/home/user/note.txt") == "memory pause"
        assert memory.commands.run(BOOT_ID).stdout == boot_id
        assert counter.pid in {p.pid for p in memory.commands.list()}
        assert memory.commands.run(ALIVE).stdout == "alive\n"

        disk.connect()
        assert disk.files.read("/home/user/note.txt") == "disk pause"
        assert disk.commands.list() == []  # booted afresh: its processes are gone
        assert held(fresh_server, "paused") == set()
    finally:
        for sbx in (memory, disk):
            with contextlib.suppress(Exception):
                sbx.kill()
    assert_clean(fresh_server, base, restarted=True)


# -- 3. a pause in the middle of a command stream --------------------------------------


def test_a_pause_ends_a_command_stream_and_the_command_runs_on(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    from e2b import Sandbox, SandboxNotRunningException

    sbx = make_sandbox(timeout=120)
    before, enough = Lines(), threading.Event()
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            sbx.commands.run(
                "for i in $(seq 1000); do echo $i; sleep 0.05; done",
                on_stdout=lambda chunk: before.feed(chunk, enough, 10),
            )
            ended.append(None)
        except BaseException as exc:
            ended.append(exc)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    assert enough.wait(30), before.numbers
    assert Sandbox.pause(sbx.sandbox_id) is True
    reader.join(30)
    assert not reader.is_alive()
    # What E2B documents for a sandbox that went away mid-request ("killed, paused or
    # reached its timeout"): the SDK probes the sandbox, finds it not running, and says so.
    assert isinstance(ended[0], SandboxNotRunningException), repr(ended[0])
    seen = before.numbers
    assert seen == list(range(1, len(seen) + 1))

    sbx.connect()
    # The command was checkpointed with the sandbox: it is listed, and following it again
    # shows it counting on from where it was (not started over, nothing skipped).
    (loop,) = [p for p in sbx.commands.list() if "seq 1000" in " ".join(p.args)]
    handle = sbx.commands.connect(loop.pid)
    after, more = Lines(), threading.Event()

    def follow() -> None:
        with contextlib.suppress(Exception):  # it ends killed, below
            handle.wait(on_stdout=lambda chunk: after.feed(chunk, more, 5))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert more.wait(30), after.numbers
    assert handle.kill() is True
    follower.join(30)
    got = after.numbers
    assert got[0] > seen[-1], (seen[-1], got)
    assert got == list(range(got[0], got[0] + len(got)))


class Lines:
    """Numbers printed one per line, gathered from output chunks as they come."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self._partial = ""

    def feed(self, chunk: str, event: threading.Event, wanted: int) -> None:
        *complete, self._partial = (self._partial + chunk).split("\n")
        self.numbers.extend(int(n) for n in complete)
        if len(self.numbers) >= wanted:
            event.set()


# -- 4. a pause while the sandbox is being written to --------------------------------------


APPENDER = (
    "for i in $(seq 1 {n}); do echo $i >> /home/user/log.txt; done; "
    "echo finished > /home/user/done.txt"
)


@pytest.mark.parametrize("mode", ["full", "filesystem"])
def test_a_pause_during_appends_keeps_every_acknowledged_line(make_sandbox, mode: str) -> None:  # type: ignore[no-untyped-def]
    sbx = make_sandbox(timeout=120)
    n = 300_000
    sbx.commands.run(APPENDER.format(n=n), background=True, timeout=0)

    def lines() -> int:
        return int(sbx.commands.run("wc -l < /home/user/log.txt || echo 0").stdout.strip() or 0)

    assert wait_for(lambda: sbx.files.exists("/home/user/log.txt") and lines() > 1000, 30)
    acknowledged = lines()  # what the writer had written when we last looked
    assert acknowledged < n, "the writer finished before the pause: make it write longer"
    assert sbx.pause(mode=mode) is True
    sbx.connect()

    if mode == "full":  # the writer runs on and finishes
        assert wait_for(lambda: sbx.files.exists("/home/user/done.txt"), timeout=60)
    content = sbx.files.read("/home/user/log.txt")
    assert content.endswith("\n")  # no torn line
    numbers = [int(x) for x in content.split("\n")[:-1]]
    assert numbers == list(range(1, len(numbers) + 1)), "lines lost, repeated or torn"
    assert len(numbers) >= acknowledged
    if mode == "full":
        assert len(numbers) == n


def test_a_pause_during_an_upload(make_sandbox, e2e_server: ShoalServer) -> None:  # type: ignore[no-untyped-def]
    from e2b import SandboxNotRunningException

    sbx = make_sandbox(timeout=120)
    block = 1 << 20
    # Numbered blocks: a torn or shifted upload cannot look like a prefix of this.
    payload = b"".join(f"{i:08d}".encode() * (block // 8) for i in range(256))
    host_path = e2e_server.data_dir / "sandboxes" / sbx.sandbox_id / "rootfs/home/user/big.bin"
    outcome: list[BaseException | None] = []

    def paced() -> Iterator[bytes]:
        # Slow enough that the pause lands mid-upload: a write the node answered after
        # the sandbox's disk was taken would be lost on resume.
        for i in range(0, len(payload), block):
            yield payload[i : i + block]
            time.sleep(0.01)

    def upload() -> None:
        try:
            sbx.files.write("/home/user/big.bin", paced())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=upload, daemon=True)
    writer.start()
    assert wait_for(lambda: host_path.exists() and host_path.stat().st_size > 8 * block, 30)
    assert sbx.pause() is True
    writer.join(60)
    assert not writer.is_alive()
    sbx.connect()

    kept = (
        sbx.files.read("/home/user/big.bin", format="bytes")
        if sbx.files.exists("/home/user/big.bin")
        else b""
    )
    if outcome[0] is None:  # acknowledged: all of it is there
        assert len(kept) == len(payload)
        assert kept == payload
    else:  # failed as for a sandbox gone away, leaving what was written so far
        assert isinstance(outcome[0], SandboxNotRunningException), repr(outcome[0])
        assert kept == payload[: len(kept)], "the file holds something that was not sent"
    # The sandbox's disk is sound: it takes the whole upload now.
    sbx.files.write("/home/user/big.bin", payload)
    assert sbx.files.read("/home/user/big.bin", format="bytes") == payload


# -- 5. disk held by checkpoints and snapshots, and metrics after a resume ----------------


def test_checkpoint_and_snapshot_bytes_are_accounted_and_freed(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    mib = 1 << 20
    paused_dir, snapshots_dir = e2e_server.data_dir / "paused", e2e_server.data_dir / "snapshots"
    assert accounted(e2e_server) == 0
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.commands.run("head -c 32M /dev/urandom > /home/user/noise.bin")
        snap = sbx.create_snapshot()
        snap_dir = snapshots_dir / snap.snapshot_id
        try:
            assert bytes_under(snap_dir) > 32 * mib  # the disk's data and the memory image
            assert sbx.pause() is True
            pause_dir = paused_dir / sbx.sandbox_id
            assert bytes_under(pause_dir) > 32 * mib
            # What placement counts is what the node holds.
            held(e2e_server, "paused")  # earlier resumes' leftovers removed
            on_disk = bytes_under(paused_dir) + bytes_under(snapshots_dir)
            assert accounted(e2e_server) == on_disk

            sbx.connect()
            assert not pause_dir.exists()  # resumed: the checkpoint is consumed
            assert accounted(e2e_server) == bytes_under(snapshots_dir)
            metrics: list = []

            def sampled() -> bool:
                metrics[:] = sbx.get_metrics()
                return bool(metrics)

            assert wait_for(sampled, timeout=20)
            m = metrics[-1]
            assert m.cpu_count >= 1 and m.mem_total > 0 and 0 < m.mem_used <= m.mem_total
            assert m.disk_used >= 32 * mib and m.disk_total >= m.disk_used

            assert sbx.pause() is True
            assert pause_dir.exists()
            assert sbx.kill() is True
            assert not pause_dir.exists()  # killed while paused: its checkpoint goes
            assert accounted(e2e_server) == bytes_under(snapshots_dir) > 32 * mib
            assert held(e2e_server, "snapshots") == {snap.snapshot_id}  # it outlives its source
        finally:
            assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        assert not snap_dir.exists()
        assert held(e2e_server, "snapshots") == set()
        assert accounted(e2e_server) == 0
    finally:
        with contextlib.suppress(Exception):
            sbx.kill()
    assert_clean(e2e_server, baseline)


# -- 6. a restore that fails --------------------------------------------------------------


def test_a_failed_restore_leaves_the_sandbox_paused_and_resumable(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox, SandboxException, SandboxQuery, SandboxState

    sbx = Sandbox.create(timeout=120, metadata={"restore": "fails once"})
    try:
        sbx.files.write("/home/user/note.txt", "still here")
        proc = sbx.commands.run("sleep 3600", background=True, timeout=0)
        assert sbx.pause() is True
        checkpoint = bytes_under(e2e_server.data_dir / "paused" / sbx.sandbox_id)

        # Something already occupies the sandbox's directory on the node: the restore
        # refuses to run over it, and must keep the checkpoint.
        squatter = e2e_server.data_dir / "sandboxes" / sbx.sandbox_id
        squatter.mkdir()
        try:
            with pytest.raises(SandboxException) as failed:
                Sandbox.connect(sbx.sandbox_id)
            assert "already exists" in str(failed.value)
        finally:
            shutil.rmtree(squatter, ignore_errors=True)
        # The failed attempt left nothing behind: a paused sandbox has no process, mount,
        # cgroup, or loop device (on the copy of its disk a restore makes).
        assert e2e_server.proc is not None
        leaks = wait_until_clean(e2e_server.data_dir, e2e_server.proc.pid, baseline, 20, IGNORE_FDS)
        assert leaks == [], "\n".join(leaks)
        assert loop_devices(e2e_server) == set()

        assert sbx.get_info().state == SandboxState.PAUSED
        query = SandboxQuery(metadata={"restore": "fails once"})
        assert [(s.sandbox_id, s.state) for s in Sandbox.list(query=query).next_items()] == [
            (sbx.sandbox_id, SandboxState.PAUSED)
        ]
        assert bytes_under(e2e_server.data_dir / "paused" / sbx.sandbox_id) == checkpoint
        assert sbx.is_running() is False

        sbx.connect()
        assert sbx.files.read("/home/user/note.txt") == "still here"
        assert proc.pid in {p.pid for p in sbx.commands.list()}
        assert held(e2e_server, "paused") == set()
    finally:
        with contextlib.suppress(Exception):
            sbx.kill()
    assert_clean(e2e_server, baseline)


# -- 7. a checkpoint that fails -------------------------------------------------------------

# Inotify watches on files of the template layer (overlayfs) are what CRIU cannot dump
# (runtime/checkpoint.py, "Limits"): a process holding some makes every memory pause fail.
WATCHER = """python3 -c "
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
for name in sorted(os.listdir('/usr/bin'))[:50]:
    libc.inotify_add_watch(fd, ('/usr/bin/' + name).encode(), 2)
open('/tmp/watching', 'w').close()
time.sleep(3600)
\""""


def test_a_failed_checkpoint_leaves_the_sandbox_running(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox, SandboxException, SandboxState

    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/user/note.txt", "before the pause")
        watcher = sbx.commands.run(WATCHER, background=True, timeout=0)
        assert wait_for(lambda: sbx.files.exists("/tmp/watching"), timeout=30)

        with pytest.raises(SandboxException) as failed:
            sbx.pause()
        assert "keeps running" in str(failed.value)
        assert sbx.get_info().state == SandboxState.RUNNING
        assert sbx.is_running() is True
        assert held(e2e_server, "paused") == set() and accounted(e2e_server) == 0
        # It serves as before: files, commands, and the process that made the pause fail.
        assert sbx.files.read("/home/user/note.txt") == "before the pause"
        sbx.files.write("/home/user/note.txt", "after it")
        assert sbx.commands.run("cat /home/user/note.txt").stdout == "after it"
        assert watcher.pid in {p.pid for p in sbx.commands.list()}

        # Without the watcher it pauses and resumes.
        assert sbx.commands.kill(watcher.pid) is True
        assert sbx.pause() is True
        sbx.connect()
        assert sbx.files.read("/home/user/note.txt") == "after it"
    finally:
        with contextlib.suppress(Exception):
            sbx.kill()
    assert_clean(e2e_server, baseline)
