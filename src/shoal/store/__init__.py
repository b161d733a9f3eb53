"""Persistence: the :class:`Store` protocol, its rows, and the SQL backend."""

from shoal.store.base import (
    COMPUTE_STATES,
    LIVE_STATES,
    TRANSITIONAL_STATES,
    VISIBLE_STATES,
    ApiKey,
    Cursor,
    Node,
    NodeUsage,
    PauseMode,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    SnapshotCursor,
    SnapshotQuery,
    SnapshotRecord,
    Store,
    Team,
)
from shoal.store.sql import SqlStore

__all__ = [
    "COMPUTE_STATES",
    "LIVE_STATES",
    "TRANSITIONAL_STATES",
    "VISIBLE_STATES",
    "ApiKey",
    "Cursor",
    "Node",
    "NodeUsage",
    "PauseMode",
    "SandboxQuery",
    "SandboxRecord",
    "SandboxState",
    "SnapshotCursor",
    "SnapshotQuery",
    "SnapshotRecord",
    "SqlStore",
    "Store",
    "Team",
]
