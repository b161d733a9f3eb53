"""The store's contract: a small Protocol and the rows it keeps.

Time is always an aware UTC ``datetime`` at this boundary; backends may encode it
however they like (the SQL backend keeps integer microseconds so ordering and
cursor comparisons are exact and portable).

Sandbox states as the store sees them::

    creating ──► running ──► killing ──► killed
        │            └───────────────────▲
        └── (create failed: row deleted)

``creating`` rows are not visible to clients; ``killing`` means a kill is pending on
the node (it was unreachable) and the reaper retries it; clients see it as gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol


class SandboxState(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    KILLING = "killing"
    KILLED = "killed"


VISIBLE_STATES = frozenset({SandboxState.RUNNING, SandboxState.PAUSED})
"""States a client can see; the others answer 404."""

LIVE_STATES = frozenset(
    {SandboxState.CREATING, SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.KILLING}
)
"""States that still hold resources on a node."""


@dataclass(frozen=True)
class Team:
    team_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    key_hash: str
    """sha256 hex of the key; the key itself is never stored."""
    team_id: str
    created_at: datetime
    prefix: str = ""
    """First characters of the key, to tell keys apart in listings."""


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    last_seen: datetime
    region: str = "local"
    cost: float = 1.0
    draining: bool = False
    cpu_count: int = 0
    memory_mb: int = 0
    disk_mb: int = 0
    templates: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    team_id: str
    template_id: str
    node_id: str
    state: SandboxState
    started_at: datetime
    end_at: datetime
    cpu_count: int
    memory_mb: int
    disk_mb: int
    access_token: str | None
    alias: str | None = None
    client_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    env_vars: Mapping[str, str] = field(default_factory=dict)
    auto_pause: bool = False
    allow_internet_access: bool | None = None
    killed_at: datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """Position after the last item of a page: ``(started_at, sandbox_id)``."""

    started_at: datetime
    sandbox_id: str


@dataclass(frozen=True)
class SandboxQuery:
    team_id: str
    states: frozenset[SandboxState] = VISIBLE_STATES
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Exact match on every pair."""
    started_after: datetime | None = None
    """Inclusive."""
    template: str | None = None
    """Matches template id or alias."""
    alive_at: datetime | None = None
    """Leave out running sandboxes whose ``end_at`` is not after this instant."""
    order: Literal["asc", "desc"] = "desc"
    after: Cursor | None = None
    limit: int | None = None


@dataclass(frozen=True)
class NodeUsage:
    """Resources the store holds on one node (sandboxes in :data:`LIVE_STATES`)."""

    sandboxes: int = 0
    cpu_count: int = 0
    memory_mb: int = 0


class Store(Protocol):
    async def start(self) -> None:
        """Create tables if needed; idempotent."""
        ...

    async def close(self) -> None: ...

    # teams and keys
    async def create_team(self, team: Team) -> None: ...
    async def list_teams(self) -> list[Team]: ...
    async def add_api_key(self, key: ApiKey) -> None:
        """Insert, or do nothing if the hash is known."""
        ...

    async def team_for_key(self, key_hash: str) -> str | None: ...

    # nodes
    async def upsert_node(self, node: Node) -> None: ...
    async def list_nodes(self) -> list[Node]: ...

    # sandboxes
    async def insert_sandbox(self, record: SandboxRecord) -> None: ...
    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """Any state, killed included."""
        ...

    async def update_sandbox(
        self,
        sandbox_id: str,
        *,
        state: SandboxState | None = None,
        end_at: datetime | None = None,
        started_at: datetime | None = None,
        killed_at: datetime | None = None,
        cpu_count: int | None = None,
        memory_mb: int | None = None,
        expect_states: frozenset[SandboxState] | None = None,
    ) -> bool:
        """Change the given fields; False if the row is missing or not in ``expect_states``."""
        ...

    async def delete_sandbox(self, sandbox_id: str) -> None: ...
    async def list_sandboxes(self, query: SandboxQuery) -> list[SandboxRecord]: ...
    async def sandboxes_on_node(
        self, node_id: str, states: frozenset[SandboxState]
    ) -> list[SandboxRecord]: ...
    async def due_sandboxes(self, now: datetime, limit: int = 100) -> list[SandboxRecord]:
        """Running sandboxes with ``end_at <= now`` and every ``killing`` one."""
        ...

    async def node_usage(self) -> dict[str, NodeUsage]: ...
    async def purge_killed(self, before: datetime) -> int:
        """Delete killed rows older than ``before``; returns how many."""
        ...


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
    "Store",
    "Team",
]
