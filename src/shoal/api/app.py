"""The control-plane ASGI app.

    >>> store = SqlStore(settings.db_url)
    >>> registry = NodeRegistry(client_factory=http_client_factory(settings.node_token))
    >>> app = build_api_app(settings, store, registry)

The lifespan starts the store (tables), bootstraps the default team and key
(``app.state.api_key``), loads remembered nodes, and owns the background loops (the
timeout reaper and node liveness) in one TaskGroup. The caller owns ``store`` and
``registry`` and closes them after the app has stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shoal import __version__
from shoal.api.bootstrap import bootstrap
from shoal.api.errors import install_error_handlers
from shoal.api.lifecycle import Lifecycle
from shoal.api.liveness import Liveness
from shoal.api.metrics import MetricsService
from shoal.api.reaper import Reaper
from shoal.api.registry import NodeRegistry
from shoal.api.routes import health, metrics, nodes, sandboxes, snapshots
from shoal.api.service import Clock, SandboxService, utcnow
from shoal.api.snapshots import SnapshotService
from shoal.config import Settings
from shoal.store.base import Store


def build_api_app(
    settings: Settings,
    store: Store,
    registry: NodeRegistry,
    *,
    clock: Clock = utcnow,
    reaper_interval: float = 0.5,
) -> FastAPI:
    lifecycle = Lifecycle(settings, store, registry, clock)
    reaper = Reaper(store, registry, clock, interval=reaper_interval, lifecycle=lifecycle)
    service = SandboxService(
        settings, store, registry, clock=clock, on_expiry=reaper.wake, lifecycle=lifecycle
    )
    liveness = Liveness(store, registry, clock, interval=settings.heartbeat_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        app.state.api_key = await bootstrap(settings, store, now=clock())
        registry.load(await store.list_nodes())
        stop = asyncio.Event()

        async def background() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(reaper.run(stop), name="shoal-reaper")
                tg.create_task(liveness.run(stop), name="shoal-liveness")

        # The TaskGroup lives in its own task, awaited on the way out, so an error
        # raised into the lifespan at ``yield`` is not wrapped in an ExceptionGroup.
        loops = asyncio.create_task(background(), name="shoal-api-loops")
        try:
            yield
        finally:
            stop.set()
            reaper.wake()
            await loops
            await lifecycle.aclose()

    app = FastAPI(
        title="Shoal",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.registry = registry
    app.state.service = service
    app.state.lifecycle = lifecycle
    app.state.snapshots = SnapshotService(service)
    app.state.metrics = MetricsService(service)
    app.state.reaper = reaper
    app.state.liveness = liveness
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)  # before sandboxes: /sandboxes/metrics
    app.include_router(sandboxes.router)
    app.include_router(snapshots.router)
    app.include_router(nodes.router)
    return app


__all__ = ["build_api_app"]
