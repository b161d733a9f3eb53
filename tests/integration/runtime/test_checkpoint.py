"""Checkpoint and restore of real sandboxes (runtime/checkpoint.py) with CRIU.

A sandbox runs a bash counter loop and a Python process that keeps a random token, a
blob of memory and an established loopback TCP connection, and answers on a loopback
port with what it holds. Across a checkpoint and a restore (into the same runtime, into
another runtime root, or as copies of a snapshot) the same processes, with the same pids
inside, carry on with the same memory; files on the disk and in /dev/shm, the boot id and
the hostname are kept; init answers and spawns; destroying the restored sandbox leaves
nothing behind; and a restore that fails leaves the image as it was.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.server import scratch_dir

from shoal.config import Settings
from shoal.errors import RuntimeFailure, SandboxGone
from shoal.runtime.checkpoint import Checkpointer, CheckpointImage
from shoal.runtime.container import Container, ContainerLimits, ContainerRuntime
from shoal.runtime.initbin import ensure_built
from shoal.runtime.initclient import InitClient, connect_init
from shoal.runtime.netns import connect_tcp_in_netns
from shoal.runtime.process import SpawnRequest
from shoal.template.store import TemplateStore

pytestmark = pytest.mark.root

TEMPLATES = Path("/var/lib/shoal/templates")
SHAPE = ContainerLimits(cpu_count=1, memory_mb=512, disk_mb=64)
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
PORT = 7000

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"

# Holds a token and a blob in memory only, plus an established loopback connection it uses
# on every tick (a broken connection kills the process); answers "token ticks sha256(blob)".
HOLDER = r"""
import hashlib, os, socket, sys, threading, time
token = os.urandom(8).hex()
blob = bytearray(os.urandom(1 << 20)) * int(sys.argv[1])
pair = socket.create_server(("127.0.0.1", 0))
a = socket.create_connection(pair.getsockname())
b, _ = pair.accept()
srv = socket.create_server(("127.0.0.1", PORT))
ticks = 0
def serve():
    while True:
        c, _ = srv.accept()
        c.sendall(f"{token} {ticks} {hashlib.sha256(blob).hexdigest()}\n".encode())
        c.close()
threading.Thread(target=serve, daemon=True).start()
while True:
    a.sendall(b"x")
    if b.recv(1) != b"x":
        sys.exit(3)
    ticks += 1
    time.sleep(0.02)
""".replace("PORT", str(PORT))


def criu_path() -> Path:
    return Settings.from_env().criu_path


def make_runtime(name: str) -> ContainerRuntime:
    data = scratch_dir(name)
    node_id = name + secrets.token_hex(4)
    return ContainerRuntime(data, node_id, ensure_built(data / "bin"), 100000)


async def cleanup(rt: ContainerRuntime) -> None:
    for c in await rt.list_containers():
        await rt.destroy(c.id)
    for d in rt.list_dirs():
        await rt.destroy(d)
    await rt.release_node()
    shutil.rmtree(rt.root.parent, ignore_errors=True)  # checkpoints and disk images too


@pytest.fixture
async def node_a() -> AsyncIterator[ContainerRuntime]:
    rt = make_runtime("ckpta")
    yield rt
    await cleanup(rt)


@pytest.fixture
async def node_b() -> AsyncIterator[ContainerRuntime]:
    rt = make_runtime("ckptb")
    yield rt
    await cleanup(rt)


@pytest.fixture
def rootfs() -> Path:
    return TemplateStore(TEMPLATES).resolve("base").rootfs


async def connect(container: Container) -> InitClient:
    """Connect to the sandbox's init (it binds its socket a moment after it runs)."""
    for _ in range(500):
        try:
            return await connect_init(container.socket_name, container.netns_path)
        except ConnectionRefusedError:
            await asyncio.sleep(0.01)
    raise AssertionError(f"init of {container.sandbox_id} does not answer")


