"""Pause and resume through the official Python SDK (sync and async): memory pauses that
look like nothing happened, filesystem-only pauses that boot afresh, auto-pause on
timeout, auto-resume on traffic, and kills of paused sandboxes (e2b-compat §2.3, the
upstream ``test_snapshot``, ``test_snapshot_filesystem_only`` and lifecycle tests of
``test_create``, in our words)."""

from __future__ import annotations

import asyncio

import pytest
from compat_helpers import unique, wait_for
from e2b import AsyncSandbox, Sandbox, SandboxNotFoundException, SandboxState

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"

# A process that outlives the command that started it: it records its pid, then counts.
COUNTER = (
    "bash -c 'echo $$ > /tmp/counter.pid; i=0; "
    "while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done'"
)


def count(sbx: Sandbox) -> int:
    return int(sbx.commands.run("cat /tmp/counter").stdout.strip())


def counter_alive(sbx: Sandbox) -> bool:
    """Whether the counter still counts (its pid alone could be reused after a reboot)."""
    result = sbx.commands.run(
        "a=$(cat /tmp/counter); sleep 0.5; b=$(cat /tmp/counter); "
        '[ "$a" != "$b" ] && echo alive || echo gone'
    )
    return result.stdout.strip() == "alive"


def state_of(sandbox_id: str) -> SandboxState:
    # get_info goes to the control plane only: it never wakes an auto-resume sandbox.
    return Sandbox.get_info(sandbox_id).state


# memory pause


