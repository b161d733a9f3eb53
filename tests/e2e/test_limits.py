"""The cgroup limits of a sandbox hold (item 4 of the core issue): memory, pids and cpu, seen
from inside and from the host's cgroup files; breaking them harms neither the sandbox's other
processes nor the host.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hoststate import node_id_of, wait_for
from sandbox_exec import py, sh
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]


def _host_cgroup(e2e_server: ShoalServer, controller: str, sandbox_id: str) -> Path:
    return (
        Path("/sys/fs/cgroup") / controller / "shoal" / node_id_of(e2e_server.data_dir) / sandbox_id
    )


def test_memory_limit_kills_the_allocator_and_the_sandbox_survives(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    from e2b import Sandbox

    sbx = make_sandbox()
    memory_mb = Sandbox.get_info(sbx.sandbox_id).memory_mb
    limit = int(
        (_host_cgroup(e2e_server, "memory", sbx.sandbox_id) / "memory.limit_in_bytes").read_text()
    )
    assert limit == memory_mb * 1024 * 1024
    # Touch 32 MiB at a time, up to twice the limit, reporting progress.
    rc, out, _err = sh(
        sbx,
        f"""python3 -c '
chunks = []
for i in range({2 * memory_mb // 32}):
    chunks.append(bytes([i % 250 + 1]) * (32 << 20))
    print((i + 1) * 32, flush=True)
print("survived")
'""",
    )
    reached = [int(x) for x in out.split() if x.isdigit()]
    assert "survived" not in out
    assert rc != 0
    assert memory_mb // 2 <= max(reached) <= memory_mb, reached
    assert sh(sbx, "echo alive")[1] == "alive\n"
    oom = (_host_cgroup(e2e_server, "memory", sbx.sandbox_id) / "memory.oom_control").read_text()
    assert "oom_kill 0" not in oom
    assert subprocess.run(["true"], check=False).returncode == 0


def test_pids_limit_stops_a_thread_bomb(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx = make_sandbox()
    pids_max = int((_host_cgroup(e2e_server, "pids", sbx.sandbox_id) / "pids.max").read_text())
    result = py(
        sbx,
        """
import json, threading
threading.stack_size(65536)
ev = threading.Event()
n = 0
try:
    while n < 100000:
        threading.Thread(target=ev.wait, daemon=True).start()
        n += 1
except RuntimeError:
    pass
current = int(open("/sys/fs/cgroup/pids/pids.current").read())
ev.set()
print(json.dumps([n, current]))
""",
    )
    started, current = result
    assert current == pids_max
    assert pids_max - 10 <= started < pids_max
    assert sh(sbx, "echo alive")[1] == "alive\n"


def test_a_fork_bomb_is_contained_and_the_sandbox_killable(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx = make_sandbox()
    pids = _host_cgroup(e2e_server, "pids", sbx.sandbox_id)
    pids_max = int((pids / "pids.max").read_text())
    sbx.commands.run("bash -c ':(){ :|:& };:' >/dev/null 2>&1", background=True)
    assert wait_for(lambda: int((pids / "pids.current").read_text()) > 1000, timeout=30)
    peak = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        peak = max(peak, int((pids / "pids.current").read_text()))
        # The host can still fork while the bomb runs.
        assert subprocess.run(["true"], check=False).returncode == 0
    assert peak <= pids_max
    assert sbx.kill() is True
    assert not pids.exists()
    assert not sbx.is_running()


def test_cpu_quota_matches_cpu_count(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    """The quota the kernel enforces is the cpuCount the API reports (seen from inside)."""
    from e2b import Sandbox

    sbx = make_sandbox()
    cpu_count = Sandbox.get_info(sbx.sandbox_id).cpu_count
    _rc, out, _ = sh(
        sbx, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"
    )
    quota, period = (int(x) for x in out.split())
    assert quota == cpu_count * period
    host = _host_cgroup(e2e_server, "cpu", sbx.sandbox_id)
    assert int((host / "cpu.cfs_quota_us").read_text()) == quota


def test_limits_cannot_be_raised_from_inside(box: Any) -> None:
    for f in ("memory/memory.limit_in_bytes", "pids/pids.max", "cpu/cpu.cfs_quota_us"):
        rc, _, err = sh(box, f"echo -1 > /sys/fs/cgroup/{f}", user="root")
        assert rc != 0 and "Read-only file system" in err, (f, err)
