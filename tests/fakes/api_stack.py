"""An API stack for tests: the real app and a real SQLite store; only the nodes are fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from fakes.node_agent import FakeNode
from shoal.api import NodeRegistry, build_api_app
from shoal.config import Settings
from shoal.store import SqlStore


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Stack:
    app: FastAPI
    http: httpx.AsyncClient
    store: SqlStore
    registry: NodeRegistry
    settings: Settings
    clock: FakeClock
    key: str
    nodes: dict[str, FakeNode] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-KEY": self.key}

    async def create(self, **body: Any) -> dict[str, Any]:
        payload = {"templateID": "base", "metadata": {}, "envVars": {}, **body}
        r = await self.http.post("/v2/sandboxes", json=payload, headers=self.auth)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data


StackFactory = Callable[..., AbstractAsyncContextManager[Stack]]


def stack_factory(tmp_path: Path) -> StackFactory:
    @asynccontextmanager
    async def make(
        nodes: list[FakeNode] | None = None,
        *,
        db: Path | None = None,
        clock: FakeClock | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Stack]:
        settings = Settings(
            data_dir=tmp_path,
            database_url=f"sqlite+aiosqlite:///{db or tmp_path / 'shoal.db'}",
            node_token="node-secret",
            domain="shoal.test",
            **overrides,
        )
        clock = clock or FakeClock()
        store = SqlStore(settings.db_url)
        fakes = nodes if nodes is not None else [FakeNode()]
        registry = NodeRegistry()
        for node in fakes:
            registry.add_local(node.info(), node.client(), clock())
        app = build_api_app(settings, store, registry, clock=clock, reaper_interval=0.05)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://api.test") as http,
            ):
                yield Stack(
                    app=app,
                    http=http,
                    store=store,
                    registry=registry,
                    settings=settings,
                    clock=clock,
                    key=app.state.api_key,
                    nodes={n.node_id: n for n in fakes},
                )
        finally:
            await registry.aclose()
            await store.close()

    return make


__all__ = ["FakeClock", "Stack", "StackFactory", "stack_factory"]