def test_pause_and_connect_keep_processes_files_and_boot_id(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    token = sbx._envd_access_token
    sbx.commands.run(COUNTER, background=True)
    wait_for(lambda: sbx.files.exists("/tmp/counter"), what="the counter to start")
    sbx.commands.run("echo 'kept in /tmp' > /tmp/marker")
    boot_before = sbx.commands.run(BOOT_ID).stdout.strip()
    pid_before = sbx.commands.run("cat /tmp/counter.pid").stdout.strip()

    assert sbx.pause() is True
    assert sbx.is_running() is False
    info = sbx.get_info()
    assert info.state == SandboxState.PAUSED

    resumed = sbx.connect()
    assert resumed.sandbox_id == sbx.sandbox_id
    assert resumed._envd_access_token == token
    assert sbx.is_running() is True
    assert sbx.get_info().state == SandboxState.RUNNING

    # The old handle works: same id, same token.
    assert sbx.commands.run(BOOT_ID).stdout.strip() == boot_before
    assert sbx.commands.run("cat /tmp/marker").stdout == "kept in /tmp\n"
    assert sbx.commands.run("cat /tmp/counter.pid").stdout.strip() == pid_before
    assert counter_alive(sbx)
    first = count(sbx)
    wait_for(lambda: count(sbx) > first, what="the counter to go on counting")


def test_second_pause_is_false_and_connect_by_id_resumes(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    assert Sandbox.pause(sbx.sandbox_id) is True
    assert Sandbox.pause(sbx.sandbox_id) is False  # 409: already paused
    assert sbx.beta_pause() is False

    again = Sandbox.connect(sbx.sandbox_id, timeout=90)
    assert again.sandbox_id == sbx.sandbox_id
    assert again.is_running()
    assert again.commands.run("echo back").stdout == "back\n"
    info = again.get_info()
    assert abs((info.end_at - info.started_at).total_seconds() - 90) < 5


def test_kill_of_a_paused_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    assert sbx.pause() is True
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert sbx.is_running() is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(sbx.sandbox_id)


# filesystem-only pause


def test_filesystem_pause_keeps_files_and_boots_afresh(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=120)
    sbx.files.write("/home/user/fs-only.txt", "persisted")
    sbx.commands.run(COUNTER, background=True)
    wait_for(lambda: sbx.files.exists("/tmp/counter"), what="the counter to start")
    boot_before = sbx.commands.run(BOOT_ID).stdout.strip()

    assert sbx.pause(mode="filesystem") is True
    assert sbx.is_running() is False
    assert sbx.pause(keep_memory=False) is False

    resumed = sbx.connect()
    assert resumed.sandbox_id == sbx.sandbox_id
    assert sbx.files.read("/home/user/fs-only.txt") == "persisted"
    assert sbx.commands.run(BOOT_ID).stdout.strip() != boot_before
    assert not counter_alive(sbx)


def test_reboot_on_resume_after_a_memory_pause(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    sbx.files.write("/home/user/kept.txt", "on disk")
    boot_before = sbx.commands.run(BOOT_ID).stdout.strip()
    assert sbx.pause() is True
    sbx.connect(on_resume="reboot")
    assert sbx.commands.run(BOOT_ID).stdout.strip() != boot_before
    assert sbx.files.read("/home/user/kept.txt") == "on disk"


# lifecycle


def test_auto_pause_on_timeout_then_connect(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": False})
    assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
    sbx.commands.run("echo before > /tmp/auto")
    boot_before = sbx.commands.run(BOOT_ID).stdout.strip()
    wait_for(lambda: state_of(sbx.sandbox_id) == SandboxState.PAUSED, within=30)
    assert sbx.is_running() is False  # no auto-resume: traffic gets 502

    sbx.connect()
    assert sbx.get_info().state == SandboxState.RUNNING
    assert sbx.commands.run("cat /tmp/auto").stdout == "before\n"
    assert sbx.commands.run(BOOT_ID).stdout.strip() == boot_before


def test_filesystem_auto_pause_boots_afresh(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(
        timeout=3, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}}
    )
    sbx.files.write("/home/user/auto-fs.txt", "marker")
    boot_before = sbx.commands.run(BOOT_ID).stdout.strip()
    wait_for(lambda: state_of(sbx.sandbox_id) == SandboxState.PAUSED, within=30)
    sbx.connect()
    assert sbx.files.read("/home/user/auto-fs.txt") == "marker"
    assert sbx.commands.run(BOOT_ID).stdout.strip() != boot_before


def test_traffic_wakes_an_auto_resume_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": True})
    assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
    sbx.commands.run("echo awake > /tmp/woken")
    wait_for(lambda: state_of(sbx.sandbox_id) == SandboxState.PAUSED, within=30)

    # Any data-plane request resumes it: the proxy holds it until the sandbox is back.
    assert sbx.commands.run("cat /tmp/woken").stdout == "awake\n"
    assert sbx.get_info().state == SandboxState.RUNNING
    assert sbx.is_running() is True


def test_paused_sandboxes_are_listed_as_paused(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    from e2b import SandboxQuery

    sbx_tag = unique("pause-list")
    sbx = sandbox_factory(metadata={"pause-list": sbx_tag})
    sbx.pause()
    query = SandboxQuery(metadata={"pause-list": sbx_tag}, state=[SandboxState.PAUSED])
    found = Sandbox.list(query=query).next_items()
    assert [(s.sandbox_id, s.state) for s in found] == [(sbx.sandbox_id, SandboxState.PAUSED)]
    running = SandboxQuery(metadata={"pause-list": sbx_tag}, state=[SandboxState.RUNNING])
    assert Sandbox.list(query=running).next_items() == []


# async


async def test_async_pause_connect_and_kill(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory(timeout=120)
    await sbx.commands.run(COUNTER, background=True)
    for _ in range(100):
        if await sbx.files.exists("/tmp/counter"):
            break
        await asyncio.sleep(0.05)
    await sbx.commands.run("echo async > /tmp/marker")
    boot_before = (await sbx.commands.run(BOOT_ID)).stdout.strip()

    assert await sbx.pause() is True
    assert await sbx.is_running() is False
    assert await AsyncSandbox.pause(sbx.sandbox_id) is False

    resumed = await sbx.connect()
    assert resumed.sandbox_id == sbx.sandbox_id
    assert await sbx.is_running() is True
    assert (await sbx.commands.run(BOOT_ID)).stdout.strip() == boot_before
    assert (await sbx.commands.run("cat /tmp/marker")).stdout == "async\n"
    alive = await sbx.commands.run(
        "a=$(cat /tmp/counter); sleep 0.5; b=$(cat /tmp/counter); "
        '[ "$a" != "$b" ] && echo alive || echo gone'
    )
    assert alive.stdout == "alive\n"

    assert await sbx.pause() is True
    assert await sbx.kill() is True
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.connect(sbx.sandbox_id)


async def test_async_filesystem_pause(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    await sbx.files.write("/home/user/async-fs.txt", "disk")
    boot_before = (await sbx.commands.run(BOOT_ID)).stdout.strip()
    assert await sbx.pause(mode="filesystem") is True
    await AsyncSandbox.connect(sbx.sandbox_id)
    assert await sbx.files.read("/home/user/async-fs.txt") == "disk"
    assert (await sbx.commands.run(BOOT_ID)).stdout.strip() != boot_before


# code interpreter


def test_code_interpreter_state_survives_a_pause(shoal_server, request) -> None:  # type: ignore[no-untyped-def]
    from e2b_code_interpreter import Sandbox as CodeInterpreter

    ci = CodeInterpreter.create(timeout=120, metadata={"test": request.node.name[:60]})
    try:
        ci.run_code("import os\nkept = list(range(100_000))\npid = os.getpid()")
        pid = ci.run_code("pid").text
        assert ci.pause() is True
        assert ci.is_running() is False
        ci.connect()
        # The same kernel process with the same variables: nothing happened.
        assert ci.run_code("pid").text == pid
        assert ci.run_code("sum(kept)").text == str(sum(range(100_000)))
    finally:
        ci.kill()
