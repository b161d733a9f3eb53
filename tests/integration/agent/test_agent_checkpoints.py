"""A node agent's pause, resume and snapshots through the node protocol (``/node/v1``),
against real sandboxes: what the control plane relies on when it pauses, resumes and copies
sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.server import scratch_dir

from shoal.agent.app import AgentApp
from shoal.agent.node import NodeAgent
from shoal.agent.sandbox import LocalSandbox
from shoal.client.node import NodeClient
from shoal.config import Settings
from shoal.errors import AlreadyExists, InvalidStateTransition, NotFound
from shoal.runtime.process import SpawnRequest
from shoal.wire.node import CreateSandboxRequest, ResumeRequest, SnapshotRequest

pytestmark = pytest.mark.root

TEMPLATES = Path("/var/lib/shoal/templates")
LOOP = (
    "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done) "
    ">/dev/null 2>&1 & echo $! > /tmp/loop.pid"
)


@contextlib.asynccontextmanager
async def running_node(name: str) -> AsyncIterator[tuple[NodeAgent, NodeClient]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, crun, CRIU)")
    settings = Settings.from_env(
        {},
        data_dir=scratch_dir(name),
        template_dir=TEMPLATES,
        node_id="nodeck" + secrets.token_hex(3),
        warm_pool=0,
        primed_pool=0,
    )
    agent = NodeAgent(settings, address="inproc://")
    await agent.start()
    client = NodeClient.for_app(AgentApp(agent))
    try:
        yield agent, client
    finally:
        await client.aclose()
        await agent.manager.kill_all()
        for d in (agent.manager.paused, agent.manager.snapshots):
            for held in d.all():
                d.remove(held.checkpoint_id)
        await agent.runtime.release_node()


@pytest.fixture
async def node() -> AsyncIterator[tuple[NodeAgent, NodeClient]]:
    async with running_node("agent-ckpt") as n:
        yield n


async def sh(sbx: LocalSandbox, script: str) -> str:
    """Run ``script`` as root in the sandbox; its stdout."""
    proc = await sbx.spawner.spawn(
        SpawnRequest(["/bin/bash", "-c", script], {"PATH": "/usr/bin:/bin"}, "/", 0, 0)
    )
    assert proc.stdout is not None
    chunks = []
    while chunk := await asyncio.to_thread(os.read, proc.stdout, 65536):
        chunks.append(chunk)
    os.close(proc.stdout)
    await proc.wait()
    return b"".join(chunks).decode()


async def create(client: NodeClient, **kwargs: object) -> str:
    sid = "ck" + secrets.token_hex(8)
    await client.create_sandbox(
        CreateSandboxRequest(
            sandbox_id=sid, template_id="base", disk_mb=256, access_token="tok",
            hostname=sid, **kwargs,  # type: ignore[arg-type]
        )
    )
    return sid


async def counter(sbx: LocalSandbox) -> int:
    return int((await sh(sbx, "cat /tmp/count")).strip() or 0)


async def test_pause_with_memory_and_resume(node: tuple[NodeAgent, NodeClient]) -> None:
    agent, client = node
    sid = await create(client)
    sbx = agent.manager.get(sid)
    assert sbx is not None
    boot_id = await sh(sbx, f"echo kept > /tmp/file; {LOOP}; cat /proc/sys/kernel/random/boot_id")
    pid = (await sh(sbx, "cat /tmp/loop.pid")).strip()
    await asyncio.sleep(0.3)
    held = await client.pause_sandbox(sid)
    assert held.memory and held.checkpoint_id == sid and held.size_bytes > 0
    assert agent.manager.get(sid) is None
    assert agent.runtime.list_dirs() == []  # nothing of it runs or is mounted
    with pytest.raises(NotFound):
        await client.pause_sandbox(sid)  # not running here any more
    before = int((agent.manager.paused.path(sid) / "image").exists())
    assert before == 1

    await client.resume_sandbox(sid, ResumeRequest())
    sbx = agent.manager.get(sid)
    assert sbx is not None
    assert sbx.access_token == "tok"
    assert await sh(sbx, "cat /tmp/file") == "kept\n"
    assert await sh(sbx, "cat /proc/sys/kernel/random/boot_id") == boot_id
    assert (await sh(sbx, "cat /tmp/loop.pid")).strip() == pid
    seen = await counter(sbx)
    await asyncio.sleep(0.3)
    assert await counter(sbx) > seen  # the loop started before the pause still runs
    assert sid not in agent.manager.paused
    assert await client.kill_sandbox(sid)
    assert agent.runtime.list_dirs() == []


async def test_pause_without_memory_boots_from_the_disk(
    node: tuple[NodeAgent, NodeClient],
) -> None:
    agent, client = node
    sid = await create(client)
    sbx = agent.manager.get(sid)
    assert sbx is not None
    boot_id = await sh(
        sbx, f"echo kept > /home/user/f; {LOOP}; cat /proc/sys/kernel/random/boot_id"
    )
    held = await client.pause_sandbox(sid, memory=False)
    assert not held.memory
    await client.resume_sandbox(sid, ResumeRequest())
    sbx = agent.manager.get(sid)
    assert sbx is not None
    assert await sh(sbx, "cat /home/user/f") == "kept\n"
    assert await sh(sbx, "cat /proc/sys/kernel/random/boot_id") != boot_id
    assert await sh(sbx, "pgrep -c sleep || true") == "0\n"  # a cold boot: nothing runs
    assert await sh(sbx, "hostname") == f"{sid}\n"


async def test_a_paused_sandbox_is_killed_by_removing_its_checkpoint(
    node: tuple[NodeAgent, NodeClient],
) -> None:
    agent, client = node
    sid = await create(client)
    await client.pause_sandbox(sid)
    assert [c.checkpoint_id for c in agent.manager.checkpoints()] == [sid]
    assert await client.kill_sandbox(sid)
    assert agent.manager.checkpoints() == []
    assert not await client.kill_sandbox(sid)
    with pytest.raises(NotFound):
        await client.resume_sandbox(sid, ResumeRequest())


async def test_snapshot_copies_are_independent_and_the_source_runs_on(
    node: tuple[NodeAgent, NodeClient],
) -> None:
    agent, client = node
    sid = await create(client)
    src = agent.manager.get(sid)
    assert src is not None
    await sh(src, f"echo snap > /tmp/state; {LOOP}")
    await asyncio.sleep(0.2)
    held = await client.snapshot_sandbox(sid, SnapshotRequest(snapshot_id="team_snap:1"))
    assert held.memory and held.sandbox_id == sid
    seen = await counter(src)
    await asyncio.sleep(0.2)
    assert await counter(src) > seen  # the source runs on
    copies = [await create(client, snapshot_id="team_snap:1") for _ in range(2)]
    for cid in copies:
        sbx = agent.manager.get(cid)
        assert sbx is not None and sbx.access_token == "tok"
        assert await sh(sbx, "cat /tmp/state") == "snap\n"
        assert await sh(sbx, "hostname") == f"{cid}\n"
        assert await counter(sbx) > 0
    first, second = (agent.manager.get(c) for c in copies)
    assert first is not None and second is not None
    await sh(first, "echo mine > /tmp/state")
    assert await sh(second, "cat /tmp/state") == "snap\n"
    assert await sh(src, "cat /tmp/state") == "snap\n"
    assert await client.delete_snapshot("team_snap:1")
    assert not await client.delete_snapshot("team_snap:1")
    with pytest.raises(NotFound):
        await create(client, snapshot_id="team_snap:1")


async def test_a_second_pause_while_one_runs_is_refused(
    node: tuple[NodeAgent, NodeClient],
) -> None:
    agent, client = node
    sid = await create(client)
    sbx = agent.manager.get(sid)
    assert sbx is not None
    await sh(sbx, "head -c 64M /dev/urandom > /dev/shm/blob")
    first = asyncio.ensure_future(client.pause_sandbox(sid))
    await asyncio.sleep(0.01)
    with pytest.raises((AlreadyExists, InvalidStateTransition)):  # 409
        await client.pause_sandbox(sid)
    assert (await first).memory
    await client.resume_sandbox(sid, ResumeRequest())
    sbx = agent.manager.get(sid)
    assert sbx is not None
    assert await sh(sbx, "stat -c %s /dev/shm/blob") == f"{64 * 2**20}\n"


async def test_a_paused_sandbox_moves_to_another_node(
    node: tuple[NodeAgent, NodeClient],
) -> None:
    agent, client = node
    sid = await create(client)
    sbx = agent.manager.get(sid)
    assert sbx is not None
    boot_id = await sh(sbx, f"echo moved > /tmp/file; {LOOP}; cat /proc/sys/kernel/random/boot_id")
    await client.pause_sandbox(sid)
    async with running_node("agent-ckpt-b") as (other, other_client):
        assert other.settings.data_dir != agent.settings.data_dir
        moved = await client.move_checkpoint(other_client, "paused", sid)
        assert moved.checkpoint_id == sid and moved.memory
        assert await client.kill_sandbox(sid)  # the original goes once the copy is there
        await other_client.resume_sandbox(sid, ResumeRequest())
        there = other.manager.get(sid)
        assert there is not None
        assert await sh(there, "cat /tmp/file") == "moved\n"
        assert await sh(there, "cat /proc/sys/kernel/random/boot_id") == boot_id
        seen = await counter(there)
        await asyncio.sleep(0.3)
        assert await counter(there) > seen
        assert str(other.settings.data_dir) in str(there.container.rootfs)
        with pytest.raises(NotFound):
            await client.move_checkpoint(other_client, "paused", sid)  # nothing left here


async def test_a_bad_archive_leaves_nothing(node: tuple[NodeAgent, NodeClient]) -> None:
    agent, client = node
    response = await client._http.put(
        "/checkpoints/paused/abc/archive", content=b"not a tar at all" * 100
    )
    assert response.status_code == 400
    assert agent.manager.checkpoints() == []
    assert list(agent.manager.paused.root.iterdir()) == []
