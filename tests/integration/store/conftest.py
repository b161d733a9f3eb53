"""The ``store`` fixture: every store test runs on SQLite and on a real PostgreSQL server
(a private one, started once per session; root only)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.postgres import postgres_server

from shoal.store import SqlStore


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a private PostgreSQL server")
    with postgres_server() as url:
        yield url


async def reset_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.root)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL on each backend (PostgreSQL's schema is reset per test)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'shoal.db'}"
    url: str = request.getfixturevalue("postgres_url")
    await reset_postgres(url)
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(store_url)
    await s.start()
    await s.start()  # idempotent
    try:
        yield s
    finally:
        await s.close()
