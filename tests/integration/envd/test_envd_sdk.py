"""The official e2b SDK (debug mode) against our envd app, processes faked on the host.

Debug mode makes no control-plane call and names the sandbox ``debug_sandbox_id``;
``sandbox_url`` points it at our server's ephemeral port instead of localhost:49983.
Debug mode sends no access token, so this sandbox is open (token checks: other tests).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    PtySize,
    Sandbox,
    SandboxException,
    TimeoutException,
)
from envd_harness import EnvdServer
from fakes.envd_sandbox import FakeSandbox

pytestmark = pytest.mark.sdk

DEBUG_ID = "debug_sandbox_id"


@pytest.fixture
def debug_sandbox(envd_server: EnvdServer, tmp_path: Path) -> Iterator[FakeSandbox]:
    sbx = envd_server.add_sandbox(
        tmp_path, sandbox_id=DEBUG_ID, env_vars={"E2B_SANDBOX": "true", "E2B_SANDBOX_ID": DEBUG_ID}
    )
    yield sbx
    envd_server.remove_sandbox(sbx)


@pytest.fixture
def sbx(envd_server: EnvdServer, debug_sandbox: FakeSandbox) -> Sandbox:
    return Sandbox.create(debug=True, sandbox_url=envd_server.url, api_key="e2b_" + "0" * 40)


def gone_soon(sbx: Sandbox, pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pid not in [p.pid for p in sbx.commands.list()]:
            return True
        time.sleep(0.05)
    return False


def test_run_returns_output_env_and_home(sbx: Sandbox, debug_sandbox: FakeSandbox) -> None:
    result = sbx.commands.run(
        "echo hi; echo oops >&2; echo $E2B_SANDBOX_ID $MINE; pwd", envs={"MINE": "x"}
    )
    assert result.exit_code == 0
    assert result.stdout == f"hi\n{DEBUG_ID} x\n{debug_sandbox.home}\n"
    assert result.stderr == "oops\n"


def test_failed_command_raises_with_exit_code(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sbx.commands.run("echo bad >&2; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stderr == "bad\n"
    assert info.value.error == "exit status 3"


def test_background_list_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 30", background=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert listed[handle.pid].cmd == "/bin/bash"
    assert listed[handle.pid].args == ["-l", "-c", "sleep 30"]
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert info.value.error == "signal: killed"
    assert gone_soon(sbx, handle.pid)
    assert sbx.commands.kill(handle.pid) is False


def test_stdin_send_and_close(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "hello\n")
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello\n"


def test_stream_input(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(handle.pid, iter(["a", "b", "c\n"]))
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\n"


def test_connect_to_running_command(sbx: Sandbox) -> None:
    handle = sbx.commands.run("read x; echo got $x", background=True, stdin=True)
    handle.disconnect()
    again = sbx.commands.connect(handle.pid)
    sbx.commands.send_stdin(handle.pid, "it\n")
    assert again.wait().stdout == "got it\n"


def test_timeout_kills_the_command(sbx: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while sbx.commands.list() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sbx.commands.list() == []  # killed at the deadline, not left running


def test_bad_cwd_and_unknown_user(sbx: Sandbox) -> None:
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", cwd="/no/such/dir")
    with pytest.raises(AuthenticationException):
        sbx.commands.run("true", user="nobody")


def test_pty_create_input_resize_kill(sbx: Sandbox) -> None:
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(terminal.pid, b"tput cols; exit\n")
    chunks: list[bytes] = []
    result = terminal.wait(on_pty=chunks.append)
    assert result.exit_code == 0
    assert b"100" in b"".join(chunks)

    second = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(second.pid) is True
    with pytest.raises(CommandExitException):
        second.wait()


def test_sandbox_killed_mid_command(
    envd_server: EnvdServer, sbx: Sandbox, debug_sandbox: FakeSandbox
) -> None:
    handle = sbx.commands.run("sleep 30", background=True)

    async def kill() -> None:
        envd_server.directory.sandboxes.pop(DEBUG_ID)
        debug_sandbox.spawner.gone()

    envd_server.run(kill())
    with pytest.raises(SandboxException) as info:
        handle.wait()
    assert "killed" in str(info.value)


def test_round_trip_of_true(sbx: Sandbox) -> None:
    sbx.commands.run("true")
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        sbx.commands.run("true")
    per_run = (time.perf_counter() - started) / runs
    print(
        f"commands.run('true') round trip: {per_run * 1000:.1f} ms (host bash -l via fake spawner)"
    )
    assert per_run < 0.5


def test_pid_is_real(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 30", background=True)
    assert sbx.commands.run(f"kill -0 {handle.pid}").exit_code == 0
    os.kill(handle.pid, 0)
    handle.kill()


async def test_async_sdk_run_background_and_pty(
    envd_server: EnvdServer, debug_sandbox: FakeSandbox
) -> None:
    sbx = await AsyncSandbox.create(
        debug=True, sandbox_url=envd_server.url, api_key="e2b_" + "0" * 40
    )
    result = await sbx.commands.run("echo async")
    assert result.stdout == "async\n"

    handle = await sbx.commands.run("cat", background=True, stdin=True)
    await sbx.commands.send_stdin(handle.pid, "piped\n")
    await sbx.commands.close_stdin(handle.pid)
    assert (await handle.wait()).stdout == "piped\n"

    chunks: list[bytes] = []
    terminal = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=chunks.append)
    await sbx.pty.resize(terminal.pid, PtySize(rows=24, cols=123))
    await sbx.pty.send_stdin(terminal.pid, b"tput cols; exit\n")
    assert (await terminal.wait()).exit_code == 0
    assert b"123" in b"".join(chunks)
