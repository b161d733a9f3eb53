"""``get_metrics`` through the official Python SDK (sync and async): samples of the sandbox's
own cgroup and disk, every few seconds, filtered by the time range the SDK sends.

The node samples every ``SHOAL_METRICS_INTERVAL`` seconds (5 by default), so the tests poll
for a sample taken after what they did, as E2B's own tests poll for the first one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2b import AsyncSandbox, NotFoundException, Sandbox, SandboxMetrics, SandboxNotFoundException

MIB = 1024 * 1024
WAIT = 30.0
"""How long a sample may take to appear (a hang bound, not a timing assertion)."""


def metrics_after(
    sbx: Sandbox, after: datetime, ok: Callable[[SandboxMetrics], bool] = lambda m: True
) -> SandboxMetrics:
    """The first sample taken after ``after`` that ``ok`` accepts; fails after WAIT seconds
    with what was seen."""
    deadline = time.monotonic() + WAIT
    seen: list[SandboxMetrics] = []
    while time.monotonic() < deadline:
        seen = sbx.get_metrics()
        for m in seen:
            if m.timestamp > after and ok(m):
                return m
        time.sleep(0.5)
    raise AssertionError(f"no matching sample after {after} in {WAIT}s; saw {seen[-3:]}")


def wait_for_file(sbx: Sandbox, path: str) -> None:
    deadline = time.monotonic() + WAIT
    while sbx.commands.run(f"test -e {path} && echo y || echo n").stdout.strip() != "y":
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_metrics_appear_with_the_sandbox_limits(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    info = sbx.get_info()
    first = metrics_after(sbx, info.started_at - timedelta(seconds=1))
    assert first.cpu_count == info.cpu_count
    assert first.mem_total == info.memory_mb * MIB
    assert 0.0 <= first.cpu_used_pct <= 100.0
    # The sandbox's own ext4 disk (1024 MB by default), less the filesystem's metadata.
    assert 900 * MIB < first.disk_total <= 1024 * MIB
    assert 0 < first.disk_used < 64 * MIB
    assert 0 < first.mem_used < 256 * MIB
    assert 0 <= first.mem_cache < first.mem_total
    assert first.timestamp <= datetime.now(UTC)
    for m in sbx.get_metrics():
        assert isinstance(m.cpu_used_pct, float)
        assert all(isinstance(v, int) for v in (m.mem_used, m.mem_cache, m.disk_used))


def test_mem_used_grows_while_a_process_holds_memory(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    before = metrics_after(sbx, sbx.get_info().started_at - timedelta(seconds=1))
    sbx.commands.run(
        'python3 -c \'import time; b = b"x" * (200 * 1024 * 1024); '
        'open("/tmp/held", "w").close(); time.sleep(60)\'',
        background=True,
    )
    wait_for_file(sbx, "/tmp/held")
    held = metrics_after(sbx, datetime.now(UTC))
    assert held.mem_used >= before.mem_used + 190 * MIB, (before, held)
    assert held.mem_total == before.mem_total


def test_disk_used_grows_after_writing_a_file(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    before = metrics_after(sbx, sbx.get_info().started_at - timedelta(seconds=1))
    sbx.commands.run("head -c 64M /dev/urandom > /home/user/big")
    written = metrics_after(sbx, datetime.now(UTC))
    assert written.disk_used >= before.disk_used + 60 * MIB, (before, written)
    assert written.disk_total == before.disk_total
    # Data just written sits in the page cache charged to the sandbox, not in "used".
    assert written.mem_cache >= before.mem_cache + 32 * MIB, (before, written)


def test_cpu_used_pct_shows_a_busy_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    idle = metrics_after(sbx, sbx.get_info().started_at - timedelta(seconds=1))
    sbx.commands.run(
        "for i in 1 2; do timeout 15 sh -c 'while :; do :; done' & done; touch /tmp/spinning; wait",
        background=True,
    )
    wait_for_file(sbx, "/tmp/spinning")
    # Two spinning processes on the sandbox's CPUs; on a loaded machine they get less than
    # all of them, but far more than an idle sandbox's fraction of a percent.
    busy = metrics_after(sbx, datetime.now(UTC), lambda m: m.cpu_used_pct >= 5.0)
    assert busy.cpu_used_pct > idle.cpu_used_pct


def test_time_range_filters_samples(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    first = metrics_after(sbx, sbx.get_info().started_at - timedelta(seconds=1))
    second = metrics_after(sbx, first.timestamp.replace(microsecond=0) + timedelta(seconds=1))
    everything = sbx.get_metrics()
    assert [m.timestamp for m in everything] == sorted(m.timestamp for m in everything)

    # From the second sample's second on: the first one is left out, the second kept.
    start = second.timestamp.replace(microsecond=0)
    later = sbx.get_metrics(start=start, end=datetime.now(UTC) + timedelta(seconds=1))
    assert second.timestamp in [m.timestamp for m in later]
    assert first.timestamp not in [m.timestamp for m in later]
    assert all(math.floor(m.timestamp.timestamp()) >= int(start.timestamp()) for m in later)

    # Up to the first sample's second: the second one is left out.
    end = first.timestamp.replace(microsecond=0)
    earlier = sbx.get_metrics(start=first.timestamp - timedelta(seconds=30), end=end)
    assert first.timestamp in [m.timestamp for m in earlier]
    assert second.timestamp not in [m.timestamp for m in earlier]

    now = datetime.now(UTC)
    assert sbx.get_metrics(start=now - timedelta(hours=2), end=now - timedelta(hours=1)) == []
    by_id = [m.timestamp for m in Sandbox.get_metrics(sbx.sandbox_id)]
    assert by_id[:2] == [first.timestamp, second.timestamp]


def test_unknown_and_killed_sandboxes_raise_not_found(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics("nosuchsandbox0000000")
    sbx = sandbox_factory()
    sbx.kill()
    with pytest.raises(NotFoundException):
        sbx.get_metrics()


def test_bulk_metrics_endpoint(sandbox_factory, shoal_server) -> None:  # type: ignore[no-untyped-def]
    """``GET /sandboxes/metrics`` (used by E2B's CLI and dashboard, not by the SDKs)."""
    a, b = sandbox_factory(), sandbox_factory()
    for sbx in (a, b):
        metrics_after(sbx, sbx.get_info().started_at - timedelta(seconds=1))
    newest = a.get_metrics()[-1]  # before: the bulk answer is at least as new
    with shoal_server.api() as api:
        r = api.get(
            "/sandboxes/metrics", params={"sandbox_ids": f"{a.sandbox_id},{b.sandbox_id},nope"}
        )
    assert r.status_code == 200, r.text
    found = r.json()["sandboxes"]
    assert set(found) == {a.sandbox_id, b.sandbox_id}
    assert found[a.sandbox_id]["timestampUnix"] >= int(newest.timestamp.timestamp())
    assert found[a.sandbox_id]["memTotal"] == newest.mem_total


# --- async ---------------------------------------------------------------------------


async def async_metrics_after(sbx: AsyncSandbox, after: datetime) -> SandboxMetrics:
    deadline = time.monotonic() + WAIT
    seen: list[SandboxMetrics] = []
    while time.monotonic() < deadline:
        seen = await sbx.get_metrics()
        for m in seen:
            if m.timestamp > after:
                return m
        await asyncio.sleep(0.5)
    raise AssertionError(f"no sample after {after} in {WAIT}s; saw {seen[-3:]}")


async def test_async_metrics_range_and_limits(async_sandbox_factory: Any) -> None:
    sbx = await async_sandbox_factory(timeout=120)
    info = await sbx.get_info()
    first = await async_metrics_after(sbx, info.started_at - timedelta(seconds=1))
    assert (first.cpu_count, first.mem_total) == (info.cpu_count, info.memory_mb * MIB)
    assert 0 < first.disk_used < first.disk_total
    second = await async_metrics_after(
        sbx, first.timestamp.replace(microsecond=0) + timedelta(seconds=1)
    )
    later = await sbx.get_metrics(start=second.timestamp.replace(microsecond=0))
    assert second.timestamp in [m.timestamp for m in later]
    assert first.timestamp not in [m.timestamp for m in later]
    now = datetime.now(UTC)
    assert await sbx.get_metrics(start=now - timedelta(hours=2), end=now - timedelta(hours=1)) == []
    assert len(await AsyncSandbox.get_metrics(sbx.sandbox_id)) >= 2


async def test_async_unknown_sandbox_raises_not_found(shoal_server: Any) -> None:
    with pytest.raises(NotFoundException):
        await AsyncSandbox.get_metrics("nosuchsandbox0000000")
