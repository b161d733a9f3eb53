"""A warm pool: containers laid out and ``crun create``d ahead of time, per shape.

A shape is (template rootfs, cpu, memory, disk): everything fixed when a container is
created. A create that finds a warm container of its shape claims it
(``ContainerRuntime.claim``: rename to the sandbox id, set hostname, let init exec) instead
of laying out and running a new one; one that finds none takes the cold path. A shape gets
a pool the first time it is asked for; one background task keeps every known shape at
``size`` containers, one container at a time, a little after the last take so it does not
compete with the sandbox just handed out.

Pool containers are not sandboxes: they have no ``sandbox.json``, so a restarted agent
removes them as orphans; :meth:`WarmPool.close` removes them at shut-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from pathlib import Path

from shoal.runtime.container import ContainerLimits, ContainerRuntime, WarmContainer

log = logging.getLogger(__name__)

REFILL_DELAY = 0.05
"""Seconds between a take and the refill it triggers (the new sandbox's first commands
usually arrive in that window)."""
RETRY_DELAY = 1.0
MAX_SHAPES = 8
"""Shapes kept warm at once; a new shape beyond that evicts the least recently asked for."""

Shape = tuple[Path, ContainerLimits]


class WarmPool:
    def __init__(self, runtime: ContainerRuntime, size: int) -> None:
        self.runtime = runtime
        self.size = size
        self._ready: dict[Shape, deque[WarmContainer]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._closed = False
        self._evicting: set[asyncio.Task[None]] = set()

    def take(self, template_rootfs: Path, limits: ContainerLimits) -> WarmContainer | None:
        """A warm container of this shape, or None (the caller takes the cold path)."""
        if self.size <= 0 or self._closed:
            return None
        shape = (template_rootfs, limits)
        ready = self._ready.pop(shape, None)
        if ready is None:
            ready = deque()
            while len(self._ready) >= MAX_SHAPES:
                self._evict(next(iter(self._ready)))
        self._ready[shape] = ready  # most recently asked for last
        warm = ready.popleft() if ready else None
        self._kick()
        return warm

    def _evict(self, shape: Shape) -> None:
        ready = self._ready.pop(shape)
        task = asyncio.get_running_loop().create_task(self._destroy_all(ready))
        self._evicting.add(task)
        task.add_done_callback(self._evicting.discard)

    async def _destroy_all(self, ready: deque[WarmContainer]) -> None:
        while ready:
            warm = ready.popleft()
            try:
                await self.runtime.destroy(warm.container_id)
            except Exception:
                log.exception("could not remove warm container %s", warm.container_id)

    def count(self, template_rootfs: Path, limits: ContainerLimits) -> int:
        return len(self._ready.get((template_rootfs, limits), ()))

    async def wait_full(self) -> None:
        """Until every known shape holds ``size`` warm containers (tests, benchmarks)."""
        while not self._full():
            self._kick()
            self._idle.clear()
            await self._idle.wait()

    def _full(self) -> bool:
        return self._closed or all(len(q) >= self.size for q in self._ready.values())

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refill_loop())

    async def _refill_loop(self) -> None:
        while True:
            if self._full():
                self._idle.set()
                await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(REFILL_DELAY)
            for (rootfs, limits), ready in list(self._ready.items()):
                if len(ready) >= self.size or self._closed:
                    continue
                try:
                    warm = await self.runtime.create_warm(rootfs, limits)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("could not create a warm container")
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if self._ready.get((rootfs, limits)) is not ready:  # evicted meanwhile
                    await self.runtime.destroy(warm.container_id)
                    continue
                ready.append(warm)
                self._wake.set()  # one at a time; come back for the rest

    async def close(self) -> None:
        """Stop refilling and remove every warm container."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._idle.set()
        for ready in self._ready.values():
            await self._destroy_all(ready)
        if self._evicting:
            await asyncio.gather(*self._evicting, return_exceptions=True)
