"""Processes started in a sandbox survive a server restart and stay visible and attachable.

The server is stopped (SIGTERM, as a user's Ctrl-C) and started again on the same data
directory and ports. Sandboxes are detached containers; the processes in them must not
notice: a loop that prints every 0.1 s keeps printing (no EPIPE/SIGPIPE while nobody reads
its pipe), an HTTP server that logs every request keeps answering, a shell on a pty
keeps its terminal. Afterwards the official SDK lists them with the config and tag they
were started with, re-attaches to their output, types into the pty and kills them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hoststate import HostState, snapshot, wait_for, wait_until_clean
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

TICKER = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"
TICK = re.compile(rb"tick (\d+)\n")
WWW = "/tmp/www"
IGNORE_FDS = 10**6
"""The server process is a new one after a restart: its fd count is not comparable."""


def start_tagged(sbx: Any, cmd: str, tag: str) -> Any:
    """``commands.run(cmd, background=True, timeout=0)`` with a tag: the SDK's own
    ``_start`` does not take one, so this makes the same call through its RPC client."""
    from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
    from e2b.envd.client_sync import as_stream
    from e2b.envd.process import process_pb
    from e2b.envd.utils import authentication_header

    commands = sbx.commands
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
    """The numbers of the next ``count`` ticks ``handle`` streams (partial lines kept)."""
    buf = b""
    seen: list[int] = []
    for stdout, _stderr, _pty in handle:
        if stdout is None:
            continue
        buf += stdout.encode()
        while (m := TICK.search(buf)) is not None:
            seen.append(int(m.group(1)))
            buf = buf[m.end() :]
        if len(seen) >= count:
            break
    handle.disconnect()
    return seen


def pty_echo(sbx: Any, pid: int, text: str, timeout: float = 15) -> bytes:
    """Attach to the pty, type ``echo <text>`` and read until the shell printed it.

    Attaching first: what a process writes while nobody is attached is discarded."""
    got = b""
    needle = text.encode()
    handle = sbx.pty.connect(pid, timeout=timeout)
    try:
        # $((6*7)): the echoed input line itself does not contain the answer
        sbx.pty.send_stdin(pid, f"echo {text}-$((6*7))\n".encode())
        for _stdout, _stderr, pty in handle:
            if pty is not None:
                got += pty
                if needle + b"-42" in got:
                    break
    finally:
        handle.disconnect()
    return got


def get_page(server: ShoalServer, sbx: Any, path: str) -> httpx.Response:
    with httpx.Client(base_url=server.sandbox_url, trust_env=False, timeout=10) as client:
        return client.get(
            path, headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        )


def listing(sbx: Any) -> dict[int, tuple[str, list[str], str | None, dict[str, str], str | None]]:
    return {p.pid: (p.cmd, list(p.args), p.tag, dict(p.envs), p.cwd) for p in sbx.commands.list()}


def alive_in(sbx: Any, pid: int) -> bool:
    return sbx.commands.run(f"kill -0 {pid} && echo yes || echo no").stdout == "yes\n"


@pytest.fixture
def base(fresh_server: ShoalServer) -> Iterator[HostState]:
    assert fresh_server.proc is not None
    state = snapshot(fresh_server.data_dir, fresh_server.proc.pid)
    assert not state.sandbox_dirs and not state.containers, state
    yield state


def test_processes_survive_a_restart_and_stay_attachable(
    fresh_server: ShoalServer, base: HostState
) -> None:
    from e2b import CommandExitException, PtySize, Sandbox

    sbx = Sandbox.create()
    ticker = start_tagged(sbx, TICKER, "ticker")
    sbx.commands.run(f"mkdir -p {WWW} && echo served-from-the-sandbox > {WWW}/page.txt")
    web = sbx.commands.run(
        f"exec python3 -m http.server 8000 --bind 127.0.0.1 --directory {WWW}",
        background=True,
        envs={"WEB": "1"},
        cwd="/tmp",
        timeout=0,
    )
    assert wait_for(lambda: get_page(fresh_server, sbx, "/page.txt").status_code == 200)
    shell = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
    assert b"pty-before-42" in pty_echo(sbx, shell.pid, "pty-before")
    shell.disconnect()

    before = listing(sbx)
    assert before[ticker.pid][:3] == ("/bin/bash", ["-l", "-c", TICKER], "ticker")
    assert before[web.pid][:3] == (
        "/bin/bash",
        ["-l", "-c", f"exec python3 -m http.server 8000 --bind 127.0.0.1 --directory {WWW}"],
        None,
    )
    assert before[web.pid][3] == {"WEB": "1"} and before[web.pid][4] == "/tmp"
    last_before = max(ticks(sbx.commands.connect(ticker.pid, timeout=15), 2))
    ticker.disconnect()
    web.disconnect()

    fresh_server.stop()
    time.sleep(1.0)  # ~10 ticks and a full wait while nobody reads any of these pipes
    fresh_server.start()

    # Still there, with the very config and tag they were started with.
    after = listing(sbx)
    for pid in (ticker.pid, web.pid, shell.pid):
        assert after.get(pid) == before[pid], (pid, after)
    # The loop kept running all along (the same pid, counting on from where it was).
    fresh = ticks(sbx.commands.connect(ticker.pid, timeout=15), 3)
    assert len(fresh) == 3 and fresh[0] > last_before
    assert fresh == list(range(fresh[0], fresh[0] + 3))
    # The HTTP server answers, and keeps answering although each request writes a log line.
    for _ in range(5):
        r = get_page(fresh_server, sbx, "/page.txt")
        assert (r.status_code, r.text) == (200, "served-from-the-sandbox\n")
    assert alive_in(sbx, web.pid)
    # The pty shell kept its terminal: input and output still work through it.
    assert b"pty-after-42" in pty_echo(sbx, shell.pid, "pty-after")

    # Killing works, and a stream attached after the restart gets the end.
    attached = sbx.commands.connect(ticker.pid, timeout=30)
    assert sbx.commands.kill(ticker.pid) is True
    with pytest.raises(CommandExitException) as ended:
        attached.wait()
    assert ended.value.error == "signal: killed"
    assert sbx.commands.kill(web.pid) is True
    assert sbx.pty.kill(shell.pid) is True
    assert wait_for(lambda: listing(sbx) == {}, timeout=10)
    assert get_page(fresh_server, sbx, "/page.txt").status_code == 502  # nothing listens

    assert sbx.kill() is True
    assert fresh_server.proc is not None and fresh_server.proc.poll() is None
    leaks = wait_until_clean(
        fresh_server.data_dir, fresh_server.proc.pid, base, fd_slack=IGNORE_FDS
    )
    assert leaks == [], "\n".join(leaks)


def test_a_process_that_ends_while_the_server_is_down_is_not_listed(
    fresh_server: ShoalServer, base: HostState
) -> None:
    """And a second restart keeps what the first one took back."""
    from e2b import Sandbox

    sbx = Sandbox.create()
    short = sbx.commands.run("sleep 1; echo done", background=True, timeout=0)
    kept = start_tagged(sbx, "exec sleep 1000", "kept")
    short.disconnect()
    kept.disconnect()

    fresh_server.stop()
    time.sleep(1.5)
    fresh_server.start()
    assert set(listing(sbx)) == {kept.pid}
    fresh_server.stop()
    fresh_server.start()
    assert listing(sbx) == {
        kept.pid: ("/bin/bash", ["-l", "-c", "exec sleep 1000"], "kept", {}, None)
    }
    assert sbx.commands.kill(kept.pid) is True
    assert wait_for(lambda: listing(sbx) == {}, timeout=10)
    assert sbx.kill() is True
    assert fresh_server.proc is not None
    leaks = wait_until_clean(
        fresh_server.data_dir, fresh_server.proc.pid, base, fd_slack=IGNORE_FDS
    )
    assert leaks == [], "\n".join(leaks)
