"""Pools of things made ahead of time, per shape, and the runtime's warm pool of containers.

:class:`Pool` is the machinery: a pool per key ("shape"), created the first time a key is
asked for; one background task keeps every known key at ``size`` items, one item at a time,
a little after the last take so it does not compete with what was just handed out. A take
that finds none returns None and the caller makes one the slow way.

:class:`WarmPool` keeps containers laid out and ``crun create``d per shape (template rootfs,
cpu, memory, disk: everything fixed when a container is created). A create that finds one
claims it (``ContainerRuntime.claim``: rename to the sandbox id, set hostname, let init exec)
instead of laying out and running a new one. The node agent keeps a second pool of
sandboxes whose template start command already answers (``shoal.agent.primed``).

Pool items are not sandboxes: they have no ``sandbox.json``, so a restarted agent removes
them as orphans; :meth:`Pool.close` removes them at shut-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from shoal.runtime.container import ContainerLimits, ContainerRuntime, WarmContainer

log = logging.getLogger(__name__)

REFILL_DELAY = 0.05
"""Seconds between a take and the refill it triggers (the new sandbox's first commands
usually arrive in that window)."""
RETRY_DELAY = 1.0
MAX_SHAPES = 8
"""Shapes kept warm at once; a new shape beyond that evicts the least recently asked for."""

Shape = tuple[Path, ContainerLimits]
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Pool(Generic[K, T]):
    """Items made by ``make(key)`` ahead of time, ``size`` per key; ``discard(item)`` removes
    one that is not handed out (eviction, close)."""

    def __init__(
        self,
        size: int,
        make: Callable[[K], Awaitable[T]],
        discard: Callable[[T], Awaitable[object]],
        *,
        refill_delay: float = REFILL_DELAY,
        name: str = "pool",
    ) -> None:
        self.size = size
        self._make = make
        self._discard = discard
        self._refill_delay = refill_delay
        self._name = name
        self._ready: dict[K, deque[T]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._closed = False
        self._evicting: set[asyncio.Task[None]] = set()

    def take(self, shape: K) -> T | None:
        """An item of this shape, or None (the caller makes one the slow way)."""
        if self.size <= 0 or self._closed:
            return None
        ready = self._ready.pop(shape, None)
        if ready is None:
            ready = deque()
            while len(self._ready) >= MAX_SHAPES:
                self._evict(next(iter(self._ready)))
        self._ready[shape] = ready  # most recently asked for last
        item = ready.popleft() if ready else None
        self._kick()
        return item

    def _evict(self, shape: K) -> None:
        ready = self._ready.pop(shape)
        task = asyncio.get_running_loop().create_task(self._destroy_all(ready))
        self._evicting.add(task)
        task.add_done_callback(self._evicting.discard)

    async def _destroy_all(self, ready: deque[T]) -> None:
        while ready:
            item = ready.popleft()
            try:
                await self._discard(item)
            except Exception:
                log.exception("%s: could not remove %r", self._name, item)

    async def discard(self, item: T) -> None:
        """Remove an item that was taken but cannot be used."""
        await self._discard(item)

    def count(self, shape: K) -> int:
        return len(self._ready.get(shape, ()))

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
            await asyncio.sleep(self._refill_delay)
            for shape, ready in list(self._ready.items()):
                if len(ready) >= self.size or self._closed:
                    continue
                try:
                    item = await self._make(shape)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: could not make an item", self._name)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if self._ready.get(shape) is not ready or self._closed:  # evicted meanwhile
                    await self._discard(item)
                    continue
                ready.append(item)
                self._wake.set()  # one at a time; come back for the rest

    async def close(self) -> None:
        """Stop refilling and remove every item."""
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


class WarmPool(Pool[Shape, WarmContainer]):
    """Containers ``crun create``d ahead of time, per (template rootfs, limits)."""

    def __init__(self, runtime: ContainerRuntime, size: int) -> None:
        super().__init__(size, self._create, self._destroy, name="warm pool")
        self.runtime = runtime

    async def _create(self, shape: Shape) -> WarmContainer:
        return await self.runtime.create_warm(*shape)

    async def _destroy(self, warm: WarmContainer) -> None:
        await self.runtime.destroy(warm.container_id)

