"""The store's side of pause, resume and snapshots, on SQLite and PostgreSQL: the new
sandbox fields, snapshot rows (names, filters, pages), disk accounting, and opening a
database written before these columns existed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shoal.store import (
    SandboxRecord,
    SandboxState,
    SnapshotCursor,
    SnapshotQuery,
    SnapshotRecord,
    SqlStore,
)
from shoal.store.sql import sandboxes

T0 = datetime(2026, 4, 1, 8, 30, 0, 123456, tzinfo=UTC)

PAUSE_COLUMNS = {
    "auto_pause_memory",
    "auto_resume",
    "timeout_s",
    "pause_mode",
    "checkpoint_bytes",
    "paused_us",
}


def sandbox(sid: str, **kw: object) -> SandboxRecord:
    base = SandboxRecord(
        sandbox_id=sid,
        team_id="t1",
        template_id="base",
        node_id="n1",
        state=SandboxState.RUNNING,
        started_at=T0,
        end_at=T0 + timedelta(seconds=300),
        cpu_count=2,
        memory_mb=512,
        disk_mb=1024,
        access_token="tok",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def snapshot(snap: str, *, at: datetime = T0, **kw: object) -> SnapshotRecord:
    base = SnapshotRecord(
        snapshot_id=snap,
        team_id="t1",
        sandbox_id="src",
        node_id="n1",
        template_id="base",
        memory=True,
        size_bytes=1000,
        created_at=at,
        cpu_count=2,
        memory_mb=512,
        disk_mb=1024,
        env_vars={"A": "1"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def test_pause_fields_roundtrip_and_update(store: SqlStore) -> None:
    r = sandbox(
        "a",
        auto_pause=True,
        auto_pause_memory=False,
        auto_resume=True,
        timeout_s=42,
    )
    await store.insert_sandbox(r)
    assert await store.get_sandbox("a") == r
    plain = sandbox("b")
    await store.insert_sandbox(plain)
    got = await store.get_sandbox("b")
    assert got is not None
    assert (got.auto_pause_memory, got.auto_resume, got.pause_mode, got.paused_at) == (
        None,
        False,
        None,
        None,
    )

    began = T0 + timedelta(seconds=5)
    assert await store.update_sandbox(
        "a",
        state=SandboxState.PAUSING,
        paused_at=began,
        expect_states=frozenset({SandboxState.RUNNING}),
    )
    assert await store.update_sandbox(
        "a",
        state=SandboxState.PAUSED,
        pause_mode="filesystem",
        checkpoint_bytes=3 * 2**30,
        expect_states=frozenset({SandboxState.PAUSING}),
    )
    assert await store.update_sandbox("a", auto_pause=False)
    got = await store.get_sandbox("a")
    assert got is not None
    assert got.state is SandboxState.PAUSED and got.pause_mode == "filesystem"
    assert got.checkpoint_bytes == 3 * 2**30 and got.paused_at == began
    assert got.auto_pause is False


async def test_paused_sandboxes_never_fall_due(store: SqlStore) -> None:
    await store.insert_sandbox(sandbox("p", state=SandboxState.PAUSED, end_at=T0))
    await store.insert_sandbox(sandbox("q", state=SandboxState.PAUSING, end_at=T0))
    await store.insert_sandbox(sandbox("r", end_at=T0))
    due = await store.due_sandboxes(T0 + timedelta(days=1))
    assert [d.sandbox_id for d in due] == ["r"]


async def test_usage_counts_checkpoints_not_cpu_of_paused(store: SqlStore) -> None:
    await store.insert_sandbox(sandbox("run"))
    await store.insert_sandbox(sandbox("paused", state=SandboxState.PAUSED, checkpoint_bytes=700))
    await store.insert_sandbox(sandbox("back", state=SandboxState.RESUMING, checkpoint_bytes=50))
    await store.insert_sandbox(sandbox("gone", state=SandboxState.KILLED, checkpoint_bytes=10**9))
    await store.insert_snapshot(snapshot("s1", size_bytes=5))
    await store.insert_snapshot(snapshot("s2", node_id="n2", size_bytes=9))
    usage = await store.node_usage()
    assert usage["n1"].sandboxes == 2  # running + resuming
    assert usage["n1"].cpu_count == 4
    assert usage["n1"].checkpoint_bytes == 700 + 50 + 5
    assert usage["n2"].sandboxes == 0 and usage["n2"].checkpoint_bytes == 9
    assert await store.delete_snapshot("s2")
    assert "n2" not in await store.node_usage()


async def test_snapshot_roundtrip_find_and_delete(store: SqlStore) -> None:
    s = snapshot("snap-1", name="golden")
    await store.insert_snapshot(s)
    assert await store.get_snapshot("snap-1") == s
    assert await store.get_snapshot("nope") is None
    assert await store.find_snapshot("t1", "snap-1") == s
    assert await store.find_snapshot("t1", "golden") == s
    assert await store.find_snapshot("t2", "golden") is None
    # An id wins over a name that happens to be the same string.
    other = snapshot("golden", at=T0 + timedelta(seconds=1))
    await store.insert_snapshot(other)
    assert await store.find_snapshot("t1", "golden") == other
    assert await store.delete_snapshot("snap-1")
    assert not await store.delete_snapshot("snap-1")
    assert await store.get_snapshot("snap-1") is None


async def test_names_move_to_the_newest_snapshot_within_a_team(store: SqlStore) -> None:
    await store.insert_snapshot(snapshot("a", name="n"))
    await store.insert_snapshot(snapshot("t2a", team_id="t2", name="n"))
    await store.insert_snapshot(snapshot("b", name="n", at=T0 + timedelta(seconds=1)))
    a, b, t2a = [await store.get_snapshot(i) for i in ("a", "b", "t2a")]
    assert a is not None and a.name is None
    assert b is not None and b.name == "n"
    assert t2a is not None and t2a.name == "n"  # another team's name is its own


async def test_snapshot_list_filters_order_and_pages(store: SqlStore) -> None:
    for i in range(5):
        await store.insert_snapshot(
            snapshot(f"s{i}", at=T0 + timedelta(seconds=i // 2), sandbox_id=f"src{i % 2}")
        )
    await store.insert_snapshot(snapshot("foreign", team_id="t2"))
    q = SnapshotQuery(team_id="t1")
    newest_first = [r.snapshot_id for r in await store.list_snapshots(q)]
    assert newest_first == ["s4", "s3", "s2", "s1", "s0"]  # ties: by id, descending
    by_source = replace(q, sandbox_id="src1")
    assert [r.snapshot_id for r in await store.list_snapshots(by_source)] == ["s3", "s1"]
    assert [r.snapshot_id for r in await store.list_snapshots(replace(q, ref="s2"))] == ["s2"]
    page = replace(q, limit=2, after=SnapshotCursor(T0 + timedelta(seconds=1), "s3"))
    assert [r.snapshot_id for r in await store.list_snapshots(page)] == ["s2", "s1"]


async def test_a_database_from_before_pause_opens_and_gains_the_columns(store_url: str) -> None:
    """Create the sandboxes table as an older Shoal did (no pause columns, no snapshots
    table), put a row in it, then open it with today's store."""
    old = sa.MetaData()
    kept = [c._copy() for c in sandboxes.columns if c.name not in PAUSE_COLUMNS]
    table = sa.Table("sandboxes", old, *kept)
    row = {
        "sandbox_id": "old",
        "team_id": "t1",
        "template_id": "base",
        "alias": "base",
        "node_id": "n1",
        "state": "running",
        "client_id": "n1",
        "cpu_count": 2,
        "memory_mb": 512,
        "disk_mb": 1024,
        "access_token": "tok",
        "metadata": {},
        "env_vars": {},
        "auto_pause": False,
        "allow_internet_access": None,
        "started_us": 1,
        "end_us": 2,
        "killed_us": None,
    }
    if store_url.startswith("sqlite"):
        Path(store_url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(store_url.replace("+aiosqlite", ""))
        with engine.begin() as conn:
            old.create_all(conn)
            conn.execute(table.insert(), row)
            before = set(sa.inspect(conn).get_table_names())
        engine.dispose()
    else:
        async_engine = create_async_engine(store_url)
        try:
            async with async_engine.begin() as aconn:
                await aconn.run_sync(old.create_all)
                await aconn.execute(table.insert(), row)
                before = set(await aconn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await async_engine.dispose()
    assert "snapshots" not in before

    s = SqlStore(store_url)
    await s.start()
    try:
        got = await s.get_sandbox("old")
        assert got is not None
        assert (got.auto_resume, got.checkpoint_bytes, got.pause_mode, got.timeout_s) == (
            False,
            0,
            None,
            None,
        )
        assert await s.update_sandbox(
            "old", state=SandboxState.PAUSED, pause_mode="full", checkpoint_bytes=7
        )
        got = await s.get_sandbox("old")
        assert got is not None and got.pause_mode == "full" and got.checkpoint_bytes == 7
        await s.insert_snapshot(snapshot("new"))
        assert await s.get_snapshot("new") == snapshot("new")
        await s.insert_sandbox(sandbox("fresh", auto_resume=True))
        fresh = await s.get_sandbox("fresh")
        assert fresh is not None and fresh.auto_resume is True
    finally:
        await s.close()
