"""Shoal measured the way a user sees it: the official ``e2b`` SDK against a live
``shoal serve`` (a child process started by :mod:`bench.server`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass

from e2b import AsyncSandbox, Sandbox

from bench.memory import MemoryCost, cgroup_cost, host_delta, rss_of, settled_mem_available
from bench.stats import Latency

SANDBOX_TIMEOUT = 120
"""Seconds; should the bench die half way, the server reaps what it left."""


@dataclass(frozen=True)
class CreateToFirstRun:
    total: Latency
    """create → first ``commands.run("true")`` result."""
    create: Latency
    """``Sandbox.create`` alone (the 201)."""
    first_run: Latency
    """The first ``commands.run`` alone."""


def create_to_first_run(runs: int, warmup: int = 3) -> CreateToFirstRun:
    total, create, first = [], [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
        try:
            t1 = time.perf_counter()
            result = sbx.commands.run("true")
            t2 = time.perf_counter()
        finally:
            sbx.kill()
        if result.exit_code != 0:
            raise RuntimeError(f"`true` exited {result.exit_code}")
        if i >= warmup:
            total.append(t2 - t0)
            create.append(t1 - t0)
            first.append(t2 - t1)
    return CreateToFirstRun(Latency.of(total), Latency.of(create), Latency.of(first))


def run_round_trip(runs: int, warmup: int = 10) -> Latency:
    samples = []
    sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            result = sbx.commands.run("true")
            elapsed = time.perf_counter() - t0
            if result.exit_code != 0:
                raise RuntimeError(f"`true` exited {result.exit_code}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        sbx.kill()
    return Latency.of(samples)


@dataclass(frozen=True)
class Burst:
    wall: float
    failures: int
    first_error: str


async def _burst(count: int) -> Burst:
    created: list[AsyncSandbox] = []

    async def one() -> None:
        sbx = await AsyncSandbox.create(timeout=SANDBOX_TIMEOUT)
        created.append(sbx)
        result = await sbx.commands.run("true")
        if result.exit_code != 0:
            raise RuntimeError(f"`true` exited {result.exit_code}")
        await sbx.kill()
        created.remove(sbx)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    wall = time.perf_counter() - t0
    errors = [r for r in results if isinstance(r, BaseException)]
    for sbx in created:  # only those a failure left behind
        with contextlib.suppress(Exception):
            await sbx.kill()
    return Burst(wall, len(errors), repr(errors[0]) if errors else "")


def concurrent_create_run_kill(count: int) -> Burst:
    """``count`` create + ``commands.run("true")`` + kill at once with the async SDK."""
    return asyncio.run(_burst(count))


@dataclass(frozen=True)
class IdleCost:
    memory: MemoryCost
    server_rss_each: float
    create_wall: float


async def _create_idle(count: int, parallel: int) -> list[AsyncSandbox]:
    gate = asyncio.Semaphore(parallel)
    made: list[AsyncSandbox] = []

    async def one() -> None:
        async with gate:
            made.append(await AsyncSandbox.create(timeout=SANDBOX_TIMEOUT))

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await _kill_all(made)
        raise RuntimeError(f"{len(errors)} of {count} idle sandboxes failed: {errors[0]!r}")
    return made


async def _kill_all(sandboxes: list[AsyncSandbox]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(sbx: AsyncSandbox) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await sbx.kill()

    await asyncio.gather(*(one(s) for s in sandboxes))


def idle_memory(count: int, server_pid: int, node_id: str, parallel: int = 8) -> IdleCost:
    """Memory ``count`` idle sandboxes cost: their cgroups, the host, the server's RSS."""
    avail_before = settled_mem_available()
    rss_before = rss_of(server_pid)
    t0 = time.perf_counter()
    made = asyncio.run(_create_idle(count, parallel))
    create_wall = time.perf_counter() - t0
    try:
        avail_during = settled_mem_available()
        rss_after = rss_of(server_pid)
        memory = cgroup_cost([f"/shoal/{node_id}/{s.sandbox_id}" for s in made])
    finally:
        asyncio.run(_kill_all(made))
    avail_after = settled_mem_available()
    host_each = host_delta(avail_before, avail_during, avail_after) / count
    memory = dataclasses.replace(memory, host_each=host_each, host_drift=avail_after - avail_before)
    return IdleCost(memory, (rss_after - rss_before) / count, create_wall)
