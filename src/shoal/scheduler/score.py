"""Ranking of feasible nodes; lower scores are better.

Scores count in-flight reservations, so a burst of concurrent creates, each placed
before the previous ones have finished, still sees the load it is adding and spreads
instead of piling onto the node that looked emptiest when the burst began.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.scheduler.filters import cpu_limit, memory_limit
from shoal.scheduler.snapshot import NodeView, PlacementRequest, SchedulerConfig, Strategy

Score = tuple[float, ...]


def load_after(node: NodeView, request: PlacementRequest, config: SchedulerConfig) -> float:
    """The node's busiest dimension (0..1) if this sandbox were added."""
    cpu = (node.cpu_allocated + node.inflight_cpu + request.cpu_count) / max(
        cpu_limit(node, config), 1e-9
    )
    memory = (node.memory_allocated_mb + node.inflight_memory_mb + request.memory_mb) / max(
        memory_limit(node, config), 1e-9
    )
    count = (node.sandboxes + node.inflight_sandboxes + 1) / max(config.max_sandboxes_per_node, 1)
    return max(cpu, memory, count)


def score(
    node: NodeView,
    request: PlacementRequest,
    config: SchedulerConfig,
    feasible: Sequence[NodeView],
) -> Score:
    load = load_after(node, request, config)
    if config.strategy is Strategy.LATENCY:
        return (load,)
    if config.strategy is Strategy.COST:
        return (node.cost, -load)
    top = max((n.cost for n in feasible), default=1.0) or 1.0
    return (0.5 * load + 0.5 * node.cost / top,)


__all__ = ["Score", "load_after", "score"]
