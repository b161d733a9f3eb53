"""The warm pool (runtime/pool.py) against the real runtime: it fills per shape, hands out
created-but-not-started containers, an empty pool means the cold path, a claimed container
runs under the sandbox's id and hostname, and closing the pool leaves nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.server import scratch_dir

from shoal.runtime.container import ContainerLimits, ContainerRuntime
from shoal.runtime.initbin import ensure_built
from shoal.runtime.pool import WarmPool
from shoal.template.store import TemplateStore

pytestmark = pytest.mark.root

TEMPLATES = Path("/var/lib/shoal/templates")
SHAPE = ContainerLimits(cpu_count=1, memory_mb=256, disk_mb=64)


@pytest.fixture
async def runtime() -> AsyncIterator[ContainerRuntime]:
    data = scratch_dir("pool")
    node_id = "nodepool" + secrets.token_hex(4)
    rt = ContainerRuntime(data, node_id, ensure_built(data / "bin"), 100000)
    yield rt
    for c in await rt.list_containers():
        await rt.destroy(c.id)
    for d in rt.list_dirs():
        await rt.destroy(d)
    await rt.release_node()


@pytest.fixture
def rootfs() -> Path:
    return TemplateStore(TEMPLATES).resolve("base").rootfs


def containers(rt: ContainerRuntime) -> dict[str, str]:
    out = subprocess.run(
        ["crun", "--root", str(rt.state_root), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {c["id"]: c["status"] for c in json.loads(out or "[]") or []}


def uts_hostname(pid: int) -> str:
    """The hostname of ``pid``'s UTS namespace, read from the host."""
    return subprocess.run(
        ["nsenter", "--uts", "--target", str(pid), "hostname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def cgroups_named(rt: ContainerRuntime, name: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/shoal/{rt.node_id}/{name}") if p.is_dir()]


async def test_fill_claim_and_close(runtime: ContainerRuntime, rootfs: Path) -> None:
    pool = WarmPool(runtime, 2)
    # A shape the pool has not seen yet: the caller goes the cold way, the pool starts on it.
    assert pool.take((rootfs, SHAPE)) is None
    await pool.wait_full()
    assert pool.count((rootfs, SHAPE)) == 2
    found = containers(runtime)
    assert len(found) == 2 and set(found.values()) == {"created"}, found
    assert all(i.startswith("pool-") for i in found)

    warm = pool.take((rootfs, SHAPE))
    assert warm is not None
    sandbox_id = "sbx" + secrets.token_hex(6)
    container = await runtime.claim(warm, sandbox_id, sandbox_id)
    try:
        assert containers(runtime)[sandbox_id] == "running"
        assert warm.container_id not in containers(runtime)
        assert uts_hostname(container.init_pid) == f"{sandbox_id}\n"
        hosts = (runtime.dir_of(sandbox_id) / "rootfs" / "etc" / "hosts").read_text()
        assert sandbox_id in hosts and warm.container_id not in hosts
        memory = Path(f"/sys/fs/cgroup/memory/shoal/{runtime.node_id}/{sandbox_id}")
        assert int((memory / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024
        assert str(container.init_pid) in (memory / "cgroup.procs").read_text().split()
        assert not runtime.dir_of(warm.container_id).exists()
    finally:
        container.close()
        await runtime.destroy(sandbox_id)
    assert not runtime.dir_of(sandbox_id).exists()
    assert cgroups_named(runtime, sandbox_id) == []
    assert cgroups_named(runtime, warm.container_id) == []

    await pool.close()
    assert containers(runtime) == {}
    assert runtime.list_dirs() == []
    assert await runtime.release_node()


async def test_an_empty_pool_sends_creates_the_cold_way(
    runtime: ContainerRuntime, rootfs: Path
) -> None:
    pool = WarmPool(runtime, 1)
    assert pool.take((rootfs, SHAPE)) is None
    await pool.wait_full()
    first = pool.take((rootfs, SHAPE))
    assert first is not None
    assert pool.take((rootfs, SHAPE)) is None  # refilling has not caught up yet
    await runtime.destroy(first.container_id)
    # Another shape is a pool of its own.
    other = ContainerLimits(cpu_count=1, memory_mb=128, disk_mb=64)
    assert pool.take((rootfs, other)) is None
    await pool.wait_full()
    assert pool.count((rootfs, SHAPE)) == 1 and pool.count((rootfs, other)) == 1
    await pool.close()
    assert containers(runtime) == {}


async def test_a_disabled_pool_creates_nothing(runtime: ContainerRuntime, rootfs: Path) -> None:
    pool = WarmPool(runtime, 0)
    assert pool.take((rootfs, SHAPE)) is None
    await pool.wait_full()
    assert containers(runtime) == {}
    await pool.close()


async def test_a_new_shape_past_the_cap_evicts_the_oldest(
    runtime: ContainerRuntime, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.runtime import pool as pool_module

    monkeypatch.setattr(pool_module, "MAX_SHAPES", 1)
    pool = WarmPool(runtime, 2)
    assert pool.take((rootfs, SHAPE)) is None
    await pool.wait_full()
    old = set(containers(runtime))
    other = ContainerLimits(cpu_count=1, memory_mb=128, disk_mb=64)
    assert pool.take((rootfs, other)) is None
    await pool.wait_full()
    assert pool.count((rootfs, SHAPE)) == 0 and pool.count((rootfs, other)) == 2
    await pool.close()  # also waits for the evicted shape's containers to be removed
    assert containers(runtime) == {} and old
    assert runtime.list_dirs() == []