async def sh(client: InitClient, script: str) -> str:
    """Run ``bash -c script`` as root inside and return its stdout (it must succeed)."""
    proc = await client.spawn(
        SpawnRequest(argv=["bash", "-c", script], env=ENV, cwd="/", uid=0, gid=0)
    )
    chunks = []
    assert proc.stdout is not None
    while chunk := await asyncio.to_thread(os.read, proc.stdout, 65536):
        chunks.append(chunk)
    status = await proc.wait()
    proc.close_fds()
    assert status.code == 0, (script, status)
    return b"".join(chunks).decode()


async def start_background(client: InitClient, argv: list[str]) -> int:
    proc = await client.spawn(SpawnRequest(argv=argv, env=ENV, cwd="/", uid=0, gid=0))
    proc.close_fds()
    return proc.pid


async def ask_holder(container: Container) -> tuple[str, int, str]:
    """The holder's token, tick count and memory digest, over its loopback port."""
    for _ in range(500):
        try:
            sock = await connect_tcp_in_netns(container.netns_path, "127.0.0.1", PORT)
            break
        except ConnectionRefusedError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the holder does not listen")
    loop = asyncio.get_running_loop()
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    token, ticks, digest = data.decode().split()
    return token, int(ticks), digest


async def ticks_past(container: Container, ticks: int) -> tuple[str, int, str]:
    """Ask until the holder has ticked past ``ticks`` (it runs on, with its connection)."""
    for _ in range(200):
        answer = await ask_holder(container)
        if answer[1] > ticks:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"the holder stopped at {ticks} ticks")


async def counter(client: InitClient) -> int:
    return int((await sh(client, "cat /tmp/counter")).strip())


async def counter_past(client: InitClient, value: int) -> int:
    for _ in range(200):
        now = await counter(client)
        if now > value:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"the counter loop stopped at {value}")


def leftovers(rt: ContainerRuntime, sandbox_id: str) -> list[str]:
    """Whatever of the sandbox is still on the machine."""
    d = rt.dir_of(sandbox_id)
    found = []
    if d.exists():
        found.append(f"directory {d}")
    if (Path(rt.crun.state_root) / sandbox_id).exists():
        found.append("crun state")
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/shoal/{rt.node_id}/{sandbox_id}")]
    if str(d) in Path("/proc/self/mountinfo").read_text():
        found.append("a mount")
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text()
        except OSError:
            continue
        if backing.startswith(str(d) + "/"):
            found.append(f"{dev.name} on {backing.strip()}")
    return found


