"""Heartbeat reconciliation: make the store and a node agree on what runs there.

* The store says running, the node does not list it, and it is older than ``grace``
  → it died on the node: mark it killed. (``grace`` covers a heartbeat that was
  assembled before a create finished.)
* A ``creating`` row older than :data:`STALE_CREATE` was left by an API that stopped
  mid-create → hand it to the reaper.
* The node lists a sandbox the store does not know, has killed, or places on another
  node → an orphan: tell the node to kill it.
* A ``paused`` sandbox is not running anywhere: that the node does not list it is
  expected (the node keeps its checkpoint). A ``pausing``/``resuming`` row is left alone
  while its pause or resume can still be in flight; one older than
  :data:`STALE_TRANSITION` was left by an operation whose outcome nobody learned (node
  unreachable, API restarted): the node's list decides it (running → ``running``, else
  ``paused``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from shoal.api.registry import NodeRegistry
from shoal.client.node import NodeUnreachable
from shoal.errors import ShoalError
from shoal.store.base import LIVE_STATES, TRANSITIONAL_STATES, SandboxRecord, SandboxState, Store
from shoal.wire.node.models import SandboxStatus

log = logging.getLogger(__name__)

GRACE = timedelta(seconds=5)
STALE_CREATE = timedelta(minutes=10)
"""Far beyond the node client's create timeout: no create is still in flight."""
STALE_TRANSITION = timedelta(minutes=10)
"""Far beyond the node client's checkpoint timeout: no pause or resume is still in flight."""
RESUMED_FOR = timedelta(seconds=300)
"""How long a sandbox found running after a lost resume runs, when it has no timeout of
its own on record."""


async def _settle(store: Store, rec: SandboxRecord, running: bool, now: datetime) -> None:
    if running:
        ran_for = timedelta(seconds=rec.timeout_s) if rec.timeout_s is not None else RESUMED_FOR
        await store.update_sandbox(
            rec.sandbox_id,
            state=SandboxState.RUNNING,
            started_at=now if rec.state is SandboxState.RESUMING else None,
            end_at=now + ran_for if rec.state is SandboxState.RESUMING else None,
            expect_states=frozenset({rec.state}),
        )
    else:
        await store.update_sandbox(
            rec.sandbox_id, state=SandboxState.PAUSED, expect_states=frozenset({rec.state})
        )
    log.info(
        "sandbox %s left %s: %s",
        rec.sandbox_id,
        rec.state.value,
        "running" if running else "paused",
    )


async def reconcile(
    store: Store,
    registry: NodeRegistry,
    node_id: str,
    reported: list[SandboxStatus],
    now: datetime,
    *,
    grace: timedelta = GRACE,
) -> list[str]:
    """Apply one node's sandbox list; returns the orphans the node was told to kill."""
    reported_ids = {s.sandbox_id for s in reported}
    running_ids = {s.sandbox_id for s in reported if s.state == "running"}
    for rec in await store.sandboxes_on_node(node_id, frozenset(LIVE_STATES)):
        if rec.state is SandboxState.PAUSED:
            continue
        if rec.state in TRANSITIONAL_STATES:
            began = rec.paused_at if rec.state is SandboxState.PAUSING else rec.started_at
            if began is None or began <= now - STALE_TRANSITION:
                await _settle(store, rec, rec.sandbox_id in running_ids, now)
            continue
        if rec.state is SandboxState.CREATING:
            if rec.started_at <= now - STALE_CREATE:
                # The API died mid-create: hand it to the reaper, which kills it on the node.
                await store.update_sandbox(
                    rec.sandbox_id,
                    state=SandboxState.KILLING,
                    expect_states=frozenset({SandboxState.CREATING}),
                )
            continue
        if rec.sandbox_id in reported_ids:
            continue
        if rec.state is SandboxState.KILLING or rec.started_at <= now - grace:
            gone = await store.update_sandbox(
                rec.sandbox_id,
                state=SandboxState.KILLED,
                killed_at=now,
                expect_states=frozenset({rec.state}),
            )
            if gone and rec.state is not SandboxState.KILLING:
                log.info("sandbox %s vanished from node %s", rec.sandbox_id, node_id)

    orphans = []
    for status in reported:
        known = await store.get_sandbox(status.sandbox_id)
        if (
            known is not None
            and known.node_id == node_id
            and known.state is not SandboxState.KILLED
        ):
            continue
        orphans.append(status.sandbox_id)
    client = registry.client(node_id)
    if client is not None:
        for sandbox_id in orphans:
            log.info("killing orphan sandbox %s on node %s", sandbox_id, node_id)
            try:
                await client.kill_sandbox(sandbox_id)
            except (NodeUnreachable, ShoalError) as exc:
                log.warning("could not kill orphan %s on %s: %s", sandbox_id, node_id, exc)
    return orphans


__all__ = ["GRACE", "STALE_CREATE", "STALE_TRANSITION", "reconcile"]
