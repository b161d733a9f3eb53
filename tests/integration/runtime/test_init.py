"""shoal-init and its Python client, end to end: the real C binary, real processes.

Every test runs twice: against init as a plain child of the test (``plain``, the only
mode without root), and as root against init as pid 1 of new pid, network and mount
namespaces (``netns``), reached through ``/proc/<pid>/ns/net`` like the agent does.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import itertools
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import InvalidStateTransition, NotFound, SandboxGone
from shoal.runtime.initbin import ensure_built
from shoal.runtime.initclient import (
    MAX_META,
    InitClient,
    InitTooOld,
    connect_init,
    set_pty_size,
)
from shoal.runtime.netns import connect_tcp_in_netns, connect_unix_in_netns
from shoal.runtime.process import ExitStatus, SpawnError, SpawnRequest

ROOT = os.geteuid() == 0
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
_names = itertools.count()


def req(*argv: str, **kw: object) -> SpawnRequest:
    kw.setdefault("env", ENV)
    kw.setdefault("cwd", "/")
    kw.setdefault("uid", os.geteuid())
    kw.setdefault("gid", os.getegid())
    return SpawnRequest(argv=list(argv), **kw)  # type: ignore[arg-type]


@dataclass
class Sandbox:
    name: str
    netns: str | None
    init_pid: int
    """shoal-init's pid as this test sees it."""
    proc: subprocess.Popen[bytes]

    def children(self) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{self.init_pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
        return out


def _descendants(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        kids = [int(p) for t in tasks for p in (t / "children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _descendants(k)]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="session")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_built(tmp_path_factory.mktemp("initbin"))


@pytest.fixture(params=["plain", "netns"])
def sandbox(request: pytest.FixtureRequest, init_binary: Path) -> Iterator[Sandbox]:
    name = f"shoal-test-{os.getpid()}-{next(_names)}"
    if request.param == "netns":
        if not ROOT:
            pytest.skip("namespaces need root")
        argv = ["unshare", "--pid", "--net", "--mount", "--fork", "--kill-child"]
        argv += ["--mount-proc", str(init_binary), name]
    else:
        argv = [str(init_binary), name]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    init_pid = proc.pid
    while True:
        assert proc.poll() is None, "shoal-init exited at start"
        assert time.monotonic() < deadline, "shoal-init did not start listening"
        if request.param == "netns":
            kids = _descendants(proc.pid)
            init_pid = kids[0] if kids else 0
        if init_pid:
            try:
                if f"@{name}\n" in Path(f"/proc/{init_pid}/net/unix").read_text():
                    break
            except OSError:
                pass
        time.sleep(0.005)
    sb = Sandbox(
        name, f"/proc/{init_pid}/ns/net" if request.param == "netns" else None, init_pid, proc
    )
    yield sb
    # Without a pid namespace the processes would outlive init: kill the whole tree.
    for pid in _descendants(init_pid):
        if request.param == "plain":
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[InitClient]:
    c = await connect_init(sandbox.name, sandbox.netns)
    yield c
    await c.aclose()


async def read_all(fd: int, within: float = 5.0) -> bytes:
    """Read until EOF (or EIO: a pty whose other side is gone)."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            ready = asyncio.Event()
            loop.add_reader(fd, ready.set)
            try:
                await asyncio.wait_for(ready.wait(), within)
            finally:
                loop.remove_reader(fd)
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                break
            raise
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def read_until(fd: int, needle: bytes, within: float = 5.0) -> bytes:
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    buf = b""
    while needle not in buf:
        try:
            buf += os.read(fd, 4096)
        except BlockingIOError:
            ready = asyncio.Event()
            loop.add_reader(fd, ready.set)
            try:
                await asyncio.wait_for(ready.wait(), within)
            finally:
                loop.remove_reader(fd)
    return buf


async def run(client: InitClient, request: SpawnRequest) -> tuple[ExitStatus, bytes, bytes]:
    proc = await client.spawn(request)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await asyncio.gather(read_all(proc.stdout), read_all(proc.stderr))
        return await asyncio.wait_for(proc.wait(), 5), out, err
    finally:
        proc.close_fds()


# ---------------------------------------------------------------- spawning


async def test_output_and_exit_code(client: InitClient) -> None:
    status, out, err = await run(client, req("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert status == ExitStatus(code=3, signal=None)
    assert status.exited
    assert (out, err) == (b"out\n", b"err\n")


async def test_env_cwd_and_path_lookup_from_env(client: InitClient, tmp_path: Path) -> None:
    prog = tmp_path / "hello-shoal"
    prog.write_text('#!/bin/sh\necho "$GREETING from $(pwd)"\n')
    prog.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "GREETING": "hi"}
    status, out, _ = await run(client, req("hello-shoal", env=env, cwd="/tmp"))
    assert status.code == 0
    assert out == b"hi from /tmp\n"


async def test_only_the_requested_environment_is_passed(client: InitClient) -> None:
    _, out, _ = await run(client, req("env"))
    assert sorted(out.decode().splitlines()) == sorted(f"{k}={v}" for k, v in ENV.items())


async def test_large_environment(client: InitClient) -> None:
    env = dict(ENV) | {f"BIG{i}": "x" * 100_000 for i in range(8)}
    status, out, _ = await run(client, req("sh", "-c", "echo ${#BIG0} ${#BIG7}", env=env))
    assert status.code == 0 and out == b"100000 100000\n"


async def test_killed_by_signal(client: InitClient) -> None:
    proc = await client.spawn(req("sleep", "100"))
    proc.close_fds()
    assert await client.signal(proc.pid, signal.SIGTERM, group=False) is True
    assert await asyncio.wait_for(proc.wait(), 5) == ExitStatus(code=None, signal=signal.SIGTERM)
    assert not (await proc.wait()).exited
    # it is gone now: nothing left to signal
    assert await client.signal(proc.pid, signal.SIGTERM) is False


async def test_signal_refuses_pids_init_did_not_start(client: InitClient) -> None:
    assert await client.signal(1, 0) is False
    assert await client.signal(os.getpid(), 0, group=False) is False
    assert await client.signal(os.getpid(), 0, group=True) is False


async def test_stdin_write_and_eof(client: InitClient) -> None:
    proc = await client.spawn(req("cat", stdin=True))
    assert proc.stdin is not None and proc.stdout is not None
    os.write(proc.stdin, b"hello\nworld\n")
    os.close(proc.stdin)
    proc.stdin = None
    assert await read_all(proc.stdout) == b"hello\nworld\n"
    assert (await asyncio.wait_for(proc.wait(), 5)).code == 0
    proc.close_fds()


async def test_without_stdin_the_process_reads_dev_null(client: InitClient) -> None:
    proc = await client.spawn(req("sh", "-c", "cat; readlink /proc/self/fd/0"))
    assert proc.stdin is None
    assert proc.stdout is not None
    assert await read_all(proc.stdout) == b"/dev/null\n"
    assert (await proc.wait()).code == 0
    proc.close_fds()


async def test_spawned_process_leads_a_new_session_and_holds_no_init_fds(
    client: InitClient,
) -> None:
    _, out, _ = await run(client, req("sh", "-c", "ps -o pid=,sid=,pgid= -p $$"))
    pid, sid, pgid = out.split()
    assert pid == sid == pgid
    _, out, _ = await run(client, req("ls", "/proc/self/fd"))
    # 0, 1, 2, and the one ls itself opens to list the directory
    assert sorted(out.split(), key=int) == [b"0", b"1", b"2", b"3"]


async def test_signal_dispositions_and_mask_are_reset(client: InitClient) -> None:
    _, out, _ = await run(client, req("grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"))
    assert out == b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


# ---------------------------------------------------------------- pty


async def test_pty_size_and_resize(client: InitClient) -> None:
    script = 'echo "size $(stty size) cols $(tput cols)"; read x; stty size; exit 4'
    proc = await client.spawn(req("sh", "-c", script, env=ENV | {"TERM": "xterm"}, pty=(91, 27)))
    assert proc.pty is not None and proc.stdin == proc.pty and proc.stdout is None
    out = await read_until(proc.pty, b"\r\n")
    assert out == b"size 27 91 cols 91\r\n"
    set_pty_size(proc.pty, 132, 43)
    os.write(proc.pty, b"\n")
    assert b"43 132" in await read_all(proc.pty)
    assert (await proc.wait()).code == 4
    proc.close_fds()


async def test_pty_is_the_controlling_terminal(client: InitClient) -> None:
    proc = await client.spawn(req("sh", "-c", "tty; ps -o tty= -p $$", pty=(80, 24)))
    assert proc.pty is not None
    lines = (await read_all(proc.pty)).decode().split()
    assert lines[0].startswith("/dev/pts/") and lines[1] == lines[0].removeprefix("/dev/")
    proc.close_fds()


# ---------------------------------------------------------------- failures


async def test_missing_program_is_enoent(client: InitClient) -> None:
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("no-such-program-shoal"))
    assert exc.value.errno == errno.ENOENT
    assert "no-such-program-shoal" in str(exc.value)
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("/nonexistent/bin/prog"))
    assert exc.value.errno == errno.ENOENT
    # nothing was left behind to be listed
    assert await client.list_pids() == []


async def test_non_executable_is_eacces(client: InitClient, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a program\n")
    data.chmod(0o644)
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req(str(data)))
    assert exc.value.errno == errno.EACCES


async def test_bad_cwd_is_enoent(client: InitClient) -> None:
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("true", cwd="/no/such/dir"))
    assert exc.value.errno == errno.ENOENT
    assert "chdir" in str(exc.value) and "/no/such/dir" in str(exc.value)


async def test_invalid_requests_fail_before_reaching_init(client: InitClient) -> None:
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("echo", "a\0b"))
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("true", env={f"V{i}": "x" * 100_000 for i in range(12)}))
    assert exc.value.errno == errno.E2BIG
    # the connection is still fine
    assert (await run(client, req("true")))[0].code == 0


@pytest.mark.skipif(not ROOT, reason="switching users needs root")
async def test_uid_gid_and_groups(client: InitClient) -> None:
    request = req("sh", "-c", "id -u; id -g; id -G", uid=65534, gid=65534, groups=[65534, 100])
    status, out, _ = await run(client, request)
    assert status.code == 0
    assert out.decode().splitlines() == ["65534", "65534", "65534 100"]


async def test_status_of_unknown_pid(client: InitClient) -> None:
    with pytest.raises(NotFound):
        await client.status(2**31 - 2)


# ---------------------------------------------------------------- process trees


async def test_group_signal_kills_the_whole_tree(client: InitClient) -> None:
    # Both sleeps hold stdout: EOF on it means every process of the tree is dead.
    proc = await client.spawn(req("sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"))
    assert proc.stdout is not None
    await read_until(proc.stdout, b"started\n")
    assert await client.signal(proc.pid, signal.SIGKILL, group=True)
    assert (await asyncio.wait_for(proc.wait(), 5)).signal == signal.SIGKILL
    assert await asyncio.wait_for(read_all(proc.stdout), 5) == b""
    proc.close_fds()


async def test_orphans_are_reaped(client: InitClient, sandbox: Sandbox) -> None:
    status, _, _ = await run(client, req("sh", "-c", "sleep 0.3 >/dev/null 2>&1 & exit 0"))
    assert status.code == 0
    # the orphaned sleep is now init's child ...
    orphans = [p for p in sandbox.children() if _state(p) is not None]
    assert len(orphans) == 1
    assert _comm(orphans[0]) == "sleep"
    # ... and once it exits, init reaps it: no zombie stays behind
    deadline = time.monotonic() + 5
    while _state(orphans[0]) is not None:
        assert time.monotonic() < deadline, f"orphan is {_state(orphans[0])}"
        await asyncio.sleep(0.02)
    assert sandbox.children() == []
    # an orphan's exit is nobody's business: not reported as a spawned process
    assert await client.list_pids() == []


async def test_hundred_concurrent_spawns(client: InitClient) -> None:
    async def one(i: int) -> tuple[ExitStatus, bytes, bytes]:
        return await run(client, req("sh", "-c", f"echo {i}; exit {i % 7}"))

    results = await asyncio.gather(*(one(i) for i in range(100)))
    for i, (status, out, _) in enumerate(results):
        assert status.code == i % 7
        assert out == f"{i}\n".encode()


async def test_list_pids(client: InitClient) -> None:
    a = await client.spawn(req("sleep", "100"))
    b = await client.spawn(req("sleep", "100"))
    assert sorted(await client.list_pids()) == sorted([a.pid, b.pid])
    await client.signal(a.pid, signal.SIGKILL)
    await a.wait()
    assert await client.list_pids() == [b.pid]
    await client.signal(b.pid, signal.SIGKILL)
    await b.wait()
    a.close_fds()
    b.close_fds()


# ---------------------------------------------------------------- connections


async def test_reconnect_after_disconnect_sees_status(sandbox: Sandbox) -> None:
    first = await connect_init(sandbox.name, sandbox.netns)
    waiting = await first.spawn(req("sh", "-c", "read x; exit 7", stdin=True))
    quick = await first.spawn(req("sh", "-c", "sleep 0.1; exit 5"))
    await first.aclose()
    await first.aclose()  # idempotent
    with pytest.raises(SandboxGone):
        await waiting.wait()
    with pytest.raises(SandboxGone):
        await first.spawn(req("true"))
    await asyncio.sleep(0.3)  # quick exits while nobody is connected

    second = await connect_init(sandbox.name, sandbox.netns)
    assert await second.list_pids() == [waiting.pid]
    assert await second.status(quick.pid) == ExitStatus(code=5, signal=None)
    assert await second.status(waiting.pid) is None
    adopted = await second.adopt(waiting.pid)
    assert adopted.stdout is None
    assert waiting.stdin is not None
    os.write(waiting.stdin, b"go\n")
    assert await asyncio.wait_for(adopted.wait(), 5) == ExitStatus(code=7, signal=None)
    assert await second.status(waiting.pid) == ExitStatus(code=7, signal=None)
    assert (await second.adopt(quick.pid)).exit_status == ExitStatus(code=5, signal=None)
    waiting.close_fds()
    quick.close_fds()
    await second.aclose()


async def test_init_death_is_sandbox_gone(sandbox: Sandbox) -> None:
    client = await connect_init(sandbox.name, sandbox.netns)
    proc = await client.spawn(req("sleep", "100"))
    proc.close_fds()
    notified: list[InitClient] = []
    client.on_close(notified.append)
    waiter = asyncio.ensure_future(proc.wait())
    sandbox.proc.kill()  # with --kill-child this takes init down too
    if sandbox.init_pid != sandbox.proc.pid:
        os.kill(sandbox.init_pid, signal.SIGKILL)
    with pytest.raises(SandboxGone):
        await asyncio.wait_for(waiter, 5)
    if sandbox.netns is None:  # no pid namespace took the sleep down with init
        os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(client.closed, 5)
    await asyncio.sleep(0)
    assert notified == [client]
    with pytest.raises(SandboxGone):
        await client.spawn(req("true"))
    with pytest.raises(SandboxGone):
        await client.list_pids()
    await client.aclose()
    # the listening socket may be released a moment after the connection
    deadline = time.monotonic() + 5
    while True:
        try:
            extra = await connect_init(sandbox.name, sandbox.netns)
        except (ConnectionRefusedError, FileNotFoundError):
            break
        await extra.aclose()
        assert time.monotonic() < deadline, "init's socket outlived it"
        await asyncio.sleep(0.01)


async def test_cancelled_spawn_does_not_leave_a_process(client: InitClient) -> None:
    task = asyncio.ensure_future(client.spawn(req("sleep", "100")))
    await asyncio.sleep(0)  # the request is on the wire
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while await client.list_pids():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_several_tasks_wait_for_one_process(client: InitClient) -> None:
    proc = await client.spawn(req("sh", "-c", "sleep 0.05; exit 2"))
    proc.close_fds()
    waiters = [asyncio.ensure_future(proc.wait()) for _ in range(3)]
    waiters[0].cancel()
    results = await asyncio.gather(*waiters[1:])
    assert results == [ExitStatus(code=2, signal=None)] * 2


# ---------------------------------------------------------------- hostile peers


async def _raw(sandbox: Sandbox) -> socket.socket:
    return await connect_unix_in_netns(sandbox.netns, sandbox.name, socket.SOCK_SEQPACKET)


async def _closed_by_init(sock: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
            if not data:
                return True
    except ConnectionResetError:
        return True


GARBAGE = [
    b"\x01",  # shorter than a header
    struct.pack("=II", 1, 1) + b"\x00" * 10,  # SPAWN, body too short
    struct.pack("=II", 1, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0),  # no strings
    struct.pack("=II", 1, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0) + b"/\0a\0b\0",
    struct.pack("=II", 1, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 10**9, 1, 0) + b"/\0a\0",
    struct.pack("=II", 1, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 2**31, 0) + b"/\0a\0",
    struct.pack("=II", 1, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0) + b"/\0true",
    struct.pack("=II", 2, 1) + b"\x00" * 8,  # SIGNAL, wrong size
    struct.pack("=II", 3, 1) + b"x",  # LIST with a body
    struct.pack("=II", 4, 1),  # STATUS without body
    b"",  # empty record
    b"\xff" * (1 << 20) + b"!",  # one byte over the limit
    struct.pack("=II", 5, 1) + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0),  # no metalen
    struct.pack("=II", 5, 1)  # SPAWNM whose metadata runs past the record
    + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0)
    + struct.pack("=I", 1000)
    + b"/\0a\0",
    struct.pack("=II", 5, 1)  # the metadata eats the strings
    + struct.pack("=IIIHHIII", 0, 0, 0, 0, 0, 0, 1, 0)
    + struct.pack("=I", 4)
    + b"/\0a\0",
    struct.pack("=II", 6, 1) + b"\x00" * 3,  # ADOPT, wrong size
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_closes_only_that_connection(
    sandbox: Sandbox, client: InitClient, garbage: bytes
) -> None:
    bad = await _raw(sandbox)
    bad.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE: fit the big record
    bad.send(garbage)
    assert await _closed_by_init(bad)
    bad.close()
    assert sandbox.proc.poll() is None
    assert (await run(client, req("echo", "still here")))[1] == b"still here\n"


async def test_fds_sent_to_init_close_the_connection(sandbox: Sandbox, client: InitClient) -> None:
    bad = await _raw(sandbox)
    fd = os.open("/dev/null", os.O_RDONLY)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    bad.sendmsg([struct.pack("=II", 3, 1)], rights)
    os.close(fd)
    assert await _closed_by_init(bad)
    bad.close()
    assert await client.list_pids() == []


async def test_unknown_op_is_an_error_reply(sandbox: Sandbox) -> None:
    sock = await _raw(sandbox)
    sock.send(struct.pack("=II", 77, 9))
    reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 256), 5)
    assert reply[:12] == struct.pack("=IIi", 0x82, 9, errno.ENOSYS)
    sock.close()


async def test_random_garbage_does_not_kill_init(sandbox: Sandbox, client: InitClient) -> None:
    rnd = __import__("random").Random(1234)
    for _ in range(200):
        bad = await _raw(sandbox)
        op = rnd.choice([1, 2, 3, 4, 99, rnd.getrandbits(32)])
        body = rnd.randbytes(rnd.choice([0, 3, 8, 12, 28, 40, 200, 5000]))
        # init may refuse a peer while 64 earlier ones wait to be read: that is fine
        with contextlib.suppress(OSError):
            bad.send(struct.pack("=II", op, rnd.getrandbits(32)) + body)
        bad.close()
    assert sandbox.proc.poll() is None
    assert (await run(client, req("echo", "ok")))[1] == b"ok\n"
    assert await client.list_pids() == []


async def test_client_that_never_reads_is_dropped(sandbox: Sandbox, client: InitClient) -> None:
    flood = await _raw(sandbox)
    flood.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sent < 20_000:
        try:
            flood.send(struct.pack("=II", 3, sent + 1))
            sent += 1
        except BlockingIOError:
            await asyncio.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            break
    assert await _closed_by_init(flood)
    flood.close()
    assert (await run(client, req("echo", "fine")))[1] == b"fine\n"


@pytest.mark.skipif(not ROOT, reason="needs root to act as another user")
async def test_unprivileged_peer_in_the_sandbox_is_refused(sandbox: Sandbox) -> None:
    if sandbox.netns is not None:
        pytest.skip("from outside the pid namespace every peer counts as the host")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("needs a system python3 that another user can run")
    code = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect('\\0{sandbox.name}')\n"
        "try:\n"
        "    s.send(struct.pack('=II', 3, 1))\n"
        "    print('refused' if s.recv(100) == b'' else 'answered')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print('refused')\n"
    )
    peer = await asyncio.create_subprocess_exec(
        python, "-c", code, user=65534, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(peer.communicate(), 10)
    assert out == b"refused\n", err
    # the same request from root (this test) gets its answer
    sock = await _raw(sandbox)
    sock.send(struct.pack("=II", 3, 1))
    reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5)
    assert reply[:12] == struct.pack("=III", 0x84, 1, 0)
    sock.close()


# ---------------------------------------------------------------- namespaces


async def test_loopback_is_up_in_a_new_netns(client: InitClient, sandbox: Sandbox) -> None:
    if sandbox.netns is None:
        pytest.skip("only meaningful in a namespace of its own")
    server = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        "print(s.getsockname()[1], flush=True); c, _ = s.accept(); c.sendall(b'from inside')"
    )
    proc = await client.spawn(req(sys.executable, "-c", server))
    assert proc.stdout is not None
    port = int(await read_until(proc.stdout, b"\n"))
    own_netns = os.readlink("/proc/thread-self/ns/net")
    sock = await connect_tcp_in_netns(sandbox.netns, "127.0.0.1", port)
    assert os.readlink("/proc/thread-self/ns/net") == own_netns  # the loop never moved
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"from inside"
    sock.close()
    assert (await proc.wait()).code == 0
    proc.close_fds()
    # the host's loopback has no such listener: the port lives only in the sandbox
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


# ---------------------------------------------------------------- speed


async def test_spawn_round_trip_is_fast(client: InitClient) -> None:
    times = []
    for _ in range(200):
        start = time.perf_counter()
        proc = await client.spawn(req("/bin/true"))
        await proc.wait()
        times.append(time.perf_counter() - start)
        proc.close_fds()
    median = statistics.median(times)
    print(f"spawn+exec+exit of /bin/true: median {median * 1000:.2f} ms")
    assert median < 0.02


async def test_sandbox_code_cannot_steal_the_agents_exit_events(
    client: InitClient, sandbox: Sandbox
) -> None:
    if sandbox.netns is None:
        pytest.skip("needs init in its own pid namespace to tell host peers apart")
    target = await client.spawn(req("sh", "-c", "read x; exit 9", stdin=True))
    thief = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect('\\0{sandbox.name}')\n"
        f"s.send(struct.pack('=IIiI', 4, 1, {target.pid}, 1))\n"
        "print(struct.unpack('=IIiii', s.recv(100))[2], flush=True)\n"
        "s.recv(100)\n"  # hold the connection until killed
    )
    inside = await client.spawn(req(sys.executable, "-c", thief))
    assert inside.stdout is not None
    assert await read_until(inside.stdout, b"\n") == b"1\n"  # it sees "running" ...
    assert target.stdin is not None
    os.write(target.stdin, b"\n")
    # ... but the exit still comes here
    assert await asyncio.wait_for(target.wait(), 5) == ExitStatus(code=9, signal=None)
    await client.signal(inside.pid, signal.SIGKILL)
    await inside.wait()
    target.close_fds()
    inside.close_fds()


async def test_connect_where_nothing_listens() -> None:
    # the agent retries on these while a new sandbox's init is still starting
    with pytest.raises(ConnectionRefusedError):
        await connect_init(f"shoal-test-nobody-{os.getpid()}")
    with pytest.raises(FileNotFoundError):
        await connect_init("shoal-test-nobody", "/proc/999999999/ns/net")


# ---------------------------------------------------------------- surviving the agent
#
# The node agent holds the only client fds of a process's output; when it restarts they
# close. init keeps copies, so the process neither dies of SIGPIPE nor loses its pty, and
# a new connection takes the process over with ADOPT: new fds, the spawn's metadata, and
# its exit.

TICKER = "i=0; while :; do echo tick $i; echo err $i >&2; i=$((i+1)); sleep 0.01; done"


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _agent_goes_away(client: InitClient, *procs: Any) -> None:
    """What an agent restart does to init's peer: every fd it held closes."""
    for proc in procs:
        proc.close_fds()
    await client.aclose()


async def test_a_process_outlives_its_client_and_is_adopted_with_fds_and_metadata(
    sandbox: Sandbox,
) -> None:
    blob = bytes(range(256)) * 40  # opaque: NULs and all
    first = await connect_init(sandbox.name, sandbox.netns)
    proc = await first.spawn(req("sh", "-c", TICKER), metadata=blob)
    assert proc.stdout is not None
    seen = await read_until(proc.stdout, b"tick 2\n")
    await _agent_goes_away(first, proc)
    # It keeps writing with nobody reading (a pipe holds thousands of ticks): no EPIPE.
    await asyncio.sleep(0.3)

    second = await connect_init(sandbox.name, sandbox.netns)
    assert await second.list_pids() == [proc.pid]
    adopted = await second.adopt_process(proc.pid)
    assert adopted.pid == proc.pid
    assert adopted.metadata == blob
    assert adopted.stdin is None and adopted.pty is None
    assert adopted.stdout is not None and adopted.stderr is not None
    # The output goes on exactly where the first client stopped reading: nothing lost.
    seen += await read_until(adopted.stdout, b"tick 60\n")
    assert seen.startswith(b"".join(b"tick %d\n" % i for i in range(61)))
    assert (await read_until(adopted.stderr, b"err 60\n")).startswith(b"err 0\nerr 1\n")
    # Its exit comes to the new connection, and it was our signal that ended it.
    assert await second.signal(adopted.pid, signal.SIGTERM)
    assert await asyncio.wait_for(adopted.wait(), 5) == ExitStatus(code=None, signal=signal.SIGTERM)
    adopted.close_fds()
    await second.aclose()


async def test_a_pty_process_keeps_its_terminal_and_is_adopted(sandbox: Sandbox) -> None:
    script = 'while read line; do echo "got $line $(stty size)"; done'
    first = await connect_init(sandbox.name, sandbox.netns)
    proc = await first.spawn(req("sh", "-c", script, pty=(80, 24)), metadata=b"a pty")
    assert proc.pty is not None
    os.write(proc.pty, b"one\n")
    await read_until(proc.pty, b"got one 24 80")
    # Without init's copy of the master, closing it would hang the terminal up (SIGHUP).
    await _agent_goes_away(first, proc)

    second = await connect_init(sandbox.name, sandbox.netns)
    adopted = await second.adopt_process(proc.pid)
    assert adopted.metadata == b"a pty"
    assert adopted.pty is not None and adopted.stdin == adopted.pty
    assert adopted.stdout is None and adopted.stderr is None
    set_pty_size(adopted.pty, 100, 30)
    os.write(adopted.pty, b"two\n")
    await read_until(adopted.pty, b"got two 30 100")
    assert await second.signal(adopted.pid, signal.SIGKILL)
    assert (await asyncio.wait_for(adopted.wait(), 5)).signal == signal.SIGKILL
    adopted.close_fds()
    await second.aclose()


async def test_adopting_again_does_not_duplicate_anything(sandbox: Sandbox) -> None:
    first = await connect_init(sandbox.name, sandbox.netns)
    proc = await first.spawn(req("sleep", "100"), metadata=b"m")
    # a process this connection started is already held: the same handle comes back
    assert await first.adopt_process(proc.pid) is proc
    await _agent_goes_away(first, proc)

    second = await connect_init(sandbox.name, sandbox.netns)
    before = _fd_count(os.getpid())
    a, b = await asyncio.gather(second.adopt_process(proc.pid), second.adopt_process(proc.pid))
    again = await second.adopt_process(proc.pid)
    assert a is b is again
    assert _fd_count(os.getpid()) == before + 2  # one stdout and one stderr, once
    assert await second.list_pids() == [proc.pid]
    assert await second.signal(proc.pid, signal.SIGKILL)
    assert (await asyncio.wait_for(a.wait(), 5)).signal == signal.SIGKILL
    a.close_fds()
    assert _fd_count(os.getpid()) == before
    await second.aclose()


async def test_adopt_of_what_is_not_running(client: InitClient) -> None:
    for pid in (1, 2**31 - 2):
        with pytest.raises(NotFound):
            await client.adopt_process(pid)
    done = await client.spawn(req("true"), metadata=b"x")
    await done.wait()
    done.close_fds()
    with pytest.raises(NotFound):
        await client.adopt_process(done.pid)


async def test_a_live_owner_keeps_its_process_unless_the_asker_is_the_agent(
    sandbox: Sandbox,
) -> None:
    owner = await connect_init(sandbox.name, sandbox.netns)
    proc = await owner.spawn(req("sleep", "100"), metadata=b"m")
    other = await connect_init(sandbox.name, sandbox.netns)
    if sandbox.netns is None:
        # Plain mode: both peers are "in the sandbox" (inside init's pid namespace). One
        # may not take a process from another that is still connected ...
        with pytest.raises(InvalidStateTransition):
            await other.adopt_process(proc.pid)
        # ... but may once that one is gone.
        await _agent_goes_away(owner, proc)
        taken = await other.adopt_process(proc.pid)
    else:
        # Peers outside the pid namespace are the agent: a new agent takes over at once,
        # and the exit goes to it, not to the old connection.
        taken = await other.adopt_process(proc.pid)
    assert taken.metadata == b"m"
    assert await other.signal(proc.pid, signal.SIGKILL)
    assert (await asyncio.wait_for(taken.wait(), 5)).signal == signal.SIGKILL
    if sandbox.netns is not None:
        assert proc.exit_status is None
        await _agent_goes_away(owner, proc)
    taken.close_fds()
    await other.aclose()


async def test_sandbox_code_cannot_adopt_the_agents_processes(sandbox: Sandbox) -> None:
    if sandbox.netns is None:
        pytest.skip("needs init in its own pid namespace to tell host peers apart")
    agent = await connect_init(sandbox.name, sandbox.netns)
    target = await agent.spawn(req("sleep", "1000"), metadata=b"the agent's")
    helper = await connect_init(sandbox.name, sandbox.netns)
    await _agent_goes_away(agent, target)  # even while the agent is away
    thief = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect('\\0{sandbox.name}')\n"
        f"s.send(struct.pack('=IIi', 6, 1, {target.pid}))\n"
        "adopt = s.recv(70000)\n"
        f"s.send(struct.pack('=IIiI', 4, 2, {target.pid}, 1))\n"
        "status = s.recv(100)\n"
        "state = struct.unpack('=IIiii', status)[2]\n"
        "print(*struct.unpack_from('=IIi', adopt), state, flush=True)\n"
        "s.recv(100)\n"  # hold the connection until killed
    )
    inside = await helper.spawn(req(sys.executable, "-c", thief))
    assert inside.stdout is not None
    # ADOPT: ERR EPERM; STATUS sees it running (but takes nothing)
    line = await read_until(inside.stdout, b"\n")
    assert line == f"{0x82} 1 {errno.EPERM} 1\n".encode()
    # the agent, back, takes it over and gets its exit
    back = await connect_init(sandbox.name, sandbox.netns)
    adopted = await back.adopt_process(target.pid)
    assert adopted.metadata == b"the agent's"
    assert await back.signal(target.pid, signal.SIGKILL)
    assert (await asyncio.wait_for(adopted.wait(), 5)).signal == signal.SIGKILL
    await helper.signal(inside.pid, signal.SIGKILL)
    await inside.wait()
    for p in (adopted, inside):
        p.close_fds()
    await back.aclose()
    await helper.aclose()


async def test_stdin_pipe_is_not_kept_and_reaches_eof(sandbox: Sandbox) -> None:
    """Documented loss: init keeps no stdin write end (CloseStdin must deliver EOF), so a
    non-pty process's stdin ends with the connection that held it."""
    first = await connect_init(sandbox.name, sandbox.netns)
    proc = await first.spawn(req("sh", "-c", "cat; exit 5", stdin=True), metadata=b"m")
    await _agent_goes_away(first, proc)
    second = await connect_init(sandbox.name, sandbox.netns)
    deadline = time.monotonic() + 5
    while (status := await second.status(proc.pid)) is None:
        assert time.monotonic() < deadline, "cat never saw end of file"
        await asyncio.sleep(0.01)
    assert status == ExitStatus(code=5, signal=None)
    await second.aclose()


async def test_init_closes_its_copies_when_processes_end(
    sandbox: Sandbox, client: InitClient
) -> None:
    await client.list_pids()  # init has accepted this connection
    baseline = _fd_count(sandbox.init_pid)
    procs = [
        await client.spawn(req("sleep", "100", pty=(80, 24) if i % 2 else None), metadata=b"m")
        for i in range(10)
    ]
    await client.list_pids()  # init closes what it sent right after sending: a round trip
    fds = os.listdir(f"/proc/{sandbox.init_pid}/fd")
    targets = [os.readlink(f"/proc/{sandbox.init_pid}/fd/{fd}") for fd in fds]
    assert len(fds) == baseline + 15, " ".join(sorted(targets))  # 5 pty masters, 5 stdout, 5 stderr
    for proc in procs:
        await client.signal(proc.pid, signal.SIGKILL)
        await proc.wait()
        proc.close_fds()
    await client.list_pids()  # init frees a process right after sending its EXIT
    assert _fd_count(sandbox.init_pid) == baseline


async def test_metadata_limits(sandbox: Sandbox, client: InitClient) -> None:
    big = b"\xab" * MAX_META
    proc = await client.spawn(req("sleep", "100"), metadata=big)
    with pytest.raises(SpawnError) as exc:
        await client.spawn(req("true"), metadata=big + b"!")
    assert exc.value.errno == errno.E2BIG
    # init itself refuses a blob over its limit, with an error (not a dropped connection)
    sock = await _raw(sandbox)
    sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)
    body = struct.pack("=IIIHHIII", os.geteuid(), os.getegid(), 0, 0, 0, 0, 1, 0)
    body += struct.pack("=I", MAX_META + 1) + b"m" * (MAX_META + 1) + b"/\0true\0"
    sock.send(struct.pack("=II", 5, 7) + body)
    reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 256), 5)
    assert reply == struct.pack("=IIi", 0x82, 7, errno.E2BIG) + b"metadata"
    sock.close()
    # the largest blob comes back whole on another connection
    await client.aclose()
    other = await connect_init(sandbox.name, sandbox.netns)
    adopted = await other.adopt_process(proc.pid)
    assert adopted.metadata == big
    await other.signal(proc.pid, signal.SIGKILL)
    await adopted.wait()
    for p in (proc, adopted):
        p.close_fds()
    await other.aclose()


