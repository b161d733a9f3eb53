"""The store's contract: a small Protocol and the rows it keeps.

Time is always an aware UTC ``datetime`` at this boundary; backends may encode it
however they like (the SQL backend keeps integer microseconds so ordering and
cursor comparisons are exact and portable).

Sandbox states as the store sees them::

    creating ──► running ──► killing ──► killed
        │         │    ▲         ▲
        │    pausing  resuming   │
        │         ▼    │         │
        │         paused ────────┘
        └── (create failed: row deleted)

``creating`` rows are not visible to clients; ``killing`` means a kill is pending on
the node (it was unreachable) and the reaper retries it; clients see it as gone.
``pausing`` and ``resuming`` are held while the node checkpoints or restores the
sandbox: a failed pause goes back to ``running`` (the node leaves it running), a failed
resume back to ``paused`` (the node keeps the checkpoint). A ``paused`` sandbox holds no
cpu or memory on its node, only the disk of its checkpoint, and never expires.

Snapshots (``SnapshotRecord``) are checkpoints of running sandboxes that stay on the
node that took them; sandboxes are created from them on that node.
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
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    KILLING = "killing"
    KILLED = "killed"


TRANSITIONAL_STATES = frozenset({SandboxState.PAUSING, SandboxState.RESUMING})
"""A pause or resume is in flight on the node."""

VISIBLE_STATES = frozenset(
    {SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.PAUSING, SandboxState.RESUMING}
)
"""States a client can see; the others answer 404."""

LIVE_STATES = frozenset(
    {
        SandboxState.CREATING,
        SandboxState.RUNNING,
        SandboxState.PAUSING,
        SandboxState.PAUSED,
        SandboxState.RESUMING,
        SandboxState.KILLING,
    }
)
"""States that still hold something on a node (a paused sandbox: its checkpoint)."""

COMPUTE_STATES = LIVE_STATES - {SandboxState.PAUSED}
"""States whose cpu and memory count against their node."""

PauseMode = Literal["full", "filesystem"]


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
    auto_pause_memory: bool | None = None
    """False: auto-pause keeps the disk only; None: the default (memory too)."""
    auto_resume: bool = False
    """Traffic for the paused sandbox resumes it (at the proxy)."""
    timeout_s: int | None = None
    """The timeout it was created with (auto-resume runs it for that long again)."""
    pause_mode: PauseMode | None = None
    """What its latest pause kept: ``full`` (memory and disk) or ``filesystem``."""
    checkpoint_bytes: int = 0
    """Disk its latest pause's checkpoint occupies on the node."""
    paused_at: datetime | None = None
    """When its latest pause began."""


@dataclass(frozen=True)
class SnapshotRecord:
    snapshot_id: str
    team_id: str
    sandbox_id: str
    """The sandbox it was taken from (it may be gone since)."""
    node_id: str
    """The node that holds it; sandboxes are created from it there."""
    template_id: str
    """The template the source sandbox ran."""
    memory: bool
    """Processes and memory kept (else the disk only)."""
    size_bytes: int
    created_at: datetime
    cpu_count: int
    memory_mb: int
    disk_mb: int
    name: str | None = None
    """Unique within the team while set; a newer snapshot of the same name takes it over."""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    """The source sandbox's own variables, which its copies inherit."""


@dataclass(frozen=True)
class SnapshotCursor:
    """Position after the last item of a page: ``(created_at, snapshot_id)``."""

    created_at: datetime
    snapshot_id: str


@dataclass(frozen=True)
class SnapshotQuery:
    team_id: str
    sandbox_id: str | None = None
    ref: str | None = None
    """Matches the snapshot id or the name."""
    after: SnapshotCursor | None = None
    """Newest first; the page continues after this position."""
    limit: int | None = None


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
    """Resources the store holds on one node: sandboxes in :data:`COMPUTE_STATES`, and
    the checkpoints of paused ones and snapshots."""

    sandboxes: int = 0
    cpu_count: int = 0
    memory_mb: int = 0
    checkpoint_bytes: int = 0
    """Disk held by paused sandboxes' checkpoints and by snapshots."""


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
        auto_pause: bool | None = None,
        pause_mode: PauseMode | None = None,
        checkpoint_bytes: int | None = None,
        paused_at: datetime | None = None,
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

    # snapshots
    async def insert_snapshot(self, record: SnapshotRecord) -> None:
        """Insert; a name already used in the team moves to this snapshot."""
        ...

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    async def find_snapshot(self, team_id: str, ref: str) -> SnapshotRecord | None:
        """The team's snapshot whose id, else whose name, is ``ref``."""
        ...

    async def list_snapshots(self, query: SnapshotQuery) -> list[SnapshotRecord]:
        """Newest first (``created_at``, then ``snapshot_id``, both descending)."""
        ...

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        """False if there was no such snapshot."""
        ...


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
    "Store",
    "Team",
]
