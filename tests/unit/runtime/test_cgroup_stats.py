"""Reading a sandbox's cgroup on v1, hybrid and pure v2 layouts, from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.runtime.cgroup_stats import CgroupReader, CgroupUsage, disk_usage, unified_cgroup_id

CG = "/shoal/node1/sbx1"
MIB = 1024 * 1024


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v1_tree(root: Path, *, cpu_dir: str = "cpuacct", limit: int = 512 * MIB) -> None:
    write(root / "memory" / "memory.usage_in_bytes", "0\n")  # the hierarchy's own root
    write(root / cpu_dir / "cpuacct.usage", "0\n")
    d = root / "memory" / CG.lstrip("/")
    write(d / "memory.usage_in_bytes", f"{300 * MIB}\n")
    write(
        d / "memory.stat",
        f"cache {40 * MIB}\nrss {200 * MIB}\ntotal_cache {50 * MIB}\ntotal_rss {250 * MIB}\n",
    )
    write(d / "memory.limit_in_bytes", f"{limit}\n")
    write(root / cpu_dir / CG.lstrip("/") / "cpuacct.usage", "123456789\n")


def v2_tree(unified: Path, name: str = CG, *, memory_max: str = str(512 * MIB)) -> None:
    write(unified / "cgroup.controllers", "cpu memory pids\n")
    d = unified / name.lstrip("/")
    write(d / "cpu.stat", "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    write(d / "memory.current", f"{100 * MIB}\n")
    write(d / "memory.stat", f"anon {70 * MIB}\nfile {30 * MIB}\nshmem 0\n")
    write(d / "memory.max", memory_max + "\n")


def test_v1_reads_cpuacct_and_splits_memory_into_used_and_cache(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    reader = CgroupReader(tmp_path)
    assert not reader.uses_unified
    assert reader.read(CG) == CgroupUsage(
        cpu_usage_ns=123456789,
        memory_used=250 * MIB,
        memory_cache=50 * MIB,  # the hierarchical total, not the cgroup's own "cache"
        memory_limit=512 * MIB,
    )


def test_v1_combined_cpu_cpuacct_mount(tmp_path: Path) -> None:
    v1_tree(tmp_path, cpu_dir="cpu,cpuacct")
    assert CgroupReader(tmp_path).read(CG).cpu_usage_ns == 123456789


def test_v1_unlimited_memory_is_no_limit(tmp_path: Path) -> None:
    v1_tree(tmp_path, limit=9223372036854771712)
    assert CgroupReader(tmp_path).read(CG).memory_limit is None


def test_hybrid_prefers_v1_controllers_over_an_empty_unified_tree(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    write(tmp_path / "unified" / "cgroup.controllers", "\n")
    reader = CgroupReader(tmp_path)
    assert not reader.uses_unified
    assert reader.read(CG, "/shoal/node1/pool-abc").cpu_usage_ns == 123456789


def test_pure_v2(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    reader = CgroupReader(tmp_path)
    assert reader.uses_unified
    assert reader.read(CG) == CgroupUsage(
        cpu_usage_ns=2_500_000,
        memory_used=70 * MIB,
        memory_cache=30 * MIB,
        memory_limit=512 * MIB,
    )


def test_v2_reads_the_unified_path_a_pooled_sandbox_kept(tmp_path: Path) -> None:
    v2_tree(tmp_path, "/shoal/node1/pool-abc", memory_max="max")
    usage = CgroupReader(tmp_path).read(CG, "/shoal/node1/pool-abc")
    assert usage.cpu_usage_ns == 2_500_000
    assert usage.memory_limit is None


def test_hybrid_with_controllers_on_the_unified_mount(tmp_path: Path) -> None:
    v2_tree(tmp_path / "unified")
    reader = CgroupReader(tmp_path)
    assert reader.uses_unified
    assert reader.read(CG).memory_used == 70 * MIB


def test_a_removed_cgroup_raises_oserror(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    with pytest.raises(OSError):
        CgroupReader(tmp_path).read("/shoal/node1/gone")
    with pytest.raises(OSError):
        CgroupReader(tmp_path / "nothing").read(CG)


def test_unified_cgroup_id_follows_pool_id(tmp_path: Path) -> None:
    assert unified_cgroup_id(tmp_path, "sbx1") == "sbx1"
    (tmp_path / "pool_id").write_text("pool-abc\n")
    assert unified_cgroup_id(tmp_path, "sbx1") == "pool-abc"
    (tmp_path / "pool_id").write_text("../../escape\n")
    assert unified_cgroup_id(tmp_path, "sbx1") == "sbx1"


def test_disk_usage_only_of_a_mount_point(tmp_path: Path) -> None:
    assert disk_usage(tmp_path) is None  # a plain directory: never the host's filesystem
    usage = disk_usage(Path("/"))
    assert usage is not None
    assert 0 < usage.used <= usage.total