async def test_a_client_of_an_older_init_spawns_without_metadata() -> None:
    """Sandboxes started by an earlier Shoal keep their init: it answers ENOSYS to SPAWNM
    and ADOPT. Spawning still works (without the blob); adopting says why it cannot."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = InitClient(ours)
    loop = asyncio.get_running_loop()
    ops: list[int] = []
    theirs.setblocking(False)

    async def old_init() -> None:
        while data := await loop.sock_recv(theirs, 1 << 20):
            op, rid = struct.unpack_from("=II", data)
            ops.append(op)
            if op == 1:
                r1, w1 = os.pipe()
                r2, w2 = os.pipe()
                rights = array.array("i", [r1, r2]).tobytes()
                theirs.sendmsg(
                    [struct.pack("=IIiI", 0x83, rid, 4242 + len(ops), 2)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)],
                )
                for fd in (r1, w1, r2, w2):
                    os.close(fd)
            else:
                theirs.send(struct.pack("=IIi", 0x82, rid, errno.ENOSYS) + b"op")

    server = asyncio.ensure_future(old_init())
    first = await client.spawn(req("true"), metadata=b"kept nowhere")
    second = await client.spawn(req("true"), metadata=b"kept nowhere")
    assert ops == [5, 1, 1]  # asked once, then remembered
    assert first.metadata == b"" and first.stdout is not None
    with pytest.raises(InitTooOld):
        await client.adopt_process(7)
    for p in (first, second):
        p.close_fds()
    await client.aclose()
    theirs.close()
    server.cancel()
    with contextlib.suppress(BaseException):
        await server
