"""What memory things cost: cgroup v1 memory counters, the host's MemAvailable, a
process's RSS."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

MEMORY_CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def mem_available() -> int:
    """The host's MemAvailable, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def settled_mem_available(rounds: int = 5, pause: float = 0.2) -> int:
    """MemAvailable after letting deferred frees (RCU, workqueues) run; median of a few reads."""
    values = []
    for _ in range(rounds):
        time.sleep(pause)
        values.append(mem_available())
    values.sort()
    return values[len(values) // 2]


def rss_of(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class CgroupMemory:
    """One memory cgroup's charge: ``usage`` (memory.usage_in_bytes, includes kernel
    memory such as page tables and slab) and ``rss``/``cache`` from memory.stat."""

    usage: int
    rss: int
    cache: int
    kmem: int


def cgroup_memory(cgroup_path: str) -> CgroupMemory:
    """Memory charged to the v1 memory cgroup ``cgroup_path`` (e.g. ``/shoal/node/id``)."""
    d = MEMORY_CGROUP_ROOT / cgroup_path.lstrip("/")
    stat: dict[str, int] = {}
    for line in (d / "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        stat[key] = int(value)
    kmem_file = d / "memory.kmem.usage_in_bytes"
    kmem = int(kmem_file.read_text()) if kmem_file.exists() else 0
    return CgroupMemory(
        usage=int((d / "memory.usage_in_bytes").read_text()),
        rss=stat.get("total_rss", stat.get("rss", 0)),
        cache=stat.get("total_cache", stat.get("cache", 0)),
        kmem=kmem,
    )


@dataclass(frozen=True)
class MemoryCost:
    """What ``count`` idle containers cost, in bytes each."""

    count: int
    cgroup_usage_each: float
    cgroup_rss_cache_each: float
    cgroup_kmem_each: float
    host_each: float = 0.0
    """From the host's MemAvailable: see :func:`host_delta`."""
    host_drift: float = 0.0
    """MemAvailable after everything was removed minus before it was made, in bytes: how
    much the rest of the machine moved meanwhile (the host figure's noise)."""


def cgroup_cost(cgroup_paths: list[str]) -> MemoryCost:
    totals = [cgroup_memory(p) for p in cgroup_paths]
    n = len(cgroup_paths)
    return MemoryCost(
        count=n,
        cgroup_usage_each=sum(t.usage for t in totals) / n,
        cgroup_rss_cache_each=sum(t.rss + t.cache for t in totals) / n,
        cgroup_kmem_each=sum(t.kmem for t in totals) / n,
    )


def host_delta(before: int, during: int, after: int) -> float:
    """MemAvailable taken by what existed only ``during``: the drop from the mean of the
    readings before it was made and after it was removed, which cancels a linear drift
    of the rest of the machine (other work running, caches growing) over the measurement."""
    return (before + after) / 2 - during
