"""Restart survival (item 6 of the core issue): sandboxes outlive their server.

Each test has its own server (``fresh_server``), stops it with SIGTERM as a user's Ctrl-C
would, and starts it again on the same data directory and ports.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest
from hoststate import (
    HostState,
    crun_state,
    find_host_pids,
    init_pid_of,
    node_id_of,
    snapshot,
    wait_for,
    wait_until_clean,
)
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

IGNORE_FDS = 10**6
"""The server process is a new one after a restart: its fd count is not comparable."""


def listed_ids(server: ShoalServer) -> set[str]:
    with server.api() as api:
        r = api.get("/v2/sandboxes", params={"limit": 100})
        assert r.status_code == 200, r.text
        return {s["sandboxID"] for s in r.json()}


def base_state(server: ShoalServer) -> HostState:
    assert server.proc is not None
    state = snapshot(server.data_dir, server.proc.pid)
    assert not state.sandbox_dirs and not state.containers, state
    return state


def assert_clean(server: ShoalServer, base: HostState) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()
    leaks = wait_until_clean(server.data_dir, server.proc.pid, base, fd_slack=IGNORE_FDS)
    assert leaks == [], "\n".join(leaks)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for the host's init to reap it is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def restart(server: ShoalServer) -> None:
    server.stop()
    assert server.proc is not None and server.proc.returncode is not None
    server.start()


def test_sandboxes_survive_a_restart(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox

    base = base_state(fresh_server)
    a = Sandbox.create(metadata={"name": "a"})
    b = Sandbox.create(metadata={"name": "b"})
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    bg = a.commands.run(f"exec sleep {marker}", background=True)
    a.commands.run("echo kept > /home/user/note")
    b.commands.run("echo also-kept > /tmp/note")
    (host_sleep,) = find_host_pids(lambda c: c == ["sleep", marker])
    token_a = a._envd_access_token
    assert token_a

    fresh_server.stop()
    # While the server is down the sandboxes keep running.
    assert alive(host_sleep)
    fresh_server.start()

    assert {a.sandbox_id, b.sandbox_id} <= listed_ids(fresh_server)
    # The very same client objects (holding the old access tokens) still work.
    assert a.commands.run("cat /home/user/note").stdout == "kept\n"
    assert b.commands.run("cat /tmp/note").stdout == "also-kept\n"
    assert a.commands.run(f"kill -0 {bg.pid} && echo running").stdout == "running\n"
    assert alive(host_sleep)
    # Connecting by id hands out the same token, and it is still enforced.
    again = Sandbox.connect(a.sandbox_id)
    assert again._envd_access_token == token_a
    assert again.commands.run("echo via-connect").stdout == "via-connect\n"
    info = Sandbox.get_info(b.sandbox_id)
    assert info.metadata == {"name": "b"}

    assert a.kill() is True
    assert b.kill() is True
    assert not alive(host_sleep)
    assert listed_ids(fresh_server) == set()
    assert_clean(fresh_server, base)


def test_a_second_restart_and_new_sandboxes_after_it(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox

    base = base_state(fresh_server)
    a = Sandbox.create()
    restart(fresh_server)
    b = Sandbox.create()
    restart(fresh_server)
    assert {a.sandbox_id, b.sandbox_id} <= listed_ids(fresh_server)
    for sbx in (a, b):
        assert sbx.commands.run("echo $E2B_SANDBOX_ID").stdout == f"{sbx.sandbox_id}\n"
    assert a.kill() and b.kill()
    assert_clean(fresh_server, base)


def test_a_sandbox_that_died_while_the_server_was_down_is_cleaned_up(
    fresh_server: ShoalServer,
) -> None:
    from e2b import Sandbox

    base = base_state(fresh_server)
    dead = Sandbox.create()
    kept = Sandbox.create()
    dead.commands.run("sleep 1000", background=True)
    pid = init_pid_of(fresh_server.data_dir, dead.sandbox_id)

    fresh_server.stop()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), timeout=10)
    fresh_server.start()

    assert wait_for(lambda: dead.sandbox_id not in listed_ids(fresh_server), timeout=30)
    assert not dead.is_running()
    node = node_id_of(fresh_server.data_dir)
    assert crun_state(node, dead.sandbox_id) is None
    assert not (fresh_server.data_dir / "sandboxes" / dead.sandbox_id).exists()
    assert kept.commands.run("echo ok").stdout == "ok\n"
    assert kept.kill() is True
    assert_clean(fresh_server, base)


def test_orphans_without_a_record_are_removed_at_start(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox

    base = base_state(fresh_server)
    unrecorded = Sandbox.create()
    unrecorded.commands.run("sleep 1000", background=True)
    kept = Sandbox.create()
    sandboxes = fresh_server.data_dir / "sandboxes"
    init_pid = init_pid_of(fresh_server.data_dir, unrecorded.sandbox_id)

    fresh_server.stop()
    # A running container whose record is lost, and a directory no container ever had.
    (sandboxes / unrecorded.sandbox_id / "sandbox.json").unlink()
    stray = sandboxes / "x0orphan0000000000"
    (stray / "upper" / "etc").mkdir(parents=True)
    (stray / "upper" / "etc" / "junk").write_text("junk")
    fresh_server.start()

    assert not stray.exists()
    assert not (sandboxes / unrecorded.sandbox_id).exists()
    assert wait_for(lambda: not alive(init_pid), timeout=10)
    assert crun_state(node_id_of(fresh_server.data_dir), unrecorded.sandbox_id) is None
    assert wait_for(lambda: unrecorded.sandbox_id not in listed_ids(fresh_server), timeout=30)
    assert kept.commands.run("echo ok").stdout == "ok\n"
    assert kept.kill() is True
    assert_clean(fresh_server, base)


def test_killing_sandboxes_created_before_a_restart_orphans_nothing(
    fresh_server: ShoalServer,
) -> None:
    """Timeouts set before the restart still hold after it."""
    from e2b import Sandbox

    base = base_state(fresh_server)
    short = Sandbox.create(timeout=4)
    short.commands.run("sleep 1000", background=True)
    restart(fresh_server)
    assert wait_for(lambda: short.sandbox_id not in listed_ids(fresh_server), timeout=30)
    assert wait_for(lambda: not short.is_running(), timeout=10)
    assert_clean(fresh_server, base)


def node_leftovers(node_id: str) -> list[str]:
    """What of a node exists on the machine: cgroups in any hierarchy, crun's state dir."""
    found = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/shoal/{node_id}")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"shoal/{node_id}")]
    if Path(f"/run/shoal/{node_id}").exists():
        found.append(f"/run/shoal/{node_id}")
    return found


def test_a_server_stopped_with_no_sandboxes_leaves_nothing_of_its_node(
    fresh_server: ShoalServer,
) -> None:
    from e2b import Sandbox

    node = node_id_of(fresh_server.data_dir)
    sbx = Sandbox.create()
    fresh_server.stop()
    # With a sandbox still running, its node's cgroups and crun state stay for the next start.
    assert node_leftovers(node)
    fresh_server.start()
    assert sbx.kill() is True
    fresh_server.stop()
    assert node_leftovers(node) == []
    assert [
        line for line in open("/proc/self/mountinfo") if str(fresh_server.data_dir) in line
    ] == []
    # And the node starts again from nothing.
    fresh_server.start()
    again = Sandbox.create()
    assert again.commands.run("echo ok").stdout == "ok\n"
    assert again.kill() is True
