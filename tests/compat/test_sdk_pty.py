"""``sandbox.pty`` with the sync SDK: an interactive shell on a terminal (e2b-compat §4.2).

PTY output is raw terminal bytes (prompts, echo, escape codes), so these tests read it
until a marker they asked the shell to print shows up, rather than comparing it whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from compat_helpers import unique, wait_for
from e2b import CommandExitException, CommandHandle, NotFoundException, PtySize


@pytest.fixture
def sbx(shared_sandbox):  # type: ignore[no-untyped-def]
    return shared_sandbox


class Screen:
    """Collects a PTY handle's output on a thread so the test can wait for text."""

    def __init__(self, handle: CommandHandle) -> None:
        self.handle = handle
        self.data = bytearray()
        self.error: BaseException | None = None
        self.result = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            self.result = self.handle.wait(on_pty=self._append)
        except BaseException as exc:
            self.error = exc

    def _append(self, chunk: bytes) -> None:
        with self._lock:
            self.data.extend(chunk)

    def text(self) -> str:
        with self._lock:
            return self.data.decode(errors="replace")

    def wait_for(self, needle: str, within: float = 15) -> str:
        return wait_for(lambda: needle in self.text() and self.text(), within=within, what=needle)

    def join(self, timeout: float = 15) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "PTY stream did not end"


def run_in(sbx, pid: int, line: str) -> None:  # type: ignore[no-untyped-def]
    sbx.pty.send_stdin(pid, (line + "\n").encode())


def marked(expr: str) -> tuple[str, str]:
    """A shell line that prints ``<tag>:<value of expr>:<tag>`` and the tag to look for.

    The tag is split by quotes in the typed line, so the echo of the input cannot match.
    """
    tag = unique("m").replace("-", "")
    return f"echo {tag[:3]}''{tag[3:]}:{expr}:{tag[:3]}''{tag[3:]}", tag


def value_of(screen: Screen, tag: str) -> str:
    text = screen.wait_for(f":{tag}")
    start = text.index(f"{tag}:") + len(tag) + 1
    return text[start : text.index(f":{tag}", start)]


@pytest.fixture
def pty(sbx) -> Iterator[Screen]:  # type: ignore[no-untyped-def]
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=60)
    screen = Screen(handle)
    yield screen
    handle.kill()


def test_pty_size_input_and_defaults(sbx, pty: Screen) -> None:  # type: ignore[no-untyped-def]
    pid = pty.handle.pid
    line, tag = marked("$(tput cols)x$(tput lines)")
    run_in(sbx, pid, line)
    assert value_of(pty, tag) == "80x24"

    line, tag = marked("$TERM,$LANG,$(whoami),$PWD,$E2B_SANDBOX")
    run_in(sbx, pid, line)
    assert value_of(pty, tag) == "xterm-256color,C.UTF-8,user,/home/user,true"

    line, tag = marked("$(tty)")
    run_in(sbx, pid, line)
    assert value_of(pty, tag).startswith("/dev/pts/")


def test_pty_resize(sbx, pty: Screen) -> None:  # type: ignore[no-untyped-def]
    pid = pty.handle.pid
    sbx.pty.resize(pid, PtySize(rows=40, cols=132))
    line, tag = marked("$(tput cols)x$(tput lines)")
    run_in(sbx, pid, line)
    assert value_of(pty, tag) == "132x40"


def test_pty_exit_ends_the_stream(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    screen = Screen(handle)
    run_in(sbx, handle.pid, "exit 7")
    screen.join()
    assert isinstance(screen.error, CommandExitException)
    assert screen.error.exit_code == 7


def test_pty_kill(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    screen = Screen(handle)
    assert handle.pid in {p.pid for p in sbx.commands.list()}
    assert sbx.pty.kill(handle.pid) is True
    screen.join()
    assert isinstance(screen.error, CommandExitException)
    assert screen.error.exit_code == -1
    wait_for(lambda: handle.pid not in {p.pid for p in sbx.commands.list()}, what="pty gone")
    assert sbx.pty.kill(handle.pid) is False


def read_value(events: Iterator, tag: str) -> str:  # type: ignore[type-arg]
    """Read PTY output on this thread (so the handle can be disconnected here) until ``tag``."""
    data = bytearray()
    for _, _, chunk in events:
        if chunk is not None:
            data.extend(chunk)
        text = data.decode(errors="replace")
        start = text.find(f"{tag}:")
        if start >= 0 and f":{tag}" in text[start + len(tag) + 1 :]:
            start += len(tag) + 1
            return text[start : text.index(f":{tag}", start)]
    raise AssertionError(f"PTY stream ended before {tag!r}: {bytes(data)!r}")


def test_pty_reconnect(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
    try:
        line, tag = marked("one")
        run_in(sbx, handle.pid, line)
        assert read_value(iter(handle), tag) == "one"
        handle.disconnect()
        assert handle.pid in {p.pid for p in sbx.commands.list()}

        # The shell survives the disconnect; a new stream sees what it prints next.
        again = sbx.pty.connect(handle.pid)
        assert again.pid == handle.pid
        line, tag = marked("two")
        run_in(sbx, handle.pid, line)
        assert read_value(iter(again), tag) == "two"
        again.disconnect()

        # commands.connect attaches to a PTY too; input may also come as a stream.
        third = Screen(sbx.commands.connect(handle.pid))
        line, tag = marked("three")
        sbx.pty.stream_input(handle.pid, [line[:5], line[5:] + "\n"])
        assert value_of(third, tag) == "three"
    finally:
        sbx.pty.kill(handle.pid)


def test_pty_envs_cwd_and_user(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.pty.create(
        PtySize(rows=10, cols=50), user="root", cwd="/tmp", envs={"TERM": "dumb", "X": "y"}
    )
    screen = Screen(handle)
    try:
        line, tag = marked("$(whoami),$PWD,$TERM,$X")
        run_in(sbx, handle.pid, line)
        assert value_of(screen, tag) == "root,/tmp,dumb,y"
    finally:
        handle.kill()


def test_pty_unknown_pid(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundException):
        sbx.pty.send_stdin(999_999, b"x")
    with pytest.raises(NotFoundException):
        sbx.pty.resize(999_999, PtySize(rows=1, cols=1))
    with pytest.raises(NotFoundException):
        sbx.pty.connect(999_999)
