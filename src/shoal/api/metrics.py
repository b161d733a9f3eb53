"""Sandbox metrics in E2B's terms: ``get_metrics`` and the bulk endpoint, served from the
samples each node agent keeps for its running sandboxes (agent/metrics.py).

    >>> metrics = MetricsService(sandbox_service)
    >>> await metrics.sandbox_metrics(team_id, "sbx1", start=None, end=None)
    >>> await metrics.latest(team_id, ["sbx1", "sbx2"])

``start``/``end`` are Unix seconds, both inclusive; ``start`` defaults to the sandbox's
start and ``end`` to now (E2B's defaults). Samples live with the sandbox on its node, so a
killed sandbox has none (404, as for ``get_info``) and a paused one has none until resumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime

from shoal import errors
from shoal.api.service import SandboxService
from shoal.client.node import NodeUnreachable
from shoal.store.base import SandboxRecord, SandboxState
from shoal.wire.api.models import SandboxMetric
from shoal.wire.node.models import MetricSample

log = logging.getLogger(__name__)

MAX_BULK_SANDBOXES = 100
"""E2B's limit on ``sandbox_ids`` per bulk request."""
NODE_TIMEOUT = 10.0


def to_metric(sample: MetricSample) -> SandboxMetric:
    return SandboxMetric(
        timestamp=datetime.fromtimestamp(sample.timestamp, UTC),
        timestampUnix=int(sample.timestamp),
        cpuCount=sample.cpu_count,
        cpuUsedPct=sample.cpu_used_pct,
        memUsed=sample.mem_used,
        memTotal=sample.mem_total,
        memCache=sample.mem_cache,
        diskUsed=sample.disk_used,
        diskTotal=sample.disk_total,
    )


class MetricsService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes
        self.registry = sandboxes.registry
        self.clock = sandboxes.clock

    async def sandbox_metrics(
        self, team_id: str, sandbox_id: str, start: int | None, end: int | None
    ) -> list[SandboxMetric]:
        """The samples of one of the team's sandboxes in ``[start, end]``, oldest first."""
        rec = await self.sandboxes.visible(team_id, sandbox_id)
        if start is None:
            start = int(rec.started_at.timestamp())
        if end is None:
            end = int(self.clock().timestamp())
        for name, value in (("start", start), ("end", end)):
            if value < 0:
                raise errors.InvalidArgument(f"{name} must not be negative (got {value})")
        if start > end:
            raise errors.InvalidArgument(f"start ({start}) must not be after end ({end})")
        client = self.registry.client(rec.node_id)
        if client is None:
            raise NodeUnreachable(f"node {rec.node_id} of sandbox {sandbox_id} is not connected")
        try:
            async with asyncio.timeout(NODE_TIMEOUT):
                samples = await client.sandbox_metrics(sandbox_id, start, end)
        except TimeoutError as exc:
            raise NodeUnreachable(f"node {rec.node_id} did not answer in time") from exc
        except errors.NotFound:
            if rec.state is not SandboxState.RUNNING:  # paused, or pausing/resuming
                return []
            # Its node no longer has it: it died or is being killed right now.
            raise errors.SandboxNotFound(sandbox_id) from None
        return [to_metric(s) for s in samples]

    async def latest(self, team_id: str, sandbox_ids: list[str]) -> dict[str, SandboxMetric]:
        """The newest sample of each listed sandbox of the team that has one; sandboxes that
        are unknown, another team's, killed or without samples are left out."""
        if len(sandbox_ids) > MAX_BULK_SANDBOXES:
            raise errors.InvalidArgument(
                f"{len(sandbox_ids)} sandboxes requested; at most {MAX_BULK_SANDBOXES} per request"
            )
        by_node: dict[str, list[str]] = defaultdict(list)
        for sandbox_id in dict.fromkeys(sandbox_ids):
            rec = await self._running(team_id, sandbox_id)
            if rec is not None:
                by_node[rec.node_id].append(sandbox_id)
        found = await asyncio.gather(*(self._latest_on(n, ids) for n, ids in by_node.items()))
        return {k: to_metric(v) for part in found for k, v in part.items()}

    async def _running(self, team_id: str, sandbox_id: str) -> SandboxRecord | None:
        try:
            rec = await self.sandboxes.visible(team_id, sandbox_id)
        except errors.SandboxNotFound:
            return None
        return rec if rec.state is SandboxState.RUNNING else None

    async def _latest_on(self, node_id: str, sandbox_ids: list[str]) -> dict[str, MetricSample]:
        """One node's answer; a node that cannot answer leaves its sandboxes out."""
        client = self.registry.client(node_id)
        if client is None:
            return {}
        try:
            async with asyncio.timeout(NODE_TIMEOUT):
                return await client.latest_metrics(sandbox_ids)
        except (errors.ShoalError, TimeoutError) as exc:
            log.info("no metrics from node %s: %s", node_id, exc)
            return {}


__all__ = ["MAX_BULK_SANDBOXES", "MetricsService", "to_metric"]
