"""The scheduler's inputs: an immutable view of the nodes, a request, and tunables.

Everything here is plain data so placement can be computed (and property-tested)
without a store, a network or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Strategy(StrEnum):
    LATENCY = "latency"
    """Spread: the least-loaded node, so sandboxes start and run with the least contention."""
    COST = "cost"
    """Cheapest node first, then pack it, so expensive or idle nodes can be drained."""
    BALANCED = "balanced"
    """Load and relative price weighed together."""


@dataclass(frozen=True)
class NodeView:
    node_id: str
    last_seen: datetime
    cpu_capacity: int
    memory_capacity_mb: int
    cpu_allocated: int = 0
    memory_allocated_mb: int = 0
    sandboxes: int = 0
    inflight_cpu: int = 0
    """Reserved by creates that were placed here and have not finished yet."""
    inflight_memory_mb: int = 0
    inflight_sandboxes: int = 0
    templates: frozenset[str] = frozenset()
    draining: bool = False
    region: str = "local"
    cost: float = 1.0


@dataclass(frozen=True)
class PlacementRequest:
    template_id: str
    cpu_count: int
    memory_mb: int
    now: datetime
    exclude: frozenset[str] = frozenset()
    """Nodes already tried for this create (they refused or were unreachable)."""
    only_node: str | None = None
    """The one node that may take it (a create from a snapshot, which stays on the node
    that took it); None: any node."""


@dataclass(frozen=True)
class SchedulerConfig:
    strategy: Strategy = Strategy.BALANCED
    node_dead_after: float = 10.0
    """Seconds without a heartbeat after which a node takes no new sandboxes."""
    cpu_overcommit: float = 4.0
    """Sandboxes are mostly idle; vCPUs are shares, not pinned cores."""
    memory_overcommit: float = 1.0
    """Memory limits are hard (cgroup), so memory is never overcommitted by default."""
    max_sandboxes_per_node: int = 2000


Snapshot = tuple[NodeView, ...]


@dataclass(frozen=True)
class Placement:
    node_id: str
    ranked: tuple[str, ...] = field(default=())
    """Every feasible node, best first (``ranked[0] == node_id``)."""


__all__ = [
    "NodeView",
    "Placement",
    "PlacementRequest",
    "SchedulerConfig",
    "Snapshot",
    "Strategy",
]
