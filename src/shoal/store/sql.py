"""SQL store on SQLAlchemy 2 async Core: SQLite (aiosqlite) or PostgreSQL (asyncpg).

Only portable Core constructs are used. Timestamps are integer microseconds since the
epoch (UTC), so ordering, cursors and ``end_at <= now`` are exact on every backend
(SQLite has no real timestamp type). Metadata is kept twice: as JSON on the sandbox
row for reading, and as ``(sandbox_id, key, value)`` rows so the list filter is an
indexed ``EXISTS`` per pair instead of backend-specific JSON operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from shoal.store.base import (
    LIVE_STATES,
    ApiKey,
    Node,
    NodeUsage,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    Team,
)

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
    sa.Index("ix_sandboxes_team_started", "team_id", "started_us", "sandbox_id"),
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
    )


class SqlStore:
    """:class:`shoal.store.base.Store` over an SQLAlchemy URL.

    >>> store = SqlStore("sqlite+aiosqlite:////var/lib/shoal/shoal.db")
    >>> await store.start()
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self._sqlite and self.url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self._sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # SQLite allows one writer; a deferred transaction that reads and then writes can
        # fail with SQLITE_BUSY without waiting, so writes are serialized in-process.
        self._write_lock = asyncio.Lock() if self._sqlite else None

    async def start(self) -> None:
        if self._sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata_obj.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    # teams and keys

    async def create_team(self, team: Team) -> None:
        async with self._write() as conn:
            await conn.execute(
                teams.insert().values(
                    team_id=team.team_id, name=team.name, created_us=to_us(team.created_at)
                )
            )

    async def list_teams(self) -> list[Team]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(teams.select().order_by(teams.c.created_us))).mappings()
            return [
                Team(team_id=r["team_id"], name=r["name"], created_at=from_us(r["created_us"]))
                for r in rows
            ]

    async def add_api_key(self, key: ApiKey) -> None:
        with contextlib.suppress(IntegrityError):
            async with self._write() as conn:
                exists = await conn.scalar(
                    sa.select(api_keys.c.key_hash).where(api_keys.c.key_hash == key.key_hash)
                )
                if exists is None:
                    await conn.execute(
                        api_keys.insert().values(
                            key_hash=key.key_hash,
                            team_id=key.team_id,
                            prefix=key.prefix,
                            created_us=to_us(key.created_at),
                        )
                    )

    async def team_for_key(self, key_hash: str) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(
                sa.select(api_keys.c.team_id).where(api_keys.c.key_hash == key_hash)
            )

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
        async with self._write() as conn:
            result = await conn.execute(
                nodes.update().where(nodes.c.node_id == node.node_id).values(**values)
            )
            if result.rowcount == 0:
                await conn.execute(nodes.insert().values(node_id=node.node_id, **values))

    async def list_nodes(self) -> list[Node]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(nodes.select().order_by(nodes.c.node_id))).mappings()
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

    # sandboxes

    async def insert_sandbox(self, record: SandboxRecord) -> None:
        async with self._write() as conn:
            await conn.execute(
                sandboxes.insert().values(
                    sandbox_id=record.sandbox_id,
                    team_id=record.team_id,
                    template_id=record.template_id,
                    alias=record.alias,
                    node_id=record.node_id,
                    state=record.state.value,
                    client_id=record.client_id,
                    cpu_count=record.cpu_count,
                    memory_mb=record.memory_mb,
                    disk_mb=record.disk_mb,
                    access_token=record.access_token,
                    metadata=dict(record.metadata),
                    env_vars=dict(record.env_vars),
                    auto_pause=record.auto_pause,
                    allow_internet_access=record.allow_internet_access,
                    started_us=to_us(record.started_at),
                    end_us=to_us(record.end_at),
                    killed_us=to_us(record.killed_at) if record.killed_at else None,
                )
            )
            if record.metadata:
                await conn.execute(
                    sandbox_metadata.insert(),
                    [
                        {"sandbox_id": record.sandbox_id, "key": k, "value": v}
                        for k, v in record.metadata.items()
                    ],
                )

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sandboxes.select().where(sandboxes.c.sandbox_id == sandbox_id)))
                .mappings()
                .first()
            )
            return _record(row) if row is not None else None

    async def update_sandbox(
        self,
        sandbox_id: str,
        *,
        state: SandboxState | None = None,
        end_at: datetime | None = None,
        started_at: datetime | None = None,
        killed_at: datetime | None = None,
        expect_states: frozenset[SandboxState] | None = None,
    ) -> bool:
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = state.value
        if end_at is not None:
            values["end_us"] = to_us(end_at)
        if started_at is not None:
            values["started_us"] = to_us(started_at)
        if killed_at is not None:
            values["killed_us"] = to_us(killed_at)
        stmt = sandboxes.update().where(sandboxes.c.sandbox_id == sandbox_id)
        if expect_states is not None:
            stmt = stmt.where(sandboxes.c.state.in_([s.value for s in expect_states]))
        if not values:
            values["sandbox_id"] = sandbox_id
        async with self._write() as conn:
            result = await conn.execute(stmt.values(**values))
            return bool(result.rowcount)

    async def delete_sandbox(self, sandbox_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                sandbox_metadata.delete().where(sandbox_metadata.c.sandbox_id == sandbox_id)
            )
            await conn.execute(sandboxes.delete().where(sandboxes.c.sandbox_id == sandbox_id))

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
        async with self.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(stmt)).mappings()]

    async def sandboxes_on_node(
        self, node_id: str, states: frozenset[SandboxState]
    ) -> list[SandboxRecord]:
        stmt = sandboxes.select().where(
            sandboxes.c.node_id == node_id, sandboxes.c.state.in_([s.value for s in states])
        )
        async with self.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(stmt)).mappings()]

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
        async with self.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(stmt)).mappings()]

    async def node_usage(self) -> dict[str, NodeUsage]:
        c = sandboxes.c
        stmt = (
            sa.select(
                c.node_id,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(c.cpu_count), 0),
                sa.func.coalesce(sa.func.sum(c.memory_mb), 0),
            )
            .where(c.state.in_([s.value for s in LIVE_STATES]))
            .group_by(c.node_id)
        )
        async with self.engine.connect() as conn:
            return {
                node_id: NodeUsage(sandboxes=int(n), cpu_count=int(cpu), memory_mb=int(mem))
                for node_id, n, cpu, mem in (await conn.execute(stmt)).all()
            }

    async def purge_killed(self, before: datetime) -> int:
        c = sandboxes.c
        doomed = sa.select(c.sandbox_id).where(
            c.state == SandboxState.KILLED.value, c.killed_us < to_us(before)
        )
        async with self._write() as conn:
            await conn.execute(
                sandbox_metadata.delete().where(sandbox_metadata.c.sandbox_id.in_(doomed))
            )
            result = await conn.execute(sandboxes.delete().where(c.sandbox_id.in_(doomed)))
            return int(result.rowcount or 0)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


__all__ = ["SqlStore", "from_us", "to_us"]
