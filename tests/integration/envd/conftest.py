"""Fixtures for the envd integration tests (harness in :mod:`envd_harness`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from envd_harness import EnvdServer
from fakes.envd_sandbox import FakeSandbox


@pytest.fixture(scope="session")
def envd_server() -> Iterator[EnvdServer]:
    server = EnvdServer()
    server.start()
    yield server
    server.stop()
    # Anything the server's loop reported (a pump task that died, an exception nobody
    # retrieved) is a bug even if every response looked right.
    assert not server.errors, server.errors


@pytest.fixture
def sandbox(envd_server: EnvdServer, tmp_path: Path) -> Iterator[FakeSandbox]:
    sbx = envd_server.add_sandbox(tmp_path, env_vars={"E2B_SANDBOX": "true"})
    yield sbx
    envd_server.remove_sandbox(sbx)


@pytest.fixture
def http(envd_server: EnvdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=envd_server.url, timeout=30) as client:
        yield client
