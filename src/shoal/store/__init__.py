"""Persistence: the :class:`Store` protocol, its rows, and the SQL backend."""

from shoal.store.base import (
    LIVE_STATES,
    VISIBLE_STATES,
    ApiKey,
    Cursor,
    Node,
    NodeUsage,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    Store,
    Team,
)
from shoal.store.sql import SqlStore

__all__ = [
    "LIVE_STATES",
    "VISIBLE_STATES",
    "ApiKey",
    "Cursor",
    "Node",
    "NodeUsage",
    "SandboxQuery",
    "SandboxRecord",
    "SandboxState",
    "SqlStore",
    "Store",
    "Team",
]
