"""Pause and resume: what a node is asked, what the store records, and in which order.

**One operation per sandbox at a time.** Pause, resume, snapshot and kill of a sandbox
run through :meth:`Lifecycle.exclusive`, which holds that sandbox's lock in this
process for the whole node call. So two pauses at once become a pause and a 409
("already paused"); a kill or a connect during a pause waits for it and then kills or
resumes the paused sandbox; a hundred requests that all want a paused sandbox back (a
burst of connects, or traffic at the proxy with auto-resume) cause one resume, after
which the others find it running. The operation runs in its own task and the caller
awaits it shielded: a client that hangs up mid-pause cannot leave the lock released
while the node is still checkpointing, or a row stuck in ``pausing``.

**States.** The row is ``pausing`` / ``resuming`` while the node works (the proxy routes
only ``running`` sandboxes, so data-plane calls answer 502 meanwhile). The node's
contract decides where a failure lands: a failed pause leaves the sandbox running, a
failed resume leaves the checkpoint, so the row goes back to ``running`` / ``paused``.
A node that does not have the sandbox (``NotFound``) has lost it: the row is closed as
killed. An unreachable node leaves the outcome unknown: the node's sandbox list is asked
(listed running → ``running``, else ``paused``); if that fails too the row stays in its
transitional state until the next operation on the sandbox, or heartbeat reconciliation
(:mod:`shoal.api.reconcile`), settles it the same way. The lock is per process: Shoal runs
one control plane, whose store rows in a transitional state with no operation holding
the lock can only be left over from an unknown outcome or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from shoal import errors
from shoal.api.registry import NodeRegistry
from shoal.client.node import NodeClient, NodeUnreachable
from shoal.config import Settings
from shoal.store.base import TRANSITIONAL_STATES, SandboxRecord, SandboxState, Store
from shoal.wire.node.models import ResumeRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_AUTO_RESUME_TIMEOUT = 60
"""Seconds an auto-resumed sandbox runs at least, so traffic cannot make it thrash."""


def sandbox_env(rec: SandboxRecord) -> dict[str, str]:
    """The variables a sandbox's processes get: its own and E2B's three."""
    return {
        **rec.env_vars,
        "E2B_SANDBOX": "true",
        "E2B_SANDBOX_ID": rec.sandbox_id,
        "E2B_TEMPLATE_ID": rec.template_id,
    }


def cannot(verb: str, rec: SandboxRecord) -> errors.InvalidStateTransition:
    return errors.InvalidStateTransition(
        f"Sandbox '{rec.sandbox_id}' cannot be {verb} while in '{rec.state.value}' state"
    )


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Lifecycle:
    """Pause/resume of sandboxes and the per-sandbox lock every node-side change takes.

    >>> rec = await lifecycle.exclusive(sid, lambda: lifecycle.pause(sid, memory=True))
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: NodeRegistry,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._on_leave: list[Callable[[str], None]] = []
        self._leaving: set[str] = set()

    def leaving(self, sandbox_id: str) -> bool:
        """Whether a pause of the sandbox is under way here. The proxy routes no new
        request to it meanwhile (the sandbox shows as paused already): such a request
        gets the paused sandbox's answer, a 502 or an auto-resume once the pause is done."""
        return sandbox_id in self._leaving

    def on_leave(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(sandbox_id)`` when a sandbox stops running on its node (a pause
        begins or ends): the proxy forgets where it routed it, so the next request finds
        it paused (a 502, or an auto-resume) instead of going to the node."""
        self._on_leave.append(callback)

    def _left(self, sandbox_id: str) -> None:
        for callback in self._on_leave:
            try:
                callback(sandbox_id)
            except Exception:
                log.exception("on_leave callback failed for %s", sandbox_id)

    # the lock

    @contextlib.asynccontextmanager
    async def _locked(self, sandbox_id: str) -> AsyncIterator[None]:
        slot = self._slots.get(sandbox_id)
        if slot is None:
            slot = self._slots[sandbox_id] = _Slot()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[sandbox_id]

    def busy(self, sandbox_id: str) -> bool:
        """Whether an operation on the sandbox runs or waits in this process."""
        return sandbox_id in self._slots

    async def exclusive(self, sandbox_id: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` holding the sandbox's lock, in a task of its own that finishes even
        if the caller is cancelled."""

        async def run() -> T:
            async with self._locked(sandbox_id):
                return await op()

        task: asyncio.Task[T] = asyncio.create_task(run(), name=f"shoal-sandbox-{sandbox_id}")
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an op whose caller went away does not warn at exit;
            # the caller (if still there) gets it from the shield.
            log.debug("sandbox operation %s failed: %s", task.get_name(), task.exception())

    async def aclose(self) -> None:
        """Wait for operations still in flight (the API is stopping)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # reading under the lock

    async def current(self, sandbox_id: str, verb: str) -> SandboxRecord | None:
        """The row as it is now, with a transitional state left behind settled (see the
        module docstring); None if there is no row. Call under the lock."""
        rec = await self.store.get_sandbox(sandbox_id)
        if rec is None or rec.state not in TRANSITIONAL_STATES:
            return rec
        settled = await self._settle(rec)
        if settled is None:
            raise cannot(verb, rec)
        return settled

    async def _node_runs(self, rec: SandboxRecord) -> bool | None:
        """Whether the sandbox's node lists it as running; None if the node cannot say."""
        client = self.registry.client(rec.node_id)
        if client is None:
            return None
        try:
            async with asyncio.timeout(10):
                listed = await client.list_sandboxes()
        except (errors.ShoalError, TimeoutError):
            return None
        return any(s.sandbox_id == rec.sandbox_id and s.state == "running" for s in listed)

    async def _settle(self, rec: SandboxRecord) -> SandboxRecord | None:
        running = await self._node_runs(rec)
        if running is None:
            return None
        await self._land(rec, running)
        return await self.store.get_sandbox(rec.sandbox_id)

    async def _land(self, rec: SandboxRecord, running: bool) -> None:
        """Put a transitional row where the node says the sandbox is."""
        if running:
            now = self.clock()
            timeout = rec.timeout_s if rec.timeout_s is not None else self.settings.default_timeout
            end_at = rec.end_at
            if rec.state is SandboxState.RESUMING:
                end_at = now + timedelta(seconds=timeout)
            await self.store.update_sandbox(
                rec.sandbox_id,
                state=SandboxState.RUNNING,
                started_at=now if rec.state is SandboxState.RESUMING else None,
                end_at=end_at,
                expect_states=frozenset({rec.state}),
            )
        else:
            await self.store.update_sandbox(
                rec.sandbox_id,
                state=SandboxState.PAUSED,
                expect_states=frozenset({rec.state}),
            )

    def _client(self, rec: SandboxRecord) -> NodeClient:
        client = self.registry.client(rec.node_id)
        if client is None:
            raise NodeUnreachable(f"node {rec.node_id} of sandbox {rec.sandbox_id} is not known")
        return client

    async def _lost(self, rec: SandboxRecord, expect: SandboxState) -> errors.SandboxNotFound:
        """The node has neither the sandbox nor its checkpoint: close the row."""
        log.warning("node %s no longer has sandbox %s", rec.node_id, rec.sandbox_id)
        await self.store.update_sandbox(
            rec.sandbox_id,
            state=SandboxState.KILLED,
            killed_at=self.clock(),
            expect_states=frozenset({expect}),
        )
        return errors.SandboxNotFound(rec.sandbox_id)

    # pause

    async def pause(self, rec: SandboxRecord, *, memory: bool) -> SandboxRecord:
        """Pause a ``running`` sandbox (call under its lock); returns the ``paused`` row.

        On failure the sandbox is running again, or closed if its node lost it."""
        sid = rec.sandbox_id
        client = self._client(rec)
        claimed = await self.store.update_sandbox(
            sid,
            state=SandboxState.PAUSING,
            paused_at=self.clock(),
            expect_states=frozenset({SandboxState.RUNNING}),
        )
        if not claimed:
            raise cannot("paused", rec)
        self._leaving.add(sid)
        try:
            return await self._pause(rec, client, memory)
        finally:
            self._leaving.discard(sid)
            self._left(sid)

    async def _pause(self, rec: SandboxRecord, client: NodeClient, memory: bool) -> SandboxRecord:
        sid = rec.sandbox_id
        self._left(sid)
        pausing = SandboxState.PAUSING
        try:
            status = await client.pause_sandbox(sid, memory=memory)
        except errors.NotFound:
            raise await self._lost(rec, pausing) from None
        except NodeUnreachable:
            running = await self._node_runs(rec)
            if running is not None:
                await self._land(replace(rec, state=pausing), running)
            raise
        except errors.ShoalError:
            # The node's contract: a pause that failed leaves the sandbox running.
            await self.store.update_sandbox(
                sid, state=SandboxState.RUNNING, expect_states=frozenset({pausing})
            )
            raise
        await self.store.update_sandbox(
            sid,
            state=SandboxState.PAUSED,
            pause_mode="full" if status.memory else "filesystem",
            checkpoint_bytes=status.size_bytes,
            expect_states=frozenset({pausing}),
        )
        log.info("sandbox %s paused (%s, %d bytes)", sid, status.memory, status.size_bytes)
        return await self._reread(rec)

    # resume

    async def resume(
        self,
        rec: SandboxRecord,
        *,
        timeout_s: int,
        memory: bool | None = None,
        auto_pause: bool | None = None,
    ) -> SandboxRecord:
        """Resume a ``paused`` sandbox (call under its lock) for ``timeout_s`` seconds;
        returns the ``running`` row. ``memory=False`` boots it from its disk.

        On failure it is still paused (the checkpoint stays), or closed if its node
        lost the checkpoint."""
        sid = rec.sandbox_id
        client = self._client(rec)
        claimed = await self.store.update_sandbox(
            sid,
            state=SandboxState.RESUMING,
            started_at=self.clock(),
            expect_states=frozenset({SandboxState.PAUSED}),
        )
        if not claimed:
            raise cannot("resumed", rec)
        resuming = SandboxState.RESUMING
        request = ResumeRequest(
            memory=memory is not False, access_token=rec.access_token, env_vars=sandbox_env(rec)
        )
        try:
            status = await client.resume_sandbox(sid, request)
        except errors.NotFound:
            raise await self._lost(rec, resuming) from None
        except NodeUnreachable:
            running = await self._node_runs(rec)
            if not running:
                if running is not None:
                    await self._land(replace(rec, state=resuming), False)
                raise
            log.info("resume of %s answered late, but the node runs it", sid)
            status = None
        except errors.ShoalError:
            # The node's contract: a resume that failed keeps the checkpoint.
            await self.store.update_sandbox(
                sid, state=SandboxState.PAUSED, expect_states=frozenset({resuming})
            )
            raise
        started = self.clock()
        await self.store.update_sandbox(
            sid,
            state=SandboxState.RUNNING,
            started_at=started,
            end_at=started + timedelta(seconds=timeout_s),
            cpu_count=status.cpu_count if status else None,
            memory_mb=status.memory_mb if status else None,
            auto_pause=auto_pause,
            expect_states=frozenset({resuming}),
        )
        log.info("sandbox %s resumed", sid)
        return await self._reread(rec)

    async def _reread(self, rec: SandboxRecord) -> SandboxRecord:
        fresh = await self.store.get_sandbox(rec.sandbox_id)
        if fresh is None:  # pragma: no cover - rows are only deleted by purge, long after
            raise errors.SandboxNotFound(rec.sandbox_id)
        return fresh

    # auto-resume (the proxy's hook)

    def auto_resume_timeout(self, rec: SandboxRecord) -> int:
        wanted = rec.timeout_s if rec.timeout_s is not None else self.settings.default_timeout
        return min(max(wanted, MIN_AUTO_RESUME_TIMEOUT), self.settings.max_timeout)

    async def auto_resume(self, sandbox_id: str) -> bool:
        """Resume a paused sandbox that traffic arrived for, if it asked for that at
        create (``autoResume``) and its pause kept memory; True once it is running.

        A filesystem-only pause never resumes on traffic: it boots afresh, so the request
        that woke it would meet none of the processes it was meant for (E2B refuses that
        combination too)."""
        rec = await self.store.get_sandbox(sandbox_id)
        if rec is None or not rec.auto_resume or rec.state not in _WAKEABLE:
            return False

        async def op() -> bool:
            now = await self.current(sandbox_id, "resumed")
            if now is None:
                return False
            if now.state is SandboxState.RUNNING:
                return True
            if now.state is not SandboxState.PAUSED or now.pause_mode == "filesystem":
                return False
            await self.resume(now, timeout_s=self.auto_resume_timeout(now))
            return True

        try:
            return await self.exclusive(sandbox_id, op)
        except errors.ShoalError as exc:
            log.warning("auto-resume of %s failed: %s", sandbox_id, exc.message)
            return False


_WAKEABLE = frozenset({SandboxState.PAUSED, SandboxState.PAUSING, SandboxState.RESUMING})


__all__ = ["MIN_AUTO_RESUME_TIMEOUT", "Lifecycle", "cannot", "sandbox_env"]
