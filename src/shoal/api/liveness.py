"""Node liveness: pull a heartbeat from every node that has not pushed one lately.

Stand-alone agents push heartbeats to ``/internal/v1/nodes/{id}/heartbeat``; nodes the
API holds a client for but that do not push (the in-process agent of ``shoal serve``)
are polled here through the same node protocol, then reconciled the same way. A node
that answers neither ages past ``node_dead_after`` and the scheduler stops using it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from shoal.api.reconcile import reconcile
from shoal.api.registry import NodeEntry, NodeRegistry, node_row
from shoal.api.service import Clock
from shoal.errors import ShoalError
from shoal.store.base import Store

log = logging.getLogger(__name__)


class Liveness:
    def __init__(
        self, store: Store, registry: NodeRegistry, clock: Clock, *, interval: float = 2.0
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.interval = interval

    async def poll(self, entry: NodeEntry) -> bool:
        """Pull one node's info and sandboxes; False if it did not answer."""
        if entry.client is None:
            return False
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                info = await entry.client.info()
                sandboxes = await entry.client.list_sandboxes()
        except (ShoalError, TimeoutError) as exc:
            log.debug("node %s did not answer: %s", entry.info.node_id, exc)
            return False
        now = self.clock()
        await self.registry.observe(info, now, pushed=False)
        await self.store.upsert_node(node_row(info, now))
        await reconcile(self.store, self.registry, info.node_id, sandboxes, now)
        return True

    async def tick(self) -> None:
        now = self.clock()
        stale = timedelta(seconds=self.interval)
        due = [
            e for e in self.registry.entries() if e.last_push is None or now - e.last_push >= stale
        ]
        await asyncio.gather(*(self.poll(e) for e in due))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("liveness tick failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()


__all__ = ["Liveness"]
