"""Feasibility: can this node take this sandbox at all? Each "no" has a named reason."""

from __future__ import annotations

from enum import StrEnum

from shoal.scheduler.snapshot import NodeView, PlacementRequest, SchedulerConfig


class Reason(StrEnum):
    EXCLUDED = "already tried"
    OTHER_NODE = "not the required node"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    MISSING_TEMPLATE = "missing template"
    CPU = "cpu"
    MEMORY = "memory"
    SANDBOX_COUNT = "sandbox count"


def cpu_limit(node: NodeView, config: SchedulerConfig) -> float:
    return node.cpu_capacity * config.cpu_overcommit


def memory_limit(node: NodeView, config: SchedulerConfig) -> float:
    return node.memory_capacity_mb * config.memory_overcommit


def reject_reason(
    node: NodeView, request: PlacementRequest, config: SchedulerConfig
) -> Reason | None:
    """Why ``node`` cannot take ``request`` (first failing check), or None if it can."""
    if request.only_node is not None and node.node_id != request.only_node:
        return Reason.OTHER_NODE
    if node.node_id in request.exclude:
        return Reason.EXCLUDED
    if (request.now - node.last_seen).total_seconds() > config.node_dead_after:
        return Reason.UNHEALTHY
    if node.draining:
        return Reason.DRAINING
    if request.template_id not in node.templates:
        return Reason.MISSING_TEMPLATE
    cpu = node.cpu_allocated + node.inflight_cpu + request.cpu_count
    if cpu > cpu_limit(node, config):
        return Reason.CPU
    memory = node.memory_allocated_mb + node.inflight_memory_mb + request.memory_mb
    if memory > memory_limit(node, config):
        return Reason.MEMORY
    if node.sandboxes + node.inflight_sandboxes + 1 > config.max_sandboxes_per_node:
        return Reason.SANDBOX_COUNT
    return None


__all__ = ["Reason", "cpu_limit", "memory_limit", "reject_reason"]
