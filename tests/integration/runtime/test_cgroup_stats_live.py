"""The metrics reader against a real container: its cgroup's cpu time, memory and limit,
and its own disk, read the way the node's sampler reads them; nothing once it is gone."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.server import scratch_dir

from shoal.agent.metrics import HostUsageReader, Target
from shoal.runtime.cgroup_stats import CgroupReader
from shoal.runtime.container import ContainerLimits, ContainerRuntime
from shoal.runtime.initbin import ensure_built
from shoal.template.store import TemplateStore

pytestmark = pytest.mark.root

MIB = 1024 * 1024
LIMITS = ContainerLimits(cpu_count=1, memory_mb=192, disk_mb=64)


def write_blob(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture
async def runtime() -> AsyncIterator[ContainerRuntime]:
    data = scratch_dir("cgstats")
    rt = ContainerRuntime(data, "nodecg" + secrets.token_hex(4), ensure_built(data / "bin"), 100000)
    yield rt
    for c in await rt.list_containers():
        await rt.destroy(c.id)
    for d in rt.list_dirs():
        await rt.destroy(d)
    await rt.release_node()


async def test_reads_a_running_container_and_fails_once_it_is_gone(
    runtime: ContainerRuntime,
) -> None:
    rootfs = TemplateStore(Path("/var/lib/shoal/templates")).resolve("base").rootfs
    sandbox_id = "cg" + secrets.token_hex(6)
    container = await runtime.start(sandbox_id, rootfs, LIMITS, sandbox_id)
    read = HostUsageReader(runtime, CgroupReader())
    target = Target(sandbox_id, 1, 192 * MIB, 64 * MIB, datetime.now(UTC).timestamp())
    try:
        usage = read(target)
        assert usage.cpu_usage_ns > 0  # crun and init ran in it
        assert usage.mem_limit == LIMITS.memory_mb * MIB
        assert 0 < usage.mem_used < 32 * MIB  # an idle init
        assert usage.disk_total is not None
        assert 48 * MIB < usage.disk_total <= 64 * MIB  # its own ext4, not the host's disk
        assert usage.disk_used < 8 * MIB

        # Written into the sandbox's writable layer (as envd's file writes are): its disk.
        write_blob(runtime.dir_of(sandbox_id) / "disk" / "upper" / "blob", 16 * MIB)
        grown = read(target)
        assert grown.disk_used >= usage.disk_used + 15 * MIB
        assert grown.disk_total == usage.disk_total
        assert grown.cpu_usage_ns >= usage.cpu_usage_ns
    finally:
        container.close()
        await runtime.destroy(sandbox_id)
    with pytest.raises(OSError):
        read(target)
