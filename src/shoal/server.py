"""Composition of Shoal's processes.

``shoal serve`` (all in one): store + control-plane API + one in-process node agent + proxy, in
one asyncio loop, two listening ports. The seams stay real: the API reaches the agent through
the node protocol (``NodeClient`` over the agent's ASGI app), and the proxy hands requests to
the agent's data-plane entry.

``shoal agent``: a stand-alone node agent that registers with a control plane by heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from shoal.agent.app import AgentApp
from shoal.agent.dataplane import SandboxDied
from shoal.agent.node import NodeAgent
from shoal.api.app import build_api_app
from shoal.api.registry import NodeRegistry, http_client_factory
from shoal.client.node import NodeClient
from shoal.config import Settings
from shoal.envd.files.signature import SignatureFinder
from shoal.proxy.app import Proxy, Upstream
from shoal.store.base import SandboxState
from shoal.store.sql import SqlStore
from shoal.wire.node import Heartbeat
from shoal.wire.node.models import NODE_TOKEN_HEADER

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """A running all-in-one stack (what ``serve`` runs; tests and benchmarks start it too)."""

    settings: Settings
    store: SqlStore
    registry: NodeRegistry
    agent: NodeAgent | None
    agent_app: AgentApp | None
    api_app: FastAPI
    proxy: Proxy

    @property
    def api_key(self) -> str:
        return str(self.api_app.state.api_key)


def build_stack(settings: Settings) -> Stack:
    store = SqlStore(settings.db_url)
    registry = NodeRegistry(client_factory=http_client_factory(settings.node_token))
    agent: NodeAgent | None = None
    agent_app: AgentApp | None = None
    if settings.local_agent:
        agent = NodeAgent(settings, address="")
        agent.address = f"inproc://{agent.node_id}"
        agent_app = AgentApp(agent)
    api_app = build_api_app(settings, store, registry)

    async def locate(sandbox_id: str) -> Upstream | None:
        if agent is not None and agent.manager.get(sandbox_id) is not None:
            return Upstream(node_id=agent.node_id, app=agent.dataplane)
        record = await store.get_sandbox(sandbox_id)
        if record is None or record.state != SandboxState.RUNNING or not record.node_id:
            return None
        entry = registry.get(record.node_id)
        if entry is None or not entry.info.address.startswith("http"):
            return None
        return Upstream(node_id=record.node_id, url=entry.info.address)

    running_only = frozenset({SandboxState.RUNNING})

    async def signers() -> list[tuple[str, str | None]]:
        # Sandboxes whose access token may have signed a header-less /files URL: the
        # in-process agent's own, then what the store places on every other node.
        found: list[tuple[str, str | None]] = []
        if agent is not None:
            found += [(s.sandbox_id, s.access_token) for s in agent.manager.running()]
        for entry in registry.entries():
            node_id = entry.info.node_id
            if agent is not None and node_id == agent.node_id:
                continue
            for record in await store.sandboxes_on_node(node_id, running_only):
                found.append((record.sandbox_id, record.access_token))
        return found

    proxy = Proxy(
        locate,
        node_token=settings.node_token,
        find_by_signature=SignatureFinder(signers),
        resume=api_app.state.lifecycle.auto_resume,
        leaving=api_app.state.lifecycle.leaving,
    )
    api_app.state.lifecycle.on_leave(proxy.forget)
    return Stack(settings, store, registry, agent, agent_app, api_app, proxy)


@contextlib.asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    """Start the agent and register it, run the API's lifespan; undo on exit.

    Sandboxes keep running when the stack stops: a restart adopts them.
    """
    settings = stack.settings
    if stack.agent is not None and stack.agent_app is not None:
        await stack.agent.start()
        stack.registry.add_local(
            stack.agent.info(),
            NodeClient.for_app(stack.agent_app, token=settings.node_token),
            datetime.now(UTC),
        )
    try:
        async with stack.api_app.router.lifespan_context(stack.api_app):
            yield stack
    finally:
        if stack.agent is not None:
            await stack.agent.stop()
        await stack.proxy.aclose()
        await stack.registry.aclose()
        await stack.store.close()


class _QuietAborts(logging.Filter):
    """A data-plane response aborted because its sandbox died is the protocol working as
    intended (the SDKs need the abort), not a crash: keep it out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SandboxDied)


logging.getLogger("uvicorn.error").addFilter(_QuietAborts())


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the stack owns SIGINT/SIGTERM for both servers."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield


def uvicorn_server(app: ASGIApp, host: str, port: int, log_level: str) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_level=log_level,
        access_log=False,
        http="httptools",
        loop="none",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=3,
    )
    return _Server(config)


def client_env(settings: Settings, api_key: str) -> dict[str, str]:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return {
        "E2B_API_KEY": api_key,
        "E2B_API_URL": f"http://{host}:{settings.api_port}",
        "E2B_SANDBOX_URL": f"http://{host}:{settings.sandbox_port}",
        "E2B_DOMAIN": settings.domain,
        "NO_PROXY": "127.0.0.1,localhost",
    }


async def serve(settings: Settings) -> None:
    stack = build_stack(settings)
    async with running(stack):
        api = uvicorn_server(stack.api_app, settings.host, settings.api_port, settings.log_level)
        proxy = uvicorn_server(
            stack.proxy, settings.host, settings.sandbox_port, settings.log_level
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with asyncio.TaskGroup() as tg:
            api_task = tg.create_task(api.serve())
            proxy_task = tg.create_task(proxy.serve())
            while not (api.started and proxy.started):
                if api_task.done() or proxy_task.done():
                    break
                await asyncio.sleep(0.05)
            if api.started and proxy.started:
                print("\nShoal is serving. Point the E2B SDKs at it with:\n", flush=True)
                for k, v in client_env(settings, stack.api_key).items():
                    print(f"export {k}={v}", flush=True)
                print(
                    f"\n(data in {settings.data_dir}; Ctrl-C stops the server;"
                    " sandboxes keep running)\n",
                    flush=True,
                )
            stopper = tg.create_task(stop.wait())
            await asyncio.wait({api_task, proxy_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            api.should_exit = True
            proxy.should_exit = True
            stopper.cancel()


async def run_agent(settings: Settings) -> None:
    """A stand-alone node agent that heartbeats to ``settings.control_plane_url``."""
    if not settings.control_plane_url:
        raise SystemExit("SHOAL_CONTROL_PLANE_URL is required for `shoal agent`")
    if not settings.agent_port:
        raise SystemExit("SHOAL_AGENT_PORT is required for `shoal agent`")
    headers = {NODE_TOKEN_HEADER: settings.node_token} if settings.node_token else {}
    cp = httpx.AsyncClient(
        base_url=settings.control_plane_url, headers=headers, timeout=10.0, trust_env=False
    )

    async def send(hb: Heartbeat) -> None:
        r = await cp.post(
            f"/internal/v1/nodes/{hb.node.node_id}/heartbeat",
            content=hb.model_dump_json(),
            headers={"content-type": "application/json"},
        )
        r.raise_for_status()

    agent = NodeAgent(
        settings, address=f"http://{settings.host}:{settings.agent_port}", heartbeat=send
    )
    server = uvicorn_server(AgentApp(agent), settings.host, settings.agent_port, settings.log_level)
    server.config.lifespan = "on"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(server.serve())
            stopper = tg.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopper.cancel()
    finally:
        await cp.aclose()
