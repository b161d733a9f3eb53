"""The node's metrics sampler with fake targets, readings and clocks: the cpu arithmetic, the
bounded ring, time-range filtering, and sandboxes coming and going."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from shoal.agent.metrics import (
    MetricsSampler,
    Sample,
    SampleRing,
    Target,
    Usage,
    cpu_used_pct,
    in_range,
)

MIB = 1024 * 1024
T0 = 1_700_000_000.0


class Clocks:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class FakeHost:
    """Targets and their readings, changed by the test between passes."""

    def __init__(self) -> None:
        self.targets: dict[str, Target] = {}
        self.usage: dict[str, Usage] = {}
        self.reads: list[str] = []
        self.on_read: dict[str, object] = {}

    def add(self, sandbox_id: str, *, cpus: int = 2, started_at: float = T0, **usage: int) -> None:
        self.targets[sandbox_id] = Target(sandbox_id, cpus, 512 * MIB, 1024 * MIB, started_at)
        self.usage[sandbox_id] = Usage(
            cpu_usage_ns=usage.get("cpu_ns", 0),
            mem_used=usage.get("mem_used", 10 * MIB),
            mem_cache=usage.get("mem_cache", MIB),
            mem_limit=usage.get("mem_limit", 512 * MIB),
            disk_used=usage.get("disk_used", 5 * MIB),
            disk_total=usage.get("disk_total", 1000 * MIB),
        )

    def set(self, sandbox_id: str, **changes: int) -> None:
        self.usage[sandbox_id] = replace(self.usage[sandbox_id], **changes)

    def list(self) -> list[Target]:
        return list(self.targets.values())

    def read(self, target: Target) -> Usage:
        self.reads.append(target.sandbox_id)
        action = self.on_read.get(target.sandbox_id)
        if isinstance(action, BaseException):
            raise action
        if callable(action):
            action()
        return self.usage[target.sandbox_id]


def make(host: FakeHost, clocks: Clocks, **kw: float) -> MetricsSampler:
    return MetricsSampler(
        host.list,
        host.read,
        interval=kw.get("interval", 5.0),
        retention=kw.get("retention", 3600.0),
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


def sample_at(ts: float, **fields: float) -> Sample:
    base = dict(
        cpu_count=2,
        cpu_used_pct=1.5,
        mem_used=1,
        mem_total=2,
        mem_cache=3,
        disk_used=4,
        disk_total=5,
    )
    base.update(fields)
    return Sample(timestamp=ts, **base)  # type: ignore[arg-type]


# --- arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used_ns", "elapsed", "cpus", "pct"),
    [
        (1_000_000_000, 2.0, 2, 25.0),  # one CPU-second in two seconds on two CPUs
        (5_000_000_000, 5.0, 1, 100.0),  # a spinning process on its only CPU
        (10_000_000_000, 5.0, 2, 100.0),  # both CPUs busy
        (0, 5.0, 2, 0.0),
        (1, 3.0, 4, 0.0),  # rounds to two decimals
        (1_234_567_890, 10.0, 1, 12.35),
        (30_000_000_000, 5.0, 2, 100.0),  # clamped (counter noise cannot exceed the cap)
        (-5, 5.0, 2, 0.0),  # a counter that went backwards reads as idle
        (1_000, 0.0, 2, 0.0),  # no elapsed time: no rate
    ],
)
def test_cpu_used_pct(used_ns: int, elapsed: float, cpus: int, pct: float) -> None:
    assert cpu_used_pct(used_ns, elapsed, cpus) == pct


def test_range_compares_whole_seconds_inclusively() -> None:
    assert in_range(100.9, 100, 100)
    assert in_range(100.0, 100, None)
    assert not in_range(99.999, 100, None)
    assert not in_range(101.0, None, 100)
    assert in_range(5.0, None, None)


# --- the ring ------------------------------------------------------------------------


def test_ring_round_trips_every_field() -> None:
    ring = SampleRing(4)
    s = Sample(T0 + 0.25, 8, 37.25, 300 * MIB, 4096 * MIB, 7 * MIB, 2**40, 2**41)
    ring.append(s)
    assert list(ring) == [s]
    assert ring.latest() == s


def test_ring_keeps_the_newest_capacity_samples_oldest_first() -> None:
    ring = SampleRing(3)
    assert ring.latest() is None and list(ring) == []
    for i in range(7):
        ring.append(sample_at(T0 + i))
        assert len(ring) == min(i + 1, 3)
        assert ring.latest() == sample_at(T0 + i)
    assert [s.timestamp for s in ring] == [T0 + 4, T0 + 5, T0 + 6]
    assert [s.timestamp for s in ring.between(int(T0) + 5, None)] == [T0 + 5, T0 + 6]
    assert [s.timestamp for s in ring.between(None, int(T0) + 4)] == [T0 + 4]
    assert ring.between(int(T0) + 7, None) == []


def test_ring_memory_is_bounded() -> None:
    ring = SampleRing(720)
    for i in range(5000):
        ring.append(sample_at(T0 + i))
    assert len(ring) == 720
    assert len(ring._buf) == 720 * SampleRing.size
    assert SampleRing.size == 56


# --- the sampler ---------------------------------------------------------------------


async def test_first_sample_measures_cpu_against_the_sandbox_start() -> None:
    host, clocks = FakeHost(), Clocks()
    # Started 4 s ago on 2 CPUs and used 2 CPU-seconds: 25 %.
    host.add("a", started_at=T0 - 4, cpu_ns=2_000_000_000)
    sampler = make(host, clocks)
    await sampler.sample_once()
    [s] = sampler.samples("a")
    assert s == Sample(
        timestamp=T0,
        cpu_count=2,
        cpu_used_pct=25.0,
        mem_used=10 * MIB,
        mem_total=512 * MIB,
        mem_cache=MIB,
        disk_used=5 * MIB,
        disk_total=1000 * MIB,
    )


async def test_later_samples_measure_cpu_since_the_previous_reading() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a", cpus=2, cpu_ns=0)
    sampler = make(host, clocks)
    await sampler.sample_once()
    clocks.advance(5)
    host.set("a", cpu_usage_ns=5_000_000_000, mem_used=210 * MIB)  # one CPU busy for 5 s
    await sampler.sample_once()
    clocks.advance(5)
    host.set("a", cpu_usage_ns=5_000_000_000)  # idle since
    await sampler.sample_once()
    samples = sampler.samples("a")
    assert [s.cpu_used_pct for s in samples] == [0.0, 50.0, 0.0]
    assert [s.mem_used for s in samples] == [10 * MIB, 210 * MIB, 210 * MIB]
    assert [s.timestamp for s in samples] == [T0, T0 + 5, T0 + 10]
    assert sampler.latest("a") == samples[-1]


async def test_limits_fall_back_to_the_sandbox_when_the_host_reports_none() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    host.set("a", mem_limit=None, disk_total=None)  # type: ignore[arg-type]
    sampler = make(host, clocks)
    await sampler.sample_once()
    [s] = sampler.samples("a")
    assert (s.mem_total, s.disk_total) == (512 * MIB, 1024 * MIB)


async def test_time_range_filters_by_second() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    sampler = make(host, clocks)
    clocks.wall += 0.5  # samples at T0+0.5, T0+5.5, ... T0+20.5
    for _ in range(5):
        await sampler.sample_once()
        clocks.advance(5)
    t = int(T0)
    assert len(sampler.samples("a")) == 5
    assert [s.timestamp for s in sampler.samples("a", t + 5, t + 15)] == [
        T0 + 5.5,
        T0 + 10.5,
        T0 + 15.5,
    ]
    assert len(sampler.samples("a", start=t + 20)) == 1
    assert len(sampler.samples("a", end=t)) == 1
    assert sampler.samples("a", t - 3600, t - 1800) == []  # a past range
    assert sampler.samples("a", t + 3600, None) == []  # a future one


async def test_retention_bounds_the_samples_kept() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    sampler = make(host, clocks, interval=1, retention=3)
    for _ in range(10):
        await sampler.sample_once()
        clocks.advance(1)
    assert [s.timestamp - T0 for s in sampler.samples("a")] == [7, 8, 9]


async def test_unknown_sandbox_has_no_samples() -> None:
    sampler = make(FakeHost(), Clocks())
    await sampler.sample_once()
    assert sampler.samples("nope") == []
    assert sampler.latest("nope") is None


async def test_gone_sandboxes_are_freed_and_new_ones_picked_up() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    sampler = make(host, clocks)
    await sampler.sample_once()
    host.add("b")
    clocks.advance(5)
    await sampler.sample_once()
    assert (len(sampler.samples("a")), len(sampler.samples("b"))) == (2, 1)

    del host.targets["a"]
    sampler.forget("a")  # SandboxManager.on_gone
    assert sampler.samples("a") == []
    # A sandbox that disappeared without the event is dropped on the next pass too.
    del host.targets["b"]
    clocks.advance(5)
    await sampler.sample_once()
    assert sampler._tracks == {}


async def test_a_sandbox_that_goes_during_a_pass_is_not_brought_back() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    host.add("b")
    sampler = make(host, clocks)
    # "a" is torn down while the worker thread reads "b".
    host.on_read["b"] = lambda: (host.targets.pop("a"), sampler.forget("a"))
    await sampler.sample_once()
    assert sampler.samples("a") == []
    assert len(sampler.samples("b")) == 1


async def test_an_unreadable_sandbox_is_skipped_not_fatal() -> None:
    host, clocks = FakeHost(), Clocks()
    host.add("a")
    host.add("b")
    host.on_read["a"] = FileNotFoundError("cgroup removed")
    sampler = make(host, clocks)
    await sampler.sample_once()
    assert sampler.samples("a") == []
    assert len(sampler.samples("b")) == 1
    assert host.reads == ["a", "b"]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make(FakeHost(), Clocks(), interval=0)
    assert make(FakeHost(), Clocks(), interval=5, retention=3600).capacity == 720
    assert make(FakeHost(), Clocks(), interval=7, retention=60).capacity == math.ceil(60 / 7)