def settle(rt: ContainerRuntime, sandbox_id: str) -> list[str]:
    """Leftovers once lazy unmounts and loop autoclear have had a moment."""
    deadline = time.monotonic() + 5
    while (found := leftovers(rt, sandbox_id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def memory_limit(rt: ContainerRuntime, sandbox_id: str) -> int:
    cg = Path("/sys/fs/cgroup")
    v1 = cg / "memory" / "shoal" / rt.node_id / sandbox_id / "memory.limit_in_bytes"
    if v1.exists():
        return int(v1.read_text())
    return int((cg / "shoal" / rt.node_id / sandbox_id / "memory.max").read_text())


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for the host's init to reap it counts)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


async def prepared(rt: ContainerRuntime, rootfs: Path, sandbox_id: str, blob_mib: int = 4):
    """A sandbox with the counter loop, the holder and files on disk and in /dev/shm;
    returns it, a connected client, and what it looks like from inside."""
    container = await rt.start(sandbox_id, rootfs, SHAPE, sandbox_id)
    client = await connect(container)
    await sh(client, "echo on-disk > /root/note && echo in-tmpfs > /dev/shm/note")
    await start_background(client, ["bash", "-c", COUNTER])
    await start_background(client, ["python3", "-c", HOLDER, str(blob_mib)])
    holder = await ticks_past(container, 0)
    inside = {
        "pids": sorted(await client.list_pids()),
        "boot_id": await sh(client, "cat /proc/sys/kernel/random/boot_id"),
        "hostname": await sh(client, "hostname"),
        "counter": await counter(client),
        "holder": holder,
    }
    return container, client, inside


async def check_same_sandbox(container: Container, inside: dict) -> InitClient:  # type: ignore[type-arg]
    """The restored sandbox is the one checkpointed, carrying on; returns a client."""
    client = await connect(container)
    assert sorted(await client.list_pids()) == inside["pids"]
    token, _, digest = await ticks_past(container, inside["holder"][1])
    assert (token, digest) == (inside["holder"][0], inside["holder"][2])
    await counter_past(client, inside["counter"])
    assert await sh(client, "cat /root/note /dev/shm/note") == "on-disk\nin-tmpfs\n"
    assert await sh(client, "cat /proc/sys/kernel/random/boot_id") == inside["boot_id"]
    # init spawns new processes as before
    assert await sh(client, "echo spawned; id -u") == "spawned\n0\n"
    return client


async def test_checkpoint_and_restore_in_place(node_a: ContainerRuntime, rootfs: Path) -> None:
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid)
    old_pid = container.init_pid
    cp = Checkpointer(node_a, criu_path())

    # The agent's connection is open during the checkpoint; it sees the sandbox go.
    image = await cp.checkpoint(container, node_a.root.parent / "checkpoints" / sid)
    with pytest.raises(SandboxGone):
        await client.list_pids()
    await client.aclose()
    assert gone(old_pid)
    assert settle(node_a, sid) == []
    assert (image.path / "disk.img").exists() and image.sandbox_id == sid

    restored = await cp.restore(image.path)
    client = await check_same_sandbox(restored, inside)
    assert await sh(client, "hostname") == inside["hostname"]
    assert memory_limit(node_a, sid) == SHAPE.memory_mb * 1024 * 1024
    # The image stays restorable (it was not consumed).
    assert CheckpointImage.load(image.path).sandbox_id == sid

    # The rest of the runtime manages it like any other container.
    assert [c.id for c in await node_a.list_containers()] == [sid]
    adopted = await node_a.adopt(sid, restored.socket_name)
    assert adopted is not None and adopted.init_pid == restored.init_pid
    adopted.close()
    await client.aclose()
    restored.close()
    await node_a.destroy(sid)
    assert gone(restored.init_pid)
    assert settle(node_a, sid) == []


async def test_restore_in_another_runtime_root(
    node_a: ContainerRuntime, node_b: ContainerRuntime, rootfs: Path
) -> None:
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid, blob_mib=100)
    image = await Checkpointer(node_a, criu_path()).checkpoint(
        container, node_a.root.parent / "checkpoints" / sid
    )
    await client.aclose()
    assert settle(node_a, sid) == []

    new_id = "sbx" + secrets.token_hex(4)
    restored = await Checkpointer(node_b, criu_path()).restore(image.path, new_id, consume=True)
    assert restored.rootfs == node_b.dir_of(new_id) / "rootfs"
    client = await check_same_sandbox(restored, inside)
    assert await sh(client, "hostname") == inside["hostname"]  # kept unless asked
    assert memory_limit(node_b, new_id) == SHAPE.memory_mb * 1024 * 1024
    assert not image.path.exists()  # consumed
    await client.aclose()
    restored.close()
    await node_b.destroy(new_id)
    assert settle(node_b, new_id) == []


