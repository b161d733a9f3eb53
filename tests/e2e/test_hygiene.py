"""Hygiene (item 7 of the core issue): killing, expiring or losing a sandbox leaves nothing.

Each test takes a :func:`hoststate.snapshot` of the module's server before, does something to
sandboxes, and checks that processes, mounts, cgroups, directories, crun containers, network
namespaces and the server's fds are back where they were.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

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


def listed_ids(server: ShoalServer) -> set[str]:
    with server.api() as api:
        r = api.get("/v2/sandboxes", params={"limit": 100})
        assert r.status_code == 200, r.text
        return {s["sandboxID"] for s in r.json()}


@pytest.fixture
def baseline(e2e_server: ShoalServer) -> Iterator[HostState]:
    """The host state with no sandbox on this server; after the test it must be back."""
    e2e_server.kill_all_sandboxes()
    assert e2e_server.proc is not None
    base = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    assert not base.sandbox_dirs and not base.containers and not base.cgroups, base
    yield base


def assert_clean(
    server: ShoalServer, base: HostState, timeout: float = 20.0, fd_slack: int = 8
) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()
    leaks = wait_until_clean(
        server.data_dir, server.proc.pid, base, timeout=timeout, fd_slack=fd_slack
    )
    assert leaks == [], "\n".join(leaks)


@pytest.mark.slow
async def test_200_create_kill_cycles_leave_nothing(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import AsyncSandbox

    cycles, parallel = 200, 8
    sem = asyncio.Semaphore(parallel)
    done: list[str] = []

    async def cycle(i: int) -> None:
        async with sem:
            sbx = await AsyncSandbox.create(metadata={"cycle": str(i)})
            try:
                # Every other cycle leaves a process running in the sandbox.
                if i % 2:
                    await sbx.commands.run("sleep 1000", background=True)
                r = await sbx.commands.run(f"echo {i}")
                assert r.stdout == f"{i}\n"
            finally:
                assert await sbx.kill() is True
            done.append(sbx.sandbox_id)

    # Warm up first: connection pools (the SDK's, the store's) grow to the concurrency used
    # and then stay; only growth beyond that is a leak.
    await asyncio.gather(*(cycle(-1 - i) for i in range(2 * parallel)))
    assert_clean(e2e_server, baseline, fd_slack=2 * parallel + 8)
    assert e2e_server.proc is not None
    warm = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    done.clear()

    start = time.monotonic()
    await asyncio.gather(*(cycle(i) for i in range(cycles)))
    elapsed = time.monotonic() - start
    print(f"\n{cycles} create/run/kill cycles, {parallel} at a time: {elapsed:.1f} s")
    assert len(set(done)) == cycles
    assert listed_ids(e2e_server) == set()
    assert_clean(e2e_server, warm)


def test_an_expired_sandbox_leaves_nothing(e2e_server: ShoalServer, baseline: HostState) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=2)
    sbx.commands.run("sleep 1000", background=True)
    assert sbx.sandbox_id in listed_ids(e2e_server)
    assert wait_for(lambda: sbx.sandbox_id not in listed_ids(e2e_server), timeout=30)
    assert wait_for(lambda: not sbx.is_running(), timeout=10)
    assert_clean(e2e_server, baseline)


def test_set_timeout_zero_ends_it_and_leaves_nothing(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create()
    sbx.commands.run("sleep 1000", background=True)
    sbx.set_timeout(0)
    assert wait_for(lambda: sbx.sandbox_id not in listed_ids(e2e_server), timeout=15)
    assert wait_for(lambda: not sbx.is_running(), timeout=10)
    assert_clean(e2e_server, baseline)


def test_a_sandbox_whose_init_is_killed_from_the_host_is_cleaned_up(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create()
    survivor = Sandbox.create()
    try:
        sbx.commands.run("sleep 1000", background=True)
        pid = init_pid_of(e2e_server.data_dir, sbx.sandbox_id)
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: sbx.sandbox_id not in listed_ids(e2e_server), timeout=30)
        assert wait_for(lambda: not sbx.is_running(), timeout=10)
        assert crun_state(node_id_of(e2e_server.data_dir), sbx.sandbox_id) is None
        # The server is fine and its other sandboxes too.
        assert survivor.commands.run("echo ok").stdout == "ok\n"
    finally:
        survivor.kill()
    assert_clean(e2e_server, baseline)


def test_commands_that_never_exit_are_killed_with_the_sandbox(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create()
    marker = f"1000.{os.getpid()}"
    sbx.commands.run(f"sleep {marker}", background=True)
    sbx.commands.run("trap '' TERM HUP INT; while :; do sleep 0.1; done", background=True)
    sbx.commands.run("setsid nohup sleep 1000 >/dev/null 2>&1 &", user="root")
    sbx.commands.run("sudo -n sh -c 'sleep 1000 & disown' >/dev/null 2>&1 &")
    assert find_host_pids(lambda c: c == ["sleep", marker])
    assert sbx.kill() is True
    assert find_host_pids(lambda c: c == ["sleep", marker]) == []
    assert_clean(e2e_server, baseline)


def _rss_mb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_an_output_flood_then_kill_leaves_nothing(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    assert e2e_server.proc is not None
    rss_before = _rss_mb(e2e_server.proc.pid)
    sbx = Sandbox.create()
    received = 0
    ended: list[BaseException | None] = []

    def count(chunk: str) -> None:
        nonlocal received
        received += len(chunk)

    # One flood is read as fast as the SDK can; another is never read at all.
    flood = sbx.commands.run("yes shoal-flood", background=True, retain_output=False)
    sbx.commands.run("cat /dev/zero | tr '\\0' x", background=True)

    def drain() -> None:
        try:
            flood.wait(on_stdout=count)
            ended.append(None)
        except BaseException as exc:
            ended.append(exc)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    assert wait_for(lambda: received > 5_000_000, timeout=30)
    # Unread output is not piled up in the server: the pipe's back-pressure stops the writer.
    assert _rss_mb(e2e_server.proc.pid) < rss_before + 300
    assert sbx.kill() is True
    reader.join(timeout=30)
    assert not reader.is_alive(), "the flood's stream did not end when the sandbox was killed"
    assert ended and ended[0] is not None, "a killed command's stream ended cleanly"
    assert_clean(e2e_server, baseline)
    # The server still serves.
    fresh = Sandbox.create()
    try:
        assert fresh.commands.run("echo ok").stdout == "ok\n"
    finally:
        fresh.kill()
    assert_clean(e2e_server, baseline)


def test_killing_twice_and_unknown_ids_leave_nothing(
    e2e_server: ShoalServer, baseline: HostState
) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create()
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert Sandbox.kill("i0000000000000000000") is False
    assert_clean(e2e_server, baseline)
