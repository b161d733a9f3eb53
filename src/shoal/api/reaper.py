"""The timeout reaper: sandboxes past ``end_at`` are killed on their node.

Runs every ``interval`` seconds, or at once when woken (``set_timeout(0)``). A kill
the node could not take (unreachable) stays ``killing`` in the store and is retried
with backoff; clients already see the sandbox as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from shoal.api.registry import NodeRegistry
from shoal.api.service import Clock, kill_on_node
from shoal.store.base import SandboxState, Store

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        store: Store,
        registry: NodeRegistry,
        clock: Clock,
        *,
        interval: float = 0.5,
        retry_after: timedelta = timedelta(seconds=2),
        keep_killed: timedelta = timedelta(hours=1),
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self.retry_after = retry_after
        self.keep_killed = keep_killed
        self._wake = asyncio.Event()
        self._next_try: dict[str, datetime] = {}
        self._last_purge: datetime | None = None

    def wake(self) -> None:
        self._wake.set()

    async def sweep(self) -> int:
        """One pass; returns how many sandboxes reached ``killed``."""
        now = self.clock()
        due = await self.store.due_sandboxes(now)
        killed = 0
        for rec in due:
            if self._next_try.get(rec.sandbox_id, now) > now:
                continue
            if rec.state is SandboxState.RUNNING:
                claimed = await self.store.update_sandbox(
                    rec.sandbox_id,
                    state=SandboxState.KILLING,
                    expect_states=frozenset({SandboxState.RUNNING}),
                )
                if not claimed:
                    continue
                log.info("sandbox %s timed out", rec.sandbox_id)
            if await kill_on_node(self.store, self.registry, rec, self.clock):
                self._next_try.pop(rec.sandbox_id, None)
                killed += 1
            else:
                self._next_try[rec.sandbox_id] = now + self.retry_after
        if self._last_purge is None or now - self._last_purge > timedelta(minutes=1):
            self._last_purge = now
            await self.store.purge_killed(now - self.keep_killed)
        return killed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("reaper sweep failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()


__all__ = ["Reaper"]
