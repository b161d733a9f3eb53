"""Sandbox metrics on a node: each running sandbox's cpu, memory and disk, sampled every
``interval`` seconds into a bounded ring per sandbox, read back by time range.

    >>> sampler = MetricsSampler(targets, HostUsageReader(runtime), interval=5, retention=3600)
    >>> task = asyncio.create_task(sampler.run())      # owned by the NodeAgent
    >>> sampler.samples("sbx1", start=1700000000, end=1700000060)
    >>> sampler.forget("sbx1")                         # SandboxManager.on_gone

Pipeline of one pass: ``targets()`` lists the running sandboxes (on the event loop), a
worker thread reads each one's usage (cgroup files and ``statvfs``: file I/O that a node
with thousands of sandboxes should not do on the loop), then the loop turns readings into
samples. ``cpu_used_pct`` is the CPU time used between two readings over the wall time
between them and the sandbox's ``cpu_count`` CPUs (what ``top`` shows in a VM of that
size, 0-100); a sandbox's first reading is measured against its start.

Memory per sandbox: a sample is 56 bytes packed, so an hour at 5 s is ~40 KiB, allocated as
samples arrive. Rings live only in memory: a restarted agent starts them empty, and a
sandbox's ring goes with the sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.runtime.cgroup_stats import CgroupReader, disk_usage, unified_cgroup_id

if TYPE_CHECKING:
    from shoal.agent.manager import SandboxManager
    from shoal.runtime.container import ContainerRuntime

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A sandbox to sample, with the limits it runs under."""

    sandbox_id: str
    cpu_count: int
    memory_bytes: int
    disk_bytes: int
    started_at: float
    """Unix time the sandbox started (the first cpu reading is measured against it)."""


@dataclass(frozen=True)
class Usage:
    """One raw reading of a sandbox."""

    cpu_usage_ns: int
    mem_used: int
    mem_cache: int
    mem_limit: int | None
    disk_used: int
    disk_total: int | None


@dataclass(frozen=True)
class Sample:
    timestamp: float
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


def cpu_used_pct(used_ns: int, elapsed_s: float, cpu_count: int) -> float:
    """CPU time ``used_ns`` over ``elapsed_s`` of wall time on ``cpu_count`` CPUs, in
    percent (0-100, two decimals).

    >>> cpu_used_pct(1_000_000_000, 2.0, 2)   # one CPU-second in two seconds on two CPUs
    25.0
    """
    if elapsed_s <= 0 or cpu_count <= 0:
        return 0.0
    pct = used_ns / (elapsed_s * 1e9 * cpu_count) * 100
    return round(min(max(pct, 0.0), 100.0), 2)


def in_range(timestamp: float, start: int | None, end: int | None) -> bool:
    """Whether a sample belongs to ``[start, end]`` (Unix seconds, both inclusive, None =
    open): compared by its whole second, the resolution clients ask in."""
    second = math.floor(timestamp)
    return (start is None or second >= start) and (end is None or second <= end)


class SampleRing:
    """The last ``capacity`` samples of one sandbox, oldest first, packed."""

    _FORMAT = struct.Struct("<dfIqqqqq")
    size = _FORMAT.size

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._buf = bytearray()
        self._next = 0
        """Index the next sample goes to once the ring is full (the oldest one)."""

    def __len__(self) -> int:
        return len(self._buf) // self.size

    def append(self, s: Sample) -> None:
        packed = self._FORMAT.pack(
            s.timestamp,
            s.cpu_used_pct,
            s.cpu_count,
            s.mem_used,
            s.mem_total,
            s.mem_cache,
            s.disk_used,
            s.disk_total,
        )
        if len(self) < self.capacity:
            self._buf += packed
            return
        offset = self._next * self.size
        self._buf[offset : offset + self.size] = packed
        self._next = (self._next + 1) % self.capacity

    def _at(self, index: int) -> Sample:
        ts, pct, cpus, used, total, cache, dused, dtotal = self._FORMAT.unpack_from(
            self._buf, index * self.size
        )
        # float32 keeps about 7 digits; the percentage is rounded to 2 decimals anyway.
        return Sample(ts, cpus, round(pct, 2), used, total, cache, dused, dtotal)

    def __iter__(self) -> Iterator[Sample]:
        n = len(self)
        first = self._next if n == self.capacity else 0
        for i in range(n):
            yield self._at((first + i) % n)

    def latest(self) -> Sample | None:
        n = len(self)
        if n == 0:
            return None
        return self._at((self._next - 1) % n if n == self.capacity else n - 1)

    def between(self, start: int | None, end: int | None) -> list[Sample]:
        return [s for s in self if in_range(s.timestamp, start, end)]


@dataclass
class _Track:
    ring: SampleRing
    cpu_ns: int
    mono: float


