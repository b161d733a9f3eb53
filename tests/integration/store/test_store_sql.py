"""The SQL store on SQLite and on a real PostgreSQL server: round trips, filters,
cursors, due sandboxes, usage. Every test runs on both backends."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from shoal.store import (
    ApiKey,
    Cursor,
    Node,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    SqlStore,
    Team,
)
from shoal.store.sql import from_us, to_us

T0 = datetime(2026, 3, 1, 12, 0, 0, 250001, tzinfo=UTC)


def rec(sid: str, *, at: datetime = T0, **kw: object) -> SandboxRecord:
    base = SandboxRecord(
        sandbox_id=sid,
        team_id="t1",
        template_id="base",
        alias="base",
        node_id="n1",
        state=SandboxState.RUNNING,
        started_at=at,
        end_at=at + timedelta(seconds=300),
        cpu_count=2,
        memory_mb=512,
        disk_mb=1024,
        access_token="tok",
        metadata={"k": "v"},
        env_vars={"A": "1"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_microsecond_time_roundtrip() -> None:
    assert from_us(to_us(T0)) == T0
    with pytest.raises(ValueError):
        to_us(datetime(2026, 1, 1))


async def test_sandbox_roundtrip_and_update(store: SqlStore) -> None:
    r = rec("a", metadata={"x y": "é&="})
    await store.insert_sandbox(r)
    assert await store.get_sandbox("a") == r
    assert await store.get_sandbox("zzz") is None
    ok = await store.update_sandbox(
        "a", state=SandboxState.KILLING, expect_states=frozenset({SandboxState.RUNNING})
    )
    assert ok
    again = await store.update_sandbox(
        "a", state=SandboxState.KILLING, expect_states=frozenset({SandboxState.RUNNING})
    )
    assert not again
    got = await store.get_sandbox("a")
    assert got is not None and got.state is SandboxState.KILLING


async def test_list_filters_and_cursor(store: SqlStore) -> None:
    for i in range(5):
        await store.insert_sandbox(
            rec(f"s{i}", at=T0 + timedelta(seconds=i), metadata={"i": str(i % 2)})
        )
    await store.insert_sandbox(rec("other", team_id="t2"))
    await store.insert_sandbox(rec("dead", state=SandboxState.KILLED))

    q = SandboxQuery(team_id="t1")
    assert [r.sandbox_id for r in await store.list_sandboxes(q)] == ["s4", "s3", "s2", "s1", "s0"]
    asc = replace(q, order="asc", limit=2, after=Cursor(T0 + timedelta(seconds=1), "s1"))
    assert [r.sandbox_id for r in await store.list_sandboxes(asc)] == ["s2", "s3"]
    meta = replace(q, metadata={"i": "1"})
    assert [r.sandbox_id for r in await store.list_sandboxes(meta)] == ["s3", "s1"]
    after = replace(q, started_after=T0 + timedelta(seconds=3))
    assert [r.sandbox_id for r in await store.list_sandboxes(after)] == ["s4", "s3"]
    alive = replace(q, alive_at=T0 + timedelta(seconds=302))
    assert [r.sandbox_id for r in await store.list_sandboxes(alive)] == ["s4", "s3"]
    assert await store.list_sandboxes(replace(q, template="nope")) == []


async def test_due_usage_and_purge(store: SqlStore) -> None:
    await store.insert_sandbox(rec("old", end_at=T0))
    await store.insert_sandbox(rec("new", end_at=T0 + timedelta(hours=1)))
    await store.insert_sandbox(rec("pending", state=SandboxState.KILLING))
    await store.insert_sandbox(rec("gone", state=SandboxState.KILLED, killed_at=T0))
    due = {r.sandbox_id for r in await store.due_sandboxes(T0)}
    assert due == {"old", "pending"}
    usage = await store.node_usage()
    assert usage["n1"].sandboxes == 3 and usage["n1"].cpu_count == 6
    assert await store.purge_killed(T0 + timedelta(seconds=1)) == 1
    assert await store.get_sandbox("gone") is None
    await store.delete_sandbox("old")
    assert await store.get_sandbox("old") is None


async def test_teams_keys_nodes(store: SqlStore) -> None:
    await store.create_team(Team("t1", "one", T0))
    await store.add_api_key(ApiKey("h" * 64, "t1", T0))
    await store.add_api_key(ApiKey("h" * 64, "t1", T0))  # duplicate: no error
    assert await store.team_for_key("h" * 64) == "t1"
    assert await store.team_for_key("x") is None
    assert [t.team_id for t in await store.list_teams()] == ["t1"]
    n = Node("n1", "http://a", last_seen=T0, templates=("base",), cpu_count=4)
    await store.upsert_node(n)
    await store.upsert_node(replace(n, address="http://b"))
    assert await store.list_nodes() == [replace(n, address="http://b")]


async def test_update_without_fields_reports_whether_the_row_exists(store: SqlStore) -> None:
    await store.insert_sandbox(rec("a"))
    assert await store.update_sandbox("a")
    assert not await store.update_sandbox("missing")
    assert not await store.update_sandbox("missing", state=SandboxState.KILLED)
    ended = T0 + timedelta(hours=2)
    assert await store.update_sandbox("a", end_at=ended, killed_at=ended)
    got = await store.get_sandbox("a")
    assert got is not None and got.end_at == ended and got.killed_at == ended
    assert got.state is SandboxState.RUNNING


async def test_concurrent_writes_all_land_and_guarded_updates_race_once(store: SqlStore) -> None:
    ids = [f"c{i}" for i in range(40)]
    await asyncio.gather(
        *(store.insert_sandbox(rec(i, node_id=f"n{n % 2}")) for n, i in enumerate(ids))
    )
    usage = await store.node_usage()
    assert {k: v.sandboxes for k, v in usage.items()} == {"n0": 20, "n1": 20}

    # Many tasks try the same guarded transition on each sandbox at once: exactly one wins.
    running = frozenset({SandboxState.RUNNING})
    wins = await asyncio.gather(
        *(
            store.update_sandbox(i, state=SandboxState.KILLING, expect_states=running)
            for i in ids
            for _ in range(3)
        ),
        *(store.get_sandbox(i) for i in ids),
    )
    assert wins[: 3 * len(ids)].count(True) == len(ids)
    for i in ids:
        got = await store.get_sandbox(i)
        assert got is not None and got.state is SandboxState.KILLING


async def test_failed_write_raises_and_leaves_the_store_usable(store: SqlStore) -> None:
    await store.insert_sandbox(rec("dup", metadata={"k": "first"}))
    with pytest.raises(IntegrityError):
        await store.insert_sandbox(rec("dup", metadata={"k": "second"}))
    q = SandboxQuery(team_id="t1", metadata={"k": "second"})
    assert await store.list_sandboxes(q) == []
    await store.insert_sandbox(rec("next"))
    assert await store.get_sandbox("next") is not None


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite:///:memory:"])
async def test_in_memory_sqlite(url: str) -> None:
    s = SqlStore(url)
    await s.start()
    try:
        await asyncio.gather(*(s.insert_sandbox(rec(f"m{i}")) for i in range(10)))
        assert len(await s.list_sandboxes(SandboxQuery(team_id="t1"))) == 10
        assert await s.get_sandbox("m3") == rec("m3")
    finally:
        await s.close()


async def test_plain_sqlite_url(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'plain.db'}")
    await s.start()
    try:
        await s.insert_sandbox(rec("p"))
        assert await s.get_sandbox("p") == rec("p")
    finally:
        await s.close()
    reopened = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    await reopened.start()
    try:
        assert await reopened.get_sandbox("p") == rec("p")
    finally:
        await reopened.close()
