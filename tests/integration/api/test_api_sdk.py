"""The official ``e2b`` SDK against the API on a real socket (control-plane calls only)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException
from fakes.node_agent import FakeNode

from shoal.api import NodeRegistry, build_api_app
from shoal.config import Settings
from shoal.store import SqlStore

pytestmark = pytest.mark.sdk


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def live_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str, FakeNode]]:
    for var in ("E2B_DEBUG", "E2B_DOMAIN", "E2B_SANDBOX_URL", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    settings = Settings(data_dir=tmp_path, domain="shoal.test", node_token="node-secret")
    store = SqlStore(settings.db_url)
    node = FakeNode()
    registry = NodeRegistry()
    registry.add_local(node.info(), node.client(), datetime.now(UTC))
    app = build_api_app(settings, store, registry)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.api_key, node
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        asyncio.run(store.close())


def test_sdk_create_list_get_set_timeout_kill(live_api: tuple[str, str, FakeNode]) -> None:
    url, key, node = live_api
    opts: dict[str, Any] = {"api_url": url, "api_key": key}
    sbx = Sandbox.create("base", timeout=120, metadata={"suite": "shoal & co", "ключ": "✓"}, **opts)
    other = Sandbox.create("base", **opts)
    assert sbx.sandbox_id in node.sandboxes

    info = Sandbox.get_info(sbx.sandbox_id, **opts)
    assert info.sandbox_id == sbx.sandbox_id
    assert info.metadata == {"suite": "shoal & co", "ключ": "✓"}
    assert info.envd_version == "0.6.13"
    assert (info.end_at - info.started_at).total_seconds() == pytest.approx(120, abs=1)

    found = Sandbox.list(query=SandboxQuery(metadata={"suite": "shoal & co"}), **opts).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id]

    paginator = Sandbox.list(limit=1, **opts)
    seen = []
    while paginator.has_next:
        seen += [s.sandbox_id for s in paginator.next_items()]
    assert sorted(seen) == sorted([sbx.sandbox_id, other.sandbox_id])

    Sandbox.set_timeout(sbx.sandbox_id, 600, **opts)
    info = Sandbox.get_info(sbx.sandbox_id, **opts)
    assert (info.end_at - info.started_at).total_seconds() > 500

    assert Sandbox.kill(other.sandbox_id, **opts) is True
    assert Sandbox.kill(other.sandbox_id, **opts) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(other.sandbox_id, **opts)

    Sandbox.set_timeout(sbx.sandbox_id, 0, **opts)
    deadline = time.monotonic() + 3
    while sbx.sandbox_id in node.sandboxes:
        assert time.monotonic() < deadline, "set_timeout(0) did not end the sandbox"
        time.sleep(0.05)
    assert Sandbox.list(**opts).next_items() == []