async def test_snapshot_keeps_the_source_running_and_copies_are_independent(
    node_a: ContainerRuntime, node_b: ContainerRuntime, rootfs: Path
) -> None:
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid)
    image = await Checkpointer(node_a, criu_path()).checkpoint(
        container, node_a.root.parent / "snapshots" / sid, leave_running=True
    )
    # The source runs on, its agent connection still answering.
    await counter_past(client, inside["counter"])
    await ticks_past(container, inside["holder"][1])
    await sh(client, "echo after-snapshot > /root/later")

    cp_b = Checkpointer(node_b, criu_path())
    copies = []
    for _ in range(2):
        copy_id = "sbx" + secrets.token_hex(4)
        copies.append((copy_id, await cp_b.restore(image.path, copy_id, hostname=copy_id)))
    clients = []
    for copy_id, copy in copies:
        c = await check_same_sandbox(copy, inside)
        assert await sh(c, "hostname") == copy_id + "\n"
        assert copy_id in await sh(c, "cat /etc/hosts")
        assert await sh(c, "ls /root") == "note\n"  # the source's later file is not there
        clients.append(c)
    await sh(clients[0], "echo mine > /root/own")
    assert await sh(clients[1], "ls /root") == "note\n"
    assert await sh(client, "ls /root") == "later\nnote\n"

    for c in [*clients, client]:
        await c.aclose()
    for copy_id, copy in copies:
        copy.close()
        await node_b.destroy(copy_id)
        assert settle(node_b, copy_id) == []
    container.close()
    await node_a.destroy(sid)
    assert settle(node_a, sid) == []


async def test_a_failed_checkpoint_leaves_the_sandbox_running(
    node_a: ContainerRuntime, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid)
    cp = Checkpointer(node_a, criu_path())
    make_args = cp._dump_args
    # A dump CRIU refuses after Shoal has frozen the sandbox for it.
    monkeypatch.setattr(cp, "_dump_args", lambda *a: [*make_args(*a), "--no-such-option"])
    target = node_a.root.parent / "checkpoints" / sid
    with pytest.raises(RuntimeFailure, match="keeps running"):
        await cp.checkpoint(container, target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    # Thawed and untouched: the same processes carry on, init answers.
    assert sorted(await client.list_pids()) == inside["pids"]
    await counter_past(client, inside["counter"])
    await ticks_past(container, inside["holder"][1])
    await client.aclose()
    container.close()
    await node_a.destroy(sid)
    assert settle(node_a, sid) == []


async def test_a_failed_restore_leaves_the_image_intact(
    node_a: ContainerRuntime, node_b: ContainerRuntime, rootfs: Path
) -> None:
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid)
    image = await Checkpointer(node_a, criu_path()).checkpoint(
        container, node_a.root.parent / "checkpoints" / sid
    )
    await client.aclose()
    files = sorted(p.name for p in image.path.iterdir())
    disk_size = (image.path / "disk.img").stat().st_size

    # A node whose template layer is not the one the processes were running from: the
    # programs they map are missing and CRIU fails part way.
    wrong = node_b.root.parent / "empty-template"
    wrong.mkdir()
    cp_b = Checkpointer(node_b, criu_path())
    new_id = "sbx" + secrets.token_hex(4)
    with pytest.raises(RuntimeFailure, match="checkpoint is kept"):
        await cp_b.restore(image.path, new_id, template_rootfs=wrong, consume=True)
    assert settle(node_b, new_id) == []
    assert await node_b.list_containers() == []
    assert sorted(p.name for p in image.path.iterdir()) == files
    assert (image.path / "disk.img").stat().st_size == disk_size

    # ... and it can be retried.
    restored = await cp_b.restore(image.path, new_id, consume=True)
    client = await check_same_sandbox(restored, inside)
    await client.aclose()
    restored.close()
    await node_b.destroy(new_id)
    assert settle(node_b, new_id) == []


async def test_checkpoint_of_a_restored_sandbox(node_a: ContainerRuntime, rootfs: Path) -> None:
    """Pause, resume, pause again: a restored sandbox checkpoints like a started one."""
    sid = "sbx" + secrets.token_hex(4)
    container, client, inside = await prepared(node_a, rootfs, sid)
    await client.aclose()
    cp = Checkpointer(node_a, criu_path())
    for round_ in range(2):
        image = await cp.checkpoint(container, node_a.root.parent / f"round{round_}" / sid)
        assert settle(node_a, sid) == []
        container = await cp.restore(image.path, consume=True)
        client = await check_same_sandbox(container, inside)
        inside["counter"] = await counter(client)
        inside["holder"] = await ask_holder(container)
        await client.aclose()
    container.close()
    await node_a.destroy(sid)
    assert settle(node_a, sid) == []
