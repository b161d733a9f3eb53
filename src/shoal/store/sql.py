"""SQL store on SQLAlchemy 2 Core: SQLite (pysqlite on worker threads) or PostgreSQL (asyncpg).

Only portable Core constructs are used. Timestamps are integer microseconds since the
epoch (UTC), so ordering, cursors and ``end_at <= now`` are exact on every backend
(SQLite has no real timestamp type). Metadata is kept twice: as JSON on the sandbox
row for reading, and as ``(sandbox_id, key, value)`` rows so the list filter is an
indexed ``EXISTS`` per pair instead of backend-specific JSON operators.

Every method's body is one synchronous function of an ``sa.Connection``, run in a single
transaction. On PostgreSQL it runs through ``AsyncConnection.run_sync`` on the asyncpg
engine. On SQLite it runs on a worker thread with a plain pysqlite engine, so a whole
transaction (BEGIN, statements, COMMIT) costs one hop from the event loop instead of a
hop per statement: the async aiosqlite engine made each write hold an in-process lock
across many loop round trips, and under load writes queued for hundreds of ms behind it.
All writes run on one thread, which is what serialises them (SQLite allows one writer,
and a deferred transaction that reads and then writes can fail with SQLITE_BUSY without
waiting); reads run on a small pool of their own. Cancelling a caller whose write is
still queued drops the write; once it runs, it commits or rolls back whole regardless.
Hot statements are built once at import with bind parameters, so each call hits
SQLAlchemy's compiled cache instead of constructing a new statement.

Schema changes are additive only: ``start()`` creates missing tables and adds missing
columns to existing ones (``ALTER TABLE … ADD COLUMN``, each new column nullable or with a
server default), so a database written by an older Shoal opens without a migration tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from shoal.store.base import (
    COMPUTE_STATES,
    ApiKey,
    Node,
    NodeUsage,
    PauseMode,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    SnapshotQuery,
    SnapshotRecord,
    Team,
)

T = TypeVar("T")

_READ_THREADS = 2
"""SQLite reader threads. Each holds its own connection; more buy little under the GIL."""

log = logging.getLogger(__name__)

metadata_obj = sa.MetaData()

teams = sa.Table(
    "teams",
    metadata_obj,
    sa.Column("team_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata_obj,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("team_id", sa.String(64), nullable=False, index=True),
    sa.Column("prefix", sa.String(16), nullable=False, default=""),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata_obj,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("address", sa.String(1024), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("draining", sa.Boolean, nullable=False),
    sa.Column("cpu_count", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("disk_mb", sa.Integer, nullable=False),
    sa.Column("templates", sa.JSON, nullable=False),
    sa.Column("last_seen_us", sa.BigInteger, nullable=False),
)

sandboxes = sa.Table(
    "sandboxes",
    metadata_obj,
    sa.Column("sandbox_id", sa.String(64), primary_key=True),
    sa.Column("team_id", sa.String(64), nullable=False),
    sa.Column("template_id", sa.String(255), nullable=False),
    sa.Column("alias", sa.String(255), nullable=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("cpu_count", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("disk_mb", sa.Integer, nullable=False),
    sa.Column("access_token", sa.String(128), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("env_vars", sa.JSON, nullable=False),
    sa.Column("auto_pause", sa.Boolean, nullable=False),
    sa.Column("allow_internet_access", sa.Boolean, nullable=True),
    sa.Column("started_us", sa.BigInteger, nullable=False),
    sa.Column("end_us", sa.BigInteger, nullable=False, index=True),
    sa.Column("killed_us", sa.BigInteger, nullable=True),
    # Added with pause/resume (columns added later must be nullable or have a server
    # default: start() adds them to older databases).
    sa.Column("auto_pause_memory", sa.Boolean, nullable=True),
    sa.Column("auto_resume", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("timeout_s", sa.Integer, nullable=True),
    sa.Column("pause_mode", sa.String(16), nullable=True),
    sa.Column("checkpoint_bytes", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("paused_us", sa.BigInteger, nullable=True),
    sa.Index("ix_sandboxes_team_started", "team_id", "started_us", "sandbox_id"),
)

snapshots = sa.Table(
    "snapshots",
    metadata_obj,
    sa.Column("snapshot_id", sa.String(64), primary_key=True),
    sa.Column("team_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("sandbox_id", sa.String(64), nullable=False, index=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    sa.Column("template_id", sa.String(255), nullable=False),
    sa.Column("memory", sa.Boolean, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("cpu_count", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("disk_mb", sa.Integer, nullable=False),
    sa.Column("env_vars", sa.JSON, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_snapshots_team_created", "team_id", "created_us", "snapshot_id"),
    sa.Index("ix_snapshots_team_name", "team_id", "name"),
)

sandbox_metadata = sa.Table(
    "sandbox_metadata",
    metadata_obj,
    sa.Column("sandbox_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Index("ix_sandbox_metadata_kv", "key", "sandbox_id"),
)


def to_us(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime reached the store")
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def _record(row: Any) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=row["sandbox_id"],
        team_id=row["team_id"],
        template_id=row["template_id"],
        alias=row["alias"],
        node_id=row["node_id"],
        state=SandboxState(row["state"]),
        client_id=row["client_id"],
        cpu_count=row["cpu_count"],
        memory_mb=row["memory_mb"],
        disk_mb=row["disk_mb"],
        access_token=row["access_token"],
        metadata=dict(row["metadata"] or {}),
        env_vars=dict(row["env_vars"] or {}),
        auto_pause=bool(row["auto_pause"]),
        allow_internet_access=row["allow_internet_access"],
        started_at=from_us(row["started_us"]),
        end_at=from_us(row["end_us"]),
        killed_at=from_us(row["killed_us"]) if row["killed_us"] is not None else None,
        auto_pause_memory=row["auto_pause_memory"],
        auto_resume=bool(row["auto_resume"]),
        timeout_s=row["timeout_s"],
        pause_mode=_pause_mode(row["pause_mode"]),
        checkpoint_bytes=int(row["checkpoint_bytes"] or 0),
        paused_at=from_us(row["paused_us"]) if row["paused_us"] is not None else None,
    )


def _pause_mode(raw: str | None) -> PauseMode | None:
    if raw == "full":
        return "full"
    if raw == "filesystem":
        return "filesystem"
    return None


def _snapshot(row: Any) -> SnapshotRecord:
    return SnapshotRecord(
        snapshot_id=row["snapshot_id"],
        team_id=row["team_id"],
        name=row["name"],
        sandbox_id=row["sandbox_id"],
        node_id=row["node_id"],
        template_id=row["template_id"],
        memory=bool(row["memory"]),
        size_bytes=int(row["size_bytes"]),
        cpu_count=row["cpu_count"],
        memory_mb=row["memory_mb"],
        disk_mb=row["disk_mb"],
        env_vars=dict(row["env_vars"] or {}),
        created_at=from_us(row["created_us"]),
    )


# Prebuilt statements. Bind parameter names must differ from column names: in an
# INSERT/UPDATE a parameter named after a column becomes that column's SET value.
_s = sandboxes.c
_GET_SANDBOX = sandboxes.select().where(_s.sandbox_id == sa.bindparam("sid"))
_UPDATE_SANDBOX = sandboxes.update().where(_s.sandbox_id == sa.bindparam("sid"))
_UPDATE_SANDBOX_IF = _UPDATE_SANDBOX.where(_s.state.in_(sa.bindparam("expect", expanding=True)))
_DELETE_SANDBOX = sandboxes.delete().where(_s.sandbox_id == sa.bindparam("sid"))
_DELETE_METADATA = sandbox_metadata.delete().where(
    sandbox_metadata.c.sandbox_id == sa.bindparam("sid")
)
_SANDBOXES_ON_NODE = sandboxes.select().where(
    _s.node_id == sa.bindparam("nid"), _s.state.in_(sa.bindparam("states", expanding=True))
)
_NODE_USAGE = (
    sa.select(
        _s.node_id,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(_s.cpu_count), 0),
        sa.func.coalesce(sa.func.sum(_s.memory_mb), 0),
    )
    .where(_s.state.in_(sorted(s.value for s in COMPUTE_STATES)))
    .group_by(_s.node_id)
)
# A resuming sandbox's checkpoint is still on its node until the resume is through.
_CHECKPOINT_USAGE = (
    sa.select(_s.node_id, sa.func.coalesce(sa.func.sum(_s.checkpoint_bytes), 0))
    .where(_s.state.in_([SandboxState.PAUSED.value, SandboxState.RESUMING.value]))
    .group_by(_s.node_id)
)
_SNAPSHOT_USAGE = sa.select(
    snapshots.c.node_id, sa.func.coalesce(sa.func.sum(snapshots.c.size_bytes), 0)
).group_by(snapshots.c.node_id)
_GET_SNAPSHOT = snapshots.select().where(snapshots.c.snapshot_id == sa.bindparam("snid"))
_DELETE_SNAPSHOT = snapshots.delete().where(snapshots.c.snapshot_id == sa.bindparam("snid"))
_TEAM_FOR_KEY = sa.select(api_keys.c.team_id).where(api_keys.c.key_hash == sa.bindparam("kh"))
_UPDATE_NODE = nodes.update().where(nodes.c.node_id == sa.bindparam("nid"))


class SqlStore:
    """:class:`shoal.store.base.Store` over an SQLAlchemy URL.

    ``sqlite+aiosqlite://`` and ``sqlite://`` URLs both select the threaded pysqlite
    backend; any other URL is opened with SQLAlchemy's async engine.

    >>> store = SqlStore("sqlite+aiosqlite:////var/lib/shoal/shoal.db")
    >>> await store.start()
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        self._async_engine: AsyncEngine | None = None
        self._sync_engine: sa.Engine | None = None
        # SQLite only: the one thread that runs every write transaction (so writers are
        # serialised without a lock), and the threads that run reads.
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        if self._sqlite:
            kwargs: dict[str, Any] = {"echo": echo}
            memory = self.url.database in (None, "", ":memory:")
            if memory:
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            self._sync_engine = sa.create_engine(self.url.set(drivername="sqlite"), **kwargs)
            sa.event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="shoal-sqlite-w")
            # WAL lets readers on their own connections run beside the writer, so a read
            # never queues behind a burst of writes. An in-memory database is a single
            # shared connection, which only the writer thread may touch.
            self._readers = (
                self._writer
                if memory
                else ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="shoal-sqlite-r")
            )
        else:
            self._async_engine = create_async_engine(self.url, echo=echo)

    async def start(self) -> None:
        if self._sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        await self._write(metadata_obj.create_all)
        await self._write(_add_missing_columns)

    async def close(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
        if self._sync_engine is not None and self._writer is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._sync_engine.dispose)
            await asyncio.to_thread(self._writer.shutdown)
            if self._readers is not None:
                await asyncio.to_thread(self._readers.shutdown)

    async def _write(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` in one committed transaction (rolled back if it raises)."""
        if self._async_engine is not None:
            async with self._async_engine.begin() as conn:
                return await conn.run_sync(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write_sync, fn)

    async def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        if self._async_engine is not None:
            async with self._async_engine.connect() as conn:
                return await conn.run_sync(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, fn)

    def _write_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return fn(conn)

    def _read_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.connect() as conn:
            return fn(conn)

    # teams and keys

    async def create_team(self, team: Team) -> None:
        row = {"team_id": team.team_id, "name": team.name, "created_us": to_us(team.created_at)}

        def tx(conn: sa.Connection) -> None:
            conn.execute(teams.insert(), row)

        await self._write(tx)

    async def list_teams(self) -> list[Team]:
        def tx(conn: sa.Connection) -> list[Team]:
            rows = conn.execute(teams.select().order_by(teams.c.created_us)).mappings()
            return [
                Team(team_id=r["team_id"], name=r["name"], created_at=from_us(r["created_us"]))
                for r in rows
            ]

        return await self._read(tx)

    async def add_api_key(self, key: ApiKey) -> None:
        row = {
            "key_hash": key.key_hash,
            "team_id": key.team_id,
            "prefix": key.prefix,
            "created_us": to_us(key.created_at),
        }

        def tx(conn: sa.Connection) -> None:
            exists = conn.scalar(
                sa.select(api_keys.c.key_hash).where(api_keys.c.key_hash == key.key_hash)
            )
            if exists is None:
                conn.execute(api_keys.insert(), row)

        with contextlib.suppress(IntegrityError):
            await self._write(tx)

    async def team_for_key(self, key_hash: str) -> str | None:
        def tx(conn: sa.Connection) -> str | None:
            return conn.scalar(_TEAM_FOR_KEY, {"kh": key_hash})

        return await self._read(tx)

    # nodes

    async def upsert_node(self, node: Node) -> None:
        values = {
            "address": node.address,
            "region": node.region,
            "cost": node.cost,
            "draining": node.draining,
            "cpu_count": node.cpu_count,
            "memory_mb": node.memory_mb,
            "disk_mb": node.disk_mb,
            "templates": list(node.templates),
            "last_seen_us": to_us(node.last_seen),
        }

        def tx(conn: sa.Connection) -> None:
            result = conn.execute(_UPDATE_NODE, {"nid": node.node_id, **values})
            if result.rowcount == 0:
                conn.execute(nodes.insert(), {"node_id": node.node_id, **values})

        await self._write(tx)

    async def list_nodes(self) -> list[Node]:
        def tx(conn: sa.Connection) -> list[Node]:
            rows = conn.execute(nodes.select().order_by(nodes.c.node_id)).mappings()
            return [
                Node(
                    node_id=r["node_id"],
                    address=r["address"],
                    region=r["region"],
                    cost=r["cost"],
                    draining=bool(r["draining"]),
                    cpu_count=r["cpu_count"],
                    memory_mb=r["memory_mb"],
                    disk_mb=r["disk_mb"],
                    templates=tuple(r["templates"] or ()),
                    last_seen=from_us(r["last_seen_us"]),
                )
                for r in rows
            ]

        return await self._read(tx)

    # sandboxes

    async def insert_sandbox(self, record: SandboxRecord) -> None:
        row = {
            "sandbox_id": record.sandbox_id,
            "team_id": record.team_id,
            "template_id": record.template_id,
            "alias": record.alias,
            "node_id": record.node_id,
            "state": record.state.value,
            "client_id": record.client_id,
            "cpu_count": record.cpu_count,
            "memory_mb": record.memory_mb,
            "disk_mb": record.disk_mb,
            "access_token": record.access_token,
            "metadata": dict(record.metadata),
            "env_vars": dict(record.env_vars),
            "auto_pause": record.auto_pause,
            "allow_internet_access": record.allow_internet_access,
            "started_us": to_us(record.started_at),
            "end_us": to_us(record.end_at),
            "killed_us": to_us(record.killed_at) if record.killed_at else None,
            "auto_pause_memory": record.auto_pause_memory,
            "auto_resume": record.auto_resume,
            "timeout_s": record.timeout_s,
            "pause_mode": record.pause_mode,
            "checkpoint_bytes": record.checkpoint_bytes,
            "paused_us": to_us(record.paused_at) if record.paused_at else None,
        }
        meta = [
            {"sandbox_id": record.sandbox_id, "key": k, "value": v}
            for k, v in record.metadata.items()
        ]

        def tx(conn: sa.Connection) -> None:
            conn.execute(sandboxes.insert(), row)
            if meta:
                conn.execute(sandbox_metadata.insert(), meta)

        await self._write(tx)

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        def tx(conn: sa.Connection) -> SandboxRecord | None:
            row = conn.execute(_GET_SANDBOX, {"sid": sandbox_id}).mappings().first()
            return _record(row) if row is not None else None

        return await self._read(tx)

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
        params: dict[str, Any] = {"sid": sandbox_id}
        if state is not None:
            params["state"] = state.value
        if end_at is not None:
            params["end_us"] = to_us(end_at)
        if started_at is not None:
            params["started_us"] = to_us(started_at)
        if killed_at is not None:
            params["killed_us"] = to_us(killed_at)
        if cpu_count is not None:
            params["cpu_count"] = cpu_count
        if memory_mb is not None:
            params["memory_mb"] = memory_mb
        if auto_pause is not None:
            params["auto_pause"] = auto_pause
        if pause_mode is not None:
            params["pause_mode"] = pause_mode
        if checkpoint_bytes is not None:
            params["checkpoint_bytes"] = checkpoint_bytes
        if paused_at is not None:
            params["paused_us"] = to_us(paused_at)
        if len(params) == 1:
            # Nothing to set: a no-op assignment still reports whether the row matched.
            params["sandbox_id"] = sandbox_id
        stmt = _UPDATE_SANDBOX
        if expect_states is not None:
            stmt = _UPDATE_SANDBOX_IF
            params["expect"] = sorted(s.value for s in expect_states)

        def tx(conn: sa.Connection) -> bool:
            return bool(conn.execute(stmt, params).rowcount)

        return await self._write(tx)

    async def delete_sandbox(self, sandbox_id: str) -> None:
        def tx(conn: sa.Connection) -> None:
            conn.execute(_DELETE_METADATA, {"sid": sandbox_id})
            conn.execute(_DELETE_SANDBOX, {"sid": sandbox_id})

        await self._write(tx)

    async def list_sandboxes(self, query: SandboxQuery) -> list[SandboxRecord]:
        c = sandboxes.c
        stmt = sandboxes.select().where(
            c.team_id == query.team_id, c.state.in_([s.value for s in query.states])
        )
        for key, value in query.metadata.items():
            m = sandbox_metadata.c
            stmt = stmt.where(
                sa.exists().where(m.sandbox_id == c.sandbox_id, m.key == key, m.value == value)
            )
        if query.started_after is not None:
            stmt = stmt.where(c.started_us >= to_us(query.started_after))
        if query.template is not None:
            stmt = stmt.where(sa.or_(c.template_id == query.template, c.alias == query.template))
        if query.alive_at is not None:
            stmt = stmt.where(
                sa.or_(c.state != SandboxState.RUNNING.value, c.end_us > to_us(query.alive_at))
            )
        if query.after is not None:
            at, sid = to_us(query.after.started_at), query.after.sandbox_id
            if query.order == "asc":
                stmt = stmt.where(
                    sa.or_(c.started_us > at, sa.and_(c.started_us == at, c.sandbox_id > sid))
                )
            else:
                stmt = stmt.where(
                    sa.or_(c.started_us < at, sa.and_(c.started_us == at, c.sandbox_id < sid))
                )
        if query.order == "asc":
            stmt = stmt.order_by(c.started_us.asc(), c.sandbox_id.asc())
        else:
            stmt = stmt.order_by(c.started_us.desc(), c.sandbox_id.desc())
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        return await self._read(_records(stmt))

    async def sandboxes_on_node(
        self, node_id: str, states: frozenset[SandboxState]
    ) -> list[SandboxRecord]:
        params = {"nid": node_id, "states": sorted(s.value for s in states)}
        return await self._read(_records(_SANDBOXES_ON_NODE, params))

    async def due_sandboxes(self, now: datetime, limit: int = 100) -> list[SandboxRecord]:
        c = sandboxes.c
        stmt = (
            sandboxes.select()
            .where(
                sa.or_(
                    sa.and_(c.state == SandboxState.RUNNING.value, c.end_us <= to_us(now)),
                    c.state == SandboxState.KILLING.value,
                )
            )
            .order_by(c.end_us)
            .limit(limit)
        )
        return await self._read(_records(stmt))

    async def node_usage(self) -> dict[str, NodeUsage]:
        def tx(conn: sa.Connection) -> dict[str, NodeUsage]:
            held: dict[str, int] = {}
            for query in (_CHECKPOINT_USAGE, _SNAPSHOT_USAGE):
                for node_id, size in conn.execute(query).all():
                    held[node_id] = held.get(node_id, 0) + int(size)
            usage = {
                node_id: NodeUsage(
                    sandboxes=int(n),
                    cpu_count=int(cpu),
                    memory_mb=int(mem),
                    checkpoint_bytes=held.pop(node_id, 0),
                )
                for node_id, n, cpu, mem in conn.execute(_NODE_USAGE).all()
            }
            for node_id, size in held.items():
                usage[node_id] = NodeUsage(checkpoint_bytes=size)
            return usage

        return await self._read(tx)

    async def purge_killed(self, before: datetime) -> int:
        c = sandboxes.c
        doomed = sa.select(c.sandbox_id).where(
            c.state == SandboxState.KILLED.value, c.killed_us < to_us(before)
        )

        def tx(conn: sa.Connection) -> int:
            conn.execute(sandbox_metadata.delete().where(sandbox_metadata.c.sandbox_id.in_(doomed)))
            result = conn.execute(sandboxes.delete().where(c.sandbox_id.in_(doomed)))
            return int(result.rowcount or 0)

        return await self._write(tx)

    # snapshots

    async def insert_snapshot(self, record: SnapshotRecord) -> None:
        row = {
            "snapshot_id": record.snapshot_id,
            "team_id": record.team_id,
            "name": record.name,
            "sandbox_id": record.sandbox_id,
            "node_id": record.node_id,
            "template_id": record.template_id,
            "memory": record.memory,
            "size_bytes": record.size_bytes,
            "cpu_count": record.cpu_count,
            "memory_mb": record.memory_mb,
            "disk_mb": record.disk_mb,
            "env_vars": dict(record.env_vars),
            "created_us": to_us(record.created_at),
        }
        c = snapshots.c

        def tx(conn: sa.Connection) -> None:
            if record.name is not None:
                # The name moves to the newest snapshot, as a template's tag moves to its
                # newest build; the older snapshot keeps its id.
                conn.execute(
                    snapshots.update()
                    .where(c.team_id == record.team_id, c.name == record.name)
                    .values(name=None)
                )
            conn.execute(snapshots.insert(), row)

        await self._write(tx)

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        def tx(conn: sa.Connection) -> SnapshotRecord | None:
            row = conn.execute(_GET_SNAPSHOT, {"snid": snapshot_id}).mappings().first()
            return _snapshot(row) if row is not None else None

        return await self._read(tx)

    async def find_snapshot(self, team_id: str, ref: str) -> SnapshotRecord | None:
        c = snapshots.c
        stmt = (
            snapshots.select()
            .where(c.team_id == team_id, sa.or_(c.snapshot_id == ref, c.name == ref))
            # The id wins over a name that happens to equal another snapshot's id.
            .order_by(sa.case((c.snapshot_id == ref, 0), else_=1))
            .limit(1)
        )

        def tx(conn: sa.Connection) -> SnapshotRecord | None:
            row = conn.execute(stmt).mappings().first()
            return _snapshot(row) if row is not None else None

        return await self._read(tx)

    async def list_snapshots(self, query: SnapshotQuery) -> list[SnapshotRecord]:
        c = snapshots.c
        stmt = snapshots.select().where(c.team_id == query.team_id)
        if query.sandbox_id is not None:
            stmt = stmt.where(c.sandbox_id == query.sandbox_id)
        if query.ref is not None:
            stmt = stmt.where(sa.or_(c.snapshot_id == query.ref, c.name == query.ref))
        if query.after is not None:
            at, sid = to_us(query.after.created_at), query.after.snapshot_id
            stmt = stmt.where(
                sa.or_(c.created_us < at, sa.and_(c.created_us == at, c.snapshot_id < sid))
            )
        stmt = stmt.order_by(c.created_us.desc(), c.snapshot_id.desc())
        if query.limit is not None:
            stmt = stmt.limit(query.limit)

        def tx(conn: sa.Connection) -> list[SnapshotRecord]:
            return [_snapshot(r) for r in conn.execute(stmt).mappings()]

        return await self._read(tx)

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        def tx(conn: sa.Connection) -> bool:
            return bool(conn.execute(_DELETE_SNAPSHOT, {"snid": snapshot_id}).rowcount)

        return await self._write(tx)


def _add_missing_columns(conn: sa.Connection) -> None:
    """Bring tables an older Shoal created up to this schema (columns only ever added)."""
    inspector = sa.inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table in metadata_obj.sorted_tables:
        present = {col["name"] for col in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = (
                f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                f"{column.type.compile(dialect=conn.dialect)}"
            )
            default = column.server_default
            if isinstance(default, sa.DefaultClause):
                arg = default.arg
                value = (
                    arg
                    if isinstance(arg, str)
                    else str(
                        arg.compile(  # type: ignore[union-attr]
                            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
                        )
                    )
                )
                ddl += f" DEFAULT {value} NOT NULL"
            elif not column.nullable:
                raise RuntimeError(f"column {table.name}.{column.name} needs a server default")
            log.info("store: adding column %s.%s", table.name, column.name)
            conn.execute(sa.text(ddl))


def _records(
    stmt: sa.Executable, params: dict[str, Any] | None = None
) -> Callable[[sa.Connection], list[SandboxRecord]]:
    def tx(conn: sa.Connection) -> list[SandboxRecord]:
        return [_record(r) for r in conn.execute(stmt, params).mappings()]

    return tx


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


__all__ = ["SqlStore", "from_us", "to_us"]
