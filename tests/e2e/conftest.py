"""Live servers for the isolation, hygiene and restart tests.

``e2e_server`` is one ``shoal serve`` per test module (its sandboxes are the only ones on its
node, so a module can compare host state before and after); ``fresh_server`` is one per test,
for tests that stop and restart it. Both point the official SDK at themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.sandboxes import sandbox_factory
from support.server import ShoalServer, scratch_dir, sdk_env


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, crun)")


@pytest.fixture(scope="module")
def e2e_server(request: pytest.FixtureRequest) -> Iterator[ShoalServer]:
    _require_root()
    server = ShoalServer(scratch_dir(f"e2e-{request.module.__name__.rsplit('_', 1)[-1]}"))
    server.start()
    try:
        with sdk_env(server):
            yield server
    finally:
        server.kill_all_sandboxes()
        server.stop()


@pytest.fixture
def fresh_server() -> Iterator[ShoalServer]:
    _require_root()
    server = ShoalServer(scratch_dir("e2e-restart"))
    server.start()
    try:
        with sdk_env(server):
            yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill_all_sandboxes()
            server.stop()


@pytest.fixture
def make_sandbox(
    e2e_server: ShoalServer, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """Create sandboxes with the sync SDK; kill them all when the test ends."""
    with sandbox_factory(request.node.name) as make:
        yield make


@pytest.fixture(scope="module")
def box(e2e_server: ShoalServer) -> Iterator[Any]:
    """One sandbox shared by a module's checks that do not change it much."""
    from e2b import Sandbox

    sbx = Sandbox.create(metadata={"test": "shared"})
    yield sbx
    with contextlib.suppress(Exception):
        sbx.kill()
