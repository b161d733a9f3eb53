"""The timeout reaper: sandboxes past ``end_at`` are killed on their node, or paused if
they were created to pause on timeout (``autoPause``).

Runs every ``interval`` seconds, or at once when woken (``set_timeout(0)``). A kill
the node could not take (unreachable) stays ``killing`` in the store and is retried
with backoff; clients already see the sandbox as gone. Auto-pauses run in tasks of
their own, a few at a time (a checkpoint takes from a fraction of a second to several
seconds per GiB), each under the sandbox's lock like any pause; one that fails leaves
the sandbox running and is retried after ``retry_after``; after
:data:`MAX_AUTO_PAUSE_TRIES` failures the sandbox is killed instead, since it must
not outlive its timeout. A paused sandbox never expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from shoal import errors
from shoal.api.lifecycle import Lifecycle
from shoal.api.registry import NodeRegistry
from shoal.api.service import Clock, kill_on_node
from shoal.store.base import SandboxRecord, SandboxState, Store

log = logging.getLogger(__name__)

MAX_AUTO_PAUSE_TRIES = 3
AUTO_PAUSE_CONCURRENCY = 4


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
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self.retry_after = retry_after
        self.keep_killed = keep_killed
        self.lifecycle = lifecycle
        self._wake = asyncio.Event()
        self._next_try: dict[str, datetime] = {}
        self._last_purge: datetime | None = None
        self._pause_failures: dict[str, int] = {}
        self._pausing: dict[str, asyncio.Task[None]] = {}
        self._pause_slots = asyncio.Semaphore(AUTO_PAUSE_CONCURRENCY)

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
            if rec.state is SandboxState.RUNNING and self.lifecycle is not None:
                if rec.sandbox_id in self._pausing or self.lifecycle.busy(rec.sandbox_id):
                    continue  # a pause, snapshot or kill of it is under way
                tries = self._pause_failures.get(rec.sandbox_id, 0)
                if rec.auto_pause and tries < MAX_AUTO_PAUSE_TRIES:
                    self._start_pause(rec)
                    continue
                if rec.auto_pause:
                    log.warning("sandbox %s could not be paused on timeout: killed", rec.sandbox_id)
                self._pause_failures.pop(rec.sandbox_id, None)
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

    def _start_pause(self, rec: SandboxRecord) -> None:
        task = asyncio.create_task(self._auto_pause(rec), name=f"shoal-autopause-{rec.sandbox_id}")
        self._pausing[rec.sandbox_id] = task
        task.add_done_callback(lambda _: self._pausing.pop(rec.sandbox_id, None))

    async def _auto_pause(self, rec: SandboxRecord) -> None:
        lifecycle = self.lifecycle
        assert lifecycle is not None
        sid = rec.sandbox_id

        async def op() -> bool:
            now = await lifecycle.current(sid, "paused")
            if (
                now is None
                or now.state is not SandboxState.RUNNING
                or not now.auto_pause
                or now.end_at > self.clock()
            ):
                return False  # extended, paused or killed meanwhile
            await lifecycle.pause(now, memory=now.auto_pause_memory is not False)
            return True

        try:
            async with self._pause_slots:
                paused = await lifecycle.exclusive(sid, op)
        except errors.ShoalError as exc:
            tries = self._pause_failures.get(sid, 0) + 1
            self._pause_failures[sid] = tries
            self._next_try[sid] = self.clock() + self.retry_after
            log.warning(
                "auto-pause of %s failed (%d/%d): %s", sid, tries, MAX_AUTO_PAUSE_TRIES, exc.message
            )
            return
        except Exception:
            log.exception("auto-pause of %s failed", sid)
            self._next_try[sid] = self.clock() + self.retry_after
            return
        self._pause_failures.pop(sid, None)
        self._next_try.pop(sid, None)
        if paused:
            log.info("sandbox %s timed out: paused", sid)

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
        # Pauses under way finish (their sandboxes would otherwise be left pausing).
        if self._pausing:
            await asyncio.gather(*self._pausing.values(), return_exceptions=True)


__all__ = ["AUTO_PAUSE_CONCURRENCY", "MAX_AUTO_PAUSE_TRIES", "Reaper"]
