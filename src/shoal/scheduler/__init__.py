"""Pure placement: filter nodes (named reasons), score the feasible ones, pick one.

The pipeline is ``filters.reject_reason`` → ``score.score`` → ``select.place``. It does
no I/O and reads no clock; the API's service layer builds the snapshot, calls
``place``, tries the node, and on refusal retries with that node excluded.
"""

from shoal.scheduler.filters import Reason
from shoal.scheduler.select import NoPlacement, place
from shoal.scheduler.snapshot import (
    NodeView,
    Placement,
    PlacementRequest,
    SchedulerConfig,
    Snapshot,
    Strategy,
)

__all__ = [
    "NoPlacement",
    "NodeView",
    "Placement",
    "PlacementRequest",
    "Reason",
    "SchedulerConfig",
    "Snapshot",
    "Strategy",
    "place",
]
