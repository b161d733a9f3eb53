"""The warm pool (runtime/pool.py): a sandbox handed out from it is indistinguishable from a
cold-started one (hostname, /etc/hosts, boot id, cgroup and limits named by the sandbox id),
leaves nothing behind when killed, and the pool itself is gone when the server stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hoststate import (
    POOL_PREFIX,
    crun_list,
    crun_state,
    init_pid_of,
    node_id_of,
    snapshot,
    wait_for,
    wait_until_clean,
)
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

POOL_SIZE = 4  # Settings.warm_pool's default, which the test servers run with


def pool_ids(server: ShoalServer) -> set[str]:
    ids = {str(c["id"]) for c in crun_list(node_id_of(server.data_dir))}
    return {i for i in ids if i.startswith(POOL_PREFIX)}


def pooled_sandbox(server: ShoalServer) -> Any:
    """A sandbox that came out of a full pool (the first create of a shape warms it)."""
    from e2b import Sandbox

    Sandbox.create().kill()
    assert wait_for(lambda: len(pool_ids(server)) == POOL_SIZE), pool_ids(server)
    before = pool_ids(server)
    sbx = Sandbox.create()
    # The sandbox's directory names the pool container it was made from.
    origin = (server.data_dir / "sandboxes" / sbx.sandbox_id / "pool_id").read_text()
    assert origin in before
    assert origin not in pool_ids(server)
    return sbx


def test_a_pooled_sandbox_has_its_own_identity(e2e_server: ShoalServer) -> None:
    from e2b import Sandbox

    sbx = pooled_sandbox(e2e_server)
    other = Sandbox.create()
    try:
        assert sbx.commands.run("hostname").stdout == f"{sbx.sandbox_id}\n"
        assert other.commands.run("hostname").stdout == f"{other.sandbox_id}\n"
        hosts = sbx.commands.run(f"getent hosts {sbx.sandbox_id}").stdout.split()
        assert hosts[0] in ("127.0.0.1", "::1"), hosts
        assert sbx.commands.run("sudo -n true 2>&1; echo rc=$?").stdout.endswith("rc=0\n")
        boot_ids = {
            s.commands.run("cat /proc/sys/kernel/random/boot_id").stdout for s in (sbx, other)
        }
        boot_ids.add(Path("/proc/sys/kernel/random/boot_id").read_text())
        assert len(boot_ids) == 3
        # crun and the cgroups know it by its sandbox id, with the limits of its shape.
        node = node_id_of(e2e_server.data_dir)
        pid = init_pid_of(e2e_server.data_dir, sbx.sandbox_id)
        assert f"/shoal/{node}/{sbx.sandbox_id}" in Path(f"/proc/{pid}/cgroup").read_text()
        limit = Path(f"/sys/fs/cgroup/memory/shoal/{node}/{sbx.sandbox_id}/memory.limit_in_bytes")
        assert int(limit.read_text()) == 512 * 1024 * 1024
    finally:
        sbx.kill()
        other.kill()


def test_killing_a_pooled_sandbox_leaves_nothing(e2e_server: ShoalServer) -> None:
    e2e_server.kill_all_sandboxes()
    assert e2e_server.proc is not None
    base = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    sbx = pooled_sandbox(e2e_server)
    sbx.commands.run("echo x > /tmp/x && sleep 1000 &")
    assert sbx.kill() is True
    assert crun_state(node_id_of(e2e_server.data_dir), sbx.sandbox_id) is None
    leaks = wait_until_clean(e2e_server.data_dir, e2e_server.proc.pid, base)
    assert leaks == [], "\n".join(leaks)


def test_broken_warm_containers_send_creates_the_cold_way(e2e_server: ShoalServer) -> None:
    from e2b import Sandbox

    e2e_server.kill_all_sandboxes()
    assert e2e_server.proc is not None
    base = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    pooled_sandbox(e2e_server).kill()
    assert wait_for(lambda: len(pool_ids(e2e_server)) == POOL_SIZE)
    # Every warm container's waiting process dies (as if the OOM killer took them).
    for c in crun_list(node_id_of(e2e_server.data_dir)):
        if str(c["id"]).startswith(POOL_PREFIX):
            os.kill(int(str(c["pid"])), signal.SIGKILL)
    boxes = [Sandbox.create() for _ in range(POOL_SIZE)]
    for sbx in boxes:
        assert sbx.commands.run("hostname").stdout == f"{sbx.sandbox_id}\n"
        assert not (e2e_server.data_dir / "sandboxes" / sbx.sandbox_id / "pool_id").exists()
    for sbx in boxes:
        assert sbx.kill() is True
    leaks = wait_until_clean(e2e_server.data_dir, e2e_server.proc.pid, base)
    assert leaks == [], "\n".join(leaks)


def test_the_pool_is_removed_when_the_server_stops(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox

    sbx = pooled_sandbox(fresh_server)
    node = node_id_of(fresh_server.data_dir)
    fresh_server.stop()
    # The sandbox keeps running; its pool does not.
    assert crun_state(node, sbx.sandbox_id) is not None
    assert pool_ids(fresh_server) == set()
    sandboxes = fresh_server.data_dir / "sandboxes"
    assert [p.name for p in sandboxes.iterdir()] == [sbx.sandbox_id]
    fresh_server.start()
    assert sbx.commands.run("hostname").stdout == f"{sbx.sandbox_id}\n"
    fresh = Sandbox.create()
    assert fresh.commands.run("hostname").stdout == f"{fresh.sandbox_id}\n"
    assert sbx.kill() and fresh.kill()
