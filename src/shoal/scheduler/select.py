"""``place()``: filter, score, pick. Pure: the caller supplies the snapshot and ``now``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.scheduler.filters import Reason, reject_reason
from shoal.scheduler.score import score
from shoal.scheduler.snapshot import Placement, PlacementRequest, SchedulerConfig, Snapshot


@dataclass(frozen=True)
class NoPlacement:
    reasons: Mapping[str, Reason] = field(default_factory=dict)
    """Why each node was rejected, by node id."""

    def describe(self) -> str:
        if not self.reasons:
            return "no nodes are registered"
        counts: dict[Reason, int] = {}
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        parts = ", ".join(f"{reason.value} ({n})" for reason, n in sorted(counts.items()))
        return f"no node can take the sandbox: {parts}"

    @property
    def only_template_missing(self) -> bool:
        return bool(self.reasons) and all(
            r is Reason.MISSING_TEMPLATE for r in self.reasons.values()
        )


def place(
    snapshot: Snapshot, request: PlacementRequest, config: SchedulerConfig
) -> Placement | NoPlacement:
    """Pick the best node for ``request``.

    >>> place((node,), PlacementRequest("base", 2, 512, now), SchedulerConfig())
    Placement(node_id='node1', ranked=('node1',))
    """
    reasons: dict[str, Reason] = {}
    feasible = []
    for node in snapshot:
        reason = reject_reason(node, request, config)
        if reason is None:
            feasible.append(node)
        else:
            reasons[node.node_id] = reason
    if not feasible:
        return NoPlacement(reasons)
    ranked = sorted(feasible, key=lambda n: (score(n, request, config, feasible), n.node_id))
    return Placement(node_id=ranked[0].node_id, ranked=tuple(n.node_id for n in ranked))


__all__ = ["NoPlacement", "place"]
