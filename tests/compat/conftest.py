"""The official E2B SDKs against a live ``shoal serve`` (a child process, real isolation).

Every test here is marked ``sdk`` and ``root``: as root (CI) none may skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.sandboxes import sandbox_factory as sandbox_factory_for
from support.server import ShoalServer, scratch_dir, sdk_env

pytestmark = [pytest.mark.sdk, pytest.mark.root]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/compat" in str(item.fspath):
            item.add_marker(pytest.mark.sdk)
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def shoal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalServer]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups, crun)")
    server = ShoalServer(scratch_dir("compat"))
    server.start()
    try:
        with sdk_env(server):
            yield server
    finally:
        server.kill_all_sandboxes()
        server.stop()


@pytest.fixture
def sandbox_factory(shoal_server: ShoalServer, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Create sandboxes with the sync SDK; kill them all when the test ends."""
    with sandbox_factory_for(request.node.name) as make:
        yield make


@pytest.fixture
def sandbox(sandbox_factory):  # type: ignore[no-untyped-def]
    return sandbox_factory()


@pytest.fixture
def data_dir(shoal_server: ShoalServer) -> Path:
    return shoal_server.data_dir


@pytest.fixture(scope="module")
def shared_sandbox(shoal_server: ShoalServer, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One sandbox for a whole module, for tests that only run commands in it."""
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=600, metadata={"test": request.module.__name__[-60:]})
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


@pytest.fixture
async def async_sandbox_factory(shoal_server: ShoalServer, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Create sandboxes with the async SDK; kill them all when the test ends."""
    from e2b import AsyncSandbox

    created: list[AsyncSandbox] = []

    async def make(**kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("metadata", {"test": request.node.name[:60]})
        sbx = await AsyncSandbox.create(**kwargs)
        created.append(sbx)
        return sbx

    yield make
    for sbx in created:
        try:
            await sbx.kill()
        except Exception:
            pass