class MetricsSampler:
    """Samples every target each ``interval`` seconds; keeps ``retention`` seconds each.

    ``targets`` runs on the event loop; ``read`` runs on a worker thread and raises
    ``OSError`` for a sandbox that is gone (its sample is skipped). ``clock`` gives
    sample timestamps, ``monotonic`` the intervals cpu use is divided by.
    """

    def __init__(
        self,
        targets: Callable[[], list[Target]],
        read: Callable[[Target], Usage],
        *,
        interval: float = 5.0,
        retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("metrics interval must be positive")
        self._targets = targets
        self._read = read
        self.interval = interval
        self.capacity = max(1, math.ceil(retention / interval))
        self._clock = clock
        self._monotonic = monotonic
        self._tracks: dict[str, _Track] = {}

    # -- reading ------------------------------------------------------------------------

    def samples(
        self, sandbox_id: str, start: int | None = None, end: int | None = None
    ) -> list[Sample]:
        """The samples of ``sandbox_id`` whose whole second is in ``[start, end]``, oldest
        first; empty for a sandbox not sampled yet (or not on this node)."""
        track = self._tracks.get(sandbox_id)
        return [] if track is None else track.ring.between(start, end)

    def latest(self, sandbox_id: str) -> Sample | None:
        track = self._tracks.get(sandbox_id)
        return None if track is None else track.ring.latest()

    def forget(self, sandbox_id: str) -> None:
        """Drop a sandbox's samples (it is gone)."""
        self._tracks.pop(sandbox_id, None)

    # -- sampling -----------------------------------------------------------------------

    async def run(self) -> None:
        """Sample until cancelled: a pass at once, then one every ``interval`` seconds."""
        while True:
            began = self._monotonic()
            try:
                await self.sample_once()
            except Exception:  # a bad pass must not end sampling for good
                log.exception("metrics pass failed")
            await asyncio.sleep(max(0.0, self.interval - (self._monotonic() - began)))

    async def sample_once(self) -> None:
        targets = self._targets()
        if targets:
            readings = await asyncio.to_thread(self._read_all, targets)
        else:
            readings = []
        # Sandboxes that went while their usage was read are not brought back.
        alive = {t.sandbox_id for t in self._targets()}
        for target, usage, wall, mono in readings:
            if target.sandbox_id in alive:
                self._record(target, usage, wall, mono)
        for sandbox_id in set(self._tracks) - alive:
            self.forget(sandbox_id)

    def _read_all(self, targets: list[Target]) -> list[tuple[Target, Usage, float, float]]:
        out = []
        for target in targets:
            try:
                usage = self._read(target)
            except (OSError, ValueError, KeyError) as exc:
                # Gone mid-read (teardown removes the cgroup) or not readable at all.
                log.debug("no metrics for %s: %s", target.sandbox_id, exc)
                continue
            out.append((target, usage, self._clock(), self._monotonic()))
        return out

    def _record(self, target: Target, usage: Usage, wall: float, mono: float) -> None:
        track = self._tracks.get(target.sandbox_id)
        if track is None:
            pct = cpu_used_pct(usage.cpu_usage_ns, wall - target.started_at, target.cpu_count)
            track = _Track(SampleRing(self.capacity), usage.cpu_usage_ns, mono)
            self._tracks[target.sandbox_id] = track
        else:
            pct = cpu_used_pct(
                usage.cpu_usage_ns - track.cpu_ns, mono - track.mono, target.cpu_count
            )
            track.cpu_ns, track.mono = usage.cpu_usage_ns, mono
        mem_total = usage.mem_limit if usage.mem_limit is not None else target.memory_bytes
        track.ring.append(
            Sample(
                timestamp=wall,
                cpu_count=target.cpu_count,
                cpu_used_pct=pct,
                mem_used=usage.mem_used,
                mem_total=mem_total,
                mem_cache=usage.mem_cache,
                disk_used=usage.disk_used,
                disk_total=usage.disk_total if usage.disk_total is not None else target.disk_bytes,
            )
        )


class HostUsageReader:
    """Reads a sandbox's usage on this host: its cgroup (``runtime.cgroup_path``) and the
    ext4 disk mounted at ``<sandbox dir>/disk``."""

    def __init__(self, runtime: ContainerRuntime, cgroups: CgroupReader | None = None) -> None:
        self.runtime = runtime
        self.cgroups = cgroups or CgroupReader()

    def __call__(self, target: Target) -> Usage:
        sandbox_id = target.sandbox_id
        sandbox_dir: Path = self.runtime.dir_of(sandbox_id)
        unified = None
        if self.cgroups.uses_unified:
            unified = self.runtime.cgroup_path(unified_cgroup_id(sandbox_dir, sandbox_id))
        cg = self.cgroups.read(self.runtime.cgroup_path(sandbox_id), unified)
        disk = disk_usage(sandbox_dir / "disk")
        return Usage(
            cpu_usage_ns=cg.cpu_usage_ns,
            mem_used=cg.memory_used,
            mem_cache=cg.memory_cache,
            mem_limit=cg.memory_limit,
            disk_used=disk.used if disk is not None else 0,
            disk_total=disk.total if disk is not None else None,
        )


def manager_targets(manager: SandboxManager) -> Callable[[], list[Target]]:
    """The running sandboxes of ``manager`` as sampling targets."""

    def targets() -> list[Target]:
        return [
            Target(
                sandbox_id=s.sandbox_id,
                cpu_count=s.cpu_count,
                memory_bytes=s.memory_mb * MIB,
                disk_bytes=s.disk_mb * MIB,
                started_at=s.started_at.timestamp(),
            )
            for s in manager.running()
        ]

    return targets


__all__ = [
    "HostUsageReader",
    "MetricsSampler",
    "Sample",
    "SampleRing",
    "Target",
    "Usage",
    "cpu_used_pct",
    "in_range",
    "manager_targets",
]
