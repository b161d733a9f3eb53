"""What a sandbox uses, as the host sees it: cpu time and memory from its cgroup, space
from its own disk.

    >>> cgroups = CgroupReader()
    >>> usage = cgroups.read("/shoal/node1/sbx1")
    >>> usage.cpu_usage_ns, usage.memory_used, usage.memory_cache, usage.memory_limit
    >>> disk_usage(Path("/var/lib/shoal/sandboxes/sbx1/disk"))

Each controller is read from a cgroup v1 hierarchy when the host mounts one for it
(``memory/``, ``cpuacct/`` or ``cpu,cpuacct/`` under the cgroup root: v1 and hybrid hosts)
and otherwise from the unified (v2) hierarchy, which is the cgroup root itself on a pure v2
host or ``unified/`` below it on a hybrid one.

A sandbox claimed from the warm pool keeps its pool name in the unified hierarchy (v2
directories cannot be renamed; see runtime/container.py), so callers pass the unified path
separately; :func:`unified_cgroup_id` says which name that is.

Memory follows what a VM's ``free`` (and so E2B's envd) reports: ``memory_cache`` is the
page cache charged to the sandbox (files it read or wrote, tmpfs included) and
``memory_used`` the rest of what is charged to it, so writing a large file moves
``memory_cache``, allocating moves ``memory_used``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
POOL_ID_FILE = "pool_id"
"""Written into a sandbox's directory by ``ContainerRuntime.claim``: the warm-pool id whose
cgroup v2 directory the sandbox kept."""
UNLIMITED = 1 << 60
"""v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit."""


@dataclass(frozen=True)
class CgroupUsage:
    cpu_usage_ns: int
    """CPU time used by every process of the cgroup since it was created."""
    memory_used: int
    """Bytes charged to the cgroup other than page cache."""
    memory_cache: int
    """Page cache charged to the cgroup, in bytes."""
    memory_limit: int | None
    """The cgroup's memory limit in bytes (None: unlimited)."""


@dataclass(frozen=True)
class DiskUsage:
    used: int
    total: int


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _read_stat(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (``memory.stat``, ``cpu.stat``)."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value:
            try:
                out[key] = int(value)
            except ValueError:
                continue
    return out


class CgroupReader:
    """Reads cgroups under ``root`` (the host's ``/sys/fs/cgroup`` unless a test says)."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self._memory_v1 = self._v1_hierarchy("memory", "memory.usage_in_bytes")
        self._cpu_v1 = self._v1_hierarchy("cpuacct", "cpuacct.usage") or self._v1_hierarchy(
            "cpu,cpuacct", "cpuacct.usage"
        )
        if (root / "cgroup.controllers").exists():
            self._unified: Path | None = root
        elif (root / "unified" / "cgroup.controllers").exists():
            self._unified = root / "unified"
        else:
            self._unified = None

    def _v1_hierarchy(self, name: str, probe: str) -> Path | None:
        path = self.root / name
        return path if (path / probe).exists() else None

    @property
    def uses_unified(self) -> bool:
        """Whether cpu or memory is read from the unified hierarchy (then the unified path,
        which may be a warm-pool name, matters)."""
        return self._memory_v1 is None or self._cpu_v1 is None

    def read(self, cgroup: str, unified: str | None = None) -> CgroupUsage:
        """Usage of ``cgroup`` (a path like ``/shoal/<node>/<sandbox>``); ``unified`` is its
        path in the unified hierarchy when that differs. Raises ``OSError`` when the cgroup
        is gone (or a controller is not there at all)."""
        rel = cgroup.lstrip("/")
        rel2 = (unified or cgroup).lstrip("/")
        if self._cpu_v1 is not None:
            cpu_ns = _read_int(self._cpu_v1 / rel / "cpuacct.usage")
        else:
            cpu_ns = _read_stat(self._unified_dir(rel2) / "cpu.stat")["usage_usec"] * 1000
        if self._memory_v1 is not None:
            d = self._memory_v1 / rel
            charged = _read_int(d / "memory.usage_in_bytes")
            stat = _read_stat(d / "memory.stat")
            cache = stat.get("total_cache", stat.get("cache", 0))
            limit: int | None = _read_int(d / "memory.limit_in_bytes")
        else:
            d = self._unified_dir(rel2)
            charged = _read_int(d / "memory.current")
            cache = _read_stat(d / "memory.stat").get("file", 0)
            raw = (d / "memory.max").read_text().strip()
            limit = None if raw == "max" else int(raw)
        if limit is not None and limit >= UNLIMITED:
            limit = None
        cache = min(max(cache, 0), charged)
        return CgroupUsage(
            cpu_usage_ns=cpu_ns,
            memory_used=charged - cache,
            memory_cache=cache,
            memory_limit=limit,
        )

    def _unified_dir(self, rel: str) -> Path:
        if self._unified is None:
            raise FileNotFoundError(f"no cgroup v2 hierarchy under {self.root}")
        return self._unified / rel


def unified_cgroup_id(sandbox_dir: Path, sandbox_id: str) -> str:
    """The name a sandbox's cgroup has in the unified hierarchy: its own, or the warm-pool
    id it was created under."""
    try:
        pool_id = (sandbox_dir / POOL_ID_FILE).read_text().strip()
    except OSError:
        return sandbox_id
    return pool_id if pool_id and "/" not in pool_id else sandbox_id


def disk_usage(mount_point: Path) -> DiskUsage | None:
    """Space used on the filesystem mounted at ``mount_point`` (a sandbox's own disk);
    None when nothing is mounted there, so the host's filesystem is never reported."""
    if not os.path.ismount(mount_point):
        return None
    st = os.statvfs(mount_point)
    total = st.f_blocks * st.f_frsize
    return DiskUsage(used=total - st.f_bfree * st.f_frsize, total=total)


__all__ = [
    "CGROUP_ROOT",
    "CgroupReader",
    "CgroupUsage",
    "DiskUsage",
    "disk_usage",
    "unified_cgroup_id",
]
