"""The ``shoal`` command against a live server, as a user types it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from support.server import ShoalServer, scratch_dir, sdk_env, shoal_command

pytestmark = [pytest.mark.root, pytest.mark.sdk]


@pytest.fixture(scope="module")
def server() -> Iterator[ShoalServer]:
    srv = ShoalServer(scratch_dir("cli"))
    srv.start()
    try:
        with sdk_env(srv):
            yield srv
    finally:
        srv.kill_all_sandboxes()
        srv.stop()


def shoal(server: ShoalServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(server.client_env())
    return subprocess.run(
        [*shoal_command(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_ls_and_kill(server: ShoalServer) -> None:
    from e2b import Sandbox

    a = Sandbox.create(metadata={"who": "cli-a"})
    b = Sandbox.create(metadata={"who": "cli-b"})
    listed = shoal(server, "sandbox", "ls")
    assert listed.returncode == 0, listed.stderr
    assert a.sandbox_id in listed.stdout and b.sandbox_id in listed.stdout
    assert "running" in listed.stdout

    killed = shoal(server, "sandbox", "kill", a.sandbox_id)
    assert killed.returncode == 0, killed.stderr
    assert f"killed {a.sandbox_id}" in killed.stdout
    assert not a.is_running()
    assert b.is_running()

    listed = shoal(server, "sandbox", "ls")
    assert a.sandbox_id not in listed.stdout and b.sandbox_id in listed.stdout

    again = shoal(server, "sandbox", "kill", a.sandbox_id)
    assert again.returncode == 1
    assert "not found" in again.stderr
    b.kill()


def test_bad_key_is_a_clear_error(server: ShoalServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(server.client_env())
    env["E2B_API_KEY"] = "e2b_" + "0" * 40
    r = subprocess.run(
        [*shoal_command(), "sandbox", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error 401")


def test_help_lists_the_commands() -> None:
    r = subprocess.run([*shoal_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "serve" in r.stdout and "sandbox" in r.stdout
