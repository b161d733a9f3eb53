"""envd taking its processes back after an agent restart, with a real ``shoal-init``.

The sandbox's spawner here is a real init (run as a plain child of the test, no
namespaces) instead of the host fake. A "restart" does to envd and init what stopping
and starting the node agent does: the init connection closes with every fd the agent
held, the process table is forgotten, a new connection is made, and
``ProcessService.adopt_processes`` is called. The official SDK (debug mode) checks what a
user sees before and after.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import CommandExitException, PtySize, Sandbox
from envd_harness import EnvdServer
from fakes.envd_sandbox import FakeSandbox

from shoal.runtime.initbin import ensure_built
from shoal.runtime.initclient import InitClient, connect_init

pytestmark = pytest.mark.sdk

DEBUG_ID = "debug_sandbox_id"
TICKER = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done"
TICK = re.compile(rb"tick (\d+)\n")
_names = itertools.count()


def _descendants(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        kids = [int(p) for t in tasks for p in (t / "children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _descendants(k)]


class InitSandbox:
    """A real shoal-init whose connection lives on the envd server's loop."""

    def __init__(self, server: EnvdServer, sandbox: FakeSandbox, binary: Path) -> None:
        self.server = server
        self.sandbox = sandbox
        self.name = f"shoal-envd-test-{os.getpid()}-{next(_names)}"
        self.proc = subprocess.Popen([str(binary), self.name], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while f"@{self.name}\n" not in Path(f"/proc/{self.proc.pid}/net/unix").read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, "init did not start"
            time.sleep(0.005)
        sandbox.spawner = self.server.run(self._connect())  # type: ignore[assignment]

    async def _connect(self) -> InitClient:
        return await connect_init(self.name)

    def restart_agent(self) -> list[int]:
        """What a node agent restart does; returns the pids envd took back."""

        async def restart() -> list[int]:
            old = self.sandbox.spawner
            await old.aclose()  # the agent's connection and every fd it held go away
            self.server.app.forget(self.sandbox.sandbox_id)
            await asyncio.sleep(0.2)  # the processes run on with nobody reading
            self.sandbox.spawner = await self._connect()  # type: ignore[assignment]
            return list(await self.server.app.processes.adopt_processes(self.sandbox))

        return self.server.run(restart())

    def close(self) -> None:
        for pid in _descendants(self.proc.pid):
            os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_built(tmp_path_factory.mktemp("initbin"))


@pytest.fixture
def init_sandbox(
    envd_server: EnvdServer, tmp_path: Path, init_binary: Path
) -> Iterator[InitSandbox]:
    sbx = envd_server.add_sandbox(tmp_path, sandbox_id=DEBUG_ID, env_vars={"E2B_SANDBOX": "true"})
    box = InitSandbox(envd_server, sbx, init_binary)
    yield box
    envd_server.remove_sandbox(sbx)
    box.close()


@pytest.fixture
def sdk(envd_server: EnvdServer, init_sandbox: InitSandbox) -> Sandbox:
    return Sandbox.create(debug=True, sandbox_url=envd_server.url, api_key="e2b_" + "0" * 40)


def start_tagged(sbx: Sandbox, cmd: str, tag: str) -> Any:
    """``commands.run(cmd, background=True, timeout=0)`` with a tag, through the SDK's
    own RPC client (its ``run`` takes no tag)."""
    from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
    from e2b.envd.client_sync import as_stream
    from e2b.envd.process import process_pb
    from e2b.envd.utils import authentication_header

    commands: Any = sbx.commands
    events = as_stream(
        commands._rpc.start(
            process_pb.StartRequest(
                process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", cmd]),
                stdin=False,
                tag=tag,
            ),
            headers={
                **authentication_header(commands._envd_version, None),
                KEEPALIVE_PING_HEADER: str(KEEPALIVE_PING_INTERVAL_SEC),
            },
            timeout_ms=0,
        )
    )
    return commands._create_handle(events, "start process", False)


def ticks(handle: Any, count: int) -> list[int]:
    buf = b""
    seen: list[int] = []
    for stdout, _stderr, _pty in handle:
        if stdout is not None:
            buf += stdout.encode()
            while (m := TICK.search(buf)) is not None:
                seen.append(int(m.group(1)))
                buf = buf[m.end() :]
            if len(seen) >= count:
                break
    handle.disconnect()
    return seen


def listing(sbx: Sandbox) -> dict[int, tuple[Any, ...]]:
    return {p.pid: (p.cmd, p.args, p.tag, p.envs, p.cwd) for p in sbx.commands.list()}


def test_processes_are_listed_attached_and_killed_after_a_restart(
    sdk: Sandbox, init_sandbox: InitSandbox
) -> None:
    ticker = start_tagged(sdk, TICKER, "ticker")
    plain = sdk.commands.run("exec sleep 1000", background=True, envs={"A": "1"}, cwd="/tmp")
    before = listing(sdk)
    assert before[ticker.pid] == ("/bin/bash", ["-l", "-c", TICKER], "ticker", {}, None)
    assert before[plain.pid] == (
        "/bin/bash",
        ["-l", "-c", "exec sleep 1000"],
        None,
        {"A": "1"},
        "/tmp",
    )
    last = max(ticks(sdk.commands.connect(ticker.pid), 2))
    ticker.disconnect()
    plain.disconnect()

    assert sorted(init_sandbox.restart_agent()) == sorted([ticker.pid, plain.pid])
    assert listing(sdk) == before
    # The loop never stopped: same pid, counting on; the new stream gets live ticks.
    fresh = ticks(sdk.commands.connect(ticker.pid), 3)
    assert fresh[0] > last and fresh == list(range(fresh[0], fresh[0] + 3))
    # Adopting again changes nothing.
    assert (
        init_sandbox.server.run(
            init_sandbox.server.app.processes.adopt_processes(init_sandbox.sandbox)
        )
        == []
    )
    assert listing(sdk) == before

    attached = sdk.commands.connect(ticker.pid)
    assert sdk.commands.kill(ticker.pid) is True
    with pytest.raises(CommandExitException) as ended:
        attached.wait()
    assert ended.value.error == "signal: killed"
    assert sdk.commands.kill(plain.pid) is True
    deadline = time.monotonic() + 5
    while listing(sdk):
        assert time.monotonic() < deadline, listing(sdk)
        time.sleep(0.02)


def test_a_pty_is_reattached_after_a_restart(sdk: Sandbox, init_sandbox: InitSandbox) -> None:
    terminal = sdk.pty.create(PtySize(rows=24, cols=80), timeout=0)
    terminal.disconnect()
    assert init_sandbox.restart_agent() == [terminal.pid]
    (info,) = sdk.commands.list()
    assert (info.pid, info.cmd, info.args) == (terminal.pid, "/bin/bash", ["-i", "-l"])
    handle = sdk.pty.connect(terminal.pid)
    sdk.pty.resize(terminal.pid, PtySize(rows=30, cols=123))
    sdk.pty.send_stdin(terminal.pid, b"echo cols=$(tput cols); exit 3\n")
    out: list[bytes] = []
    with pytest.raises(CommandExitException) as ended:
        handle.wait(on_pty=out.append)
    assert ended.value.exit_code == 3
    assert b"cols=123" in b"".join(out)


def test_stdin_of_a_pipe_process_ends_with_the_old_agent(
    sdk: Sandbox, init_sandbox: InitSandbox
) -> None:
    """Documented: init keeps no stdin write end, so ``cat`` reads end of file."""
    cat = sdk.commands.run("cat; echo eof-seen", background=True, stdin=True, timeout=0)
    cat.disconnect()
    init_sandbox.restart_agent()
    deadline = time.monotonic() + 5
    while cat.pid in listing(sdk):
        assert time.monotonic() < deadline, "cat is still waiting for input"
        time.sleep(0.02)
    assert sdk.commands.run(f"kill -0 {cat.pid} 2>/dev/null || echo ended").stdout == "ended\n"
