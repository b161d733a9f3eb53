"""The processes envd started in one sandbox, and what each one carries.

A :class:`RunningProcess` owns the fds the spawner handed back. One pump task reads its
output and fans it out to every subscriber (the Start stream and any Connect streams);
when the process exits the pump drains what is left, publishes the exit status, closes
the fds and moves the entry to the table's short "recently ended" list, from which
``Connect`` can still be answered with the ``end`` event.

Draining: pipes are read to end of file, but a background grandchild may hold them open
forever. After the exit, reading goes on only while bytes keep arriving (``drain_idle``
without any ends it) and for at most ``drain_max`` seconds. Everything the process itself
wrote is already in the pipe when it exits, so only the grandchild's later output is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal as signals
import struct
import termios
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shoal.envd.process.fdio import read_chunk, set_nonblocking, wake
from shoal.envd.process.subscriber import Subscriber
from shoal.errors import InvalidStateTransition, SandboxGone
from shoal.runtime.process import ExitStatus, ProcessHandle, ProcessSpawner
from shoal.wire.envd import process_pb as pb

log = logging.getLogger(__name__)

PIPE_CHUNK = 32 * 1024
PTY_CHUNK = 16 * 1024
DRAIN_IDLE = 0.05
DRAIN_MAX = 2.0
DISCARD_PAUSE = 0.001
"""Pause after each chunk nobody is subscribed to. Unwatched output is discarded (as
upstream does, so a detached background job never blocks), but a flood of it must not
spin the agent's event loop: this caps discarding at about one pipe buffer per ms."""
ENDED_KEPT = 64
"""How many ended processes a table remembers for late ``Connect`` calls."""

OutputKind = Literal["stdout", "stderr", "pty"]


@dataclass(frozen=True, slots=True)
class Output:
    kind: OutputKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class Failed:
    """Waiting for the process failed; ``error`` is usually :class:`shoal.errors.SandboxGone`."""

    error: BaseException


ProcessEvent = Output | Ended | Failed


class RunningProcess:
    """One process started through envd, from spawn until its end has been published."""

    def __init__(
        self,
        handle: ProcessHandle,
        config: pb.ProcessConfig,
        tag: str | None,
        spawner: ProcessSpawner,
        *,
        drain_idle: float = DRAIN_IDLE,
        drain_max: float = DRAIN_MAX,
    ) -> None:
        self.handle = handle
        self.pid = handle.pid
        self.config = config
        self.tag = tag
        self.is_pty = handle.pty is not None
        self.outcome: Ended | Failed | None = None
        self._spawner = spawner
        self._drain_idle = drain_idle
        self._drain_max = drain_max
        self._subscribers: set[Subscriber[ProcessEvent]] = set()
        self._progress = 0
        self._pump: asyncio.Task[None] | None = None
        self._killer: asyncio.TimerHandle | None = None
        self._kill_task: asyncio.Task[None] | None = None
        self._on_finish: Callable[[RunningProcess], None] | None = None

        self._input_fd: int | None
        if handle.pty is not None:
            self._outputs: list[tuple[int, OutputKind]] = [(handle.pty, "pty")]
            self._input_fd = handle.pty
        else:
            self._outputs = []
            if handle.stdout is not None:
                self._outputs.append((handle.stdout, "stdout"))
            if handle.stderr is not None:
                self._outputs.append((handle.stderr, "stderr"))
            self._input_fd = handle.stdin
        given = (handle.stdin, handle.stdout, handle.stderr, handle.pty)
        self._fds = {fd for fd in given if fd is not None}
        for fd in self._fds:
            set_nonblocking(fd)
        self._input_lock = asyncio.Lock()
        self._input_waiters: set[asyncio.Future[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self, on_finish: Callable[[RunningProcess], None]) -> None:
        """Start pumping output. Subscribe first: output read before that is discarded."""
        self._on_finish = on_finish
        self._pump = asyncio.create_task(self._run(), name=f"envd-pump-{self.pid}")

    def kill_after(self, seconds: float) -> None:
        """SIGKILL the process group once ``seconds`` pass (the request's Connect deadline)."""
        loop = asyncio.get_running_loop()
        self._killer = loop.call_later(max(seconds, 0.0), self._kill_now)

    def _kill_now(self) -> None:
        self._killer = None
        if not self.finished:
            self._kill_task = asyncio.create_task(self._kill(), name=f"envd-kill-{self.pid}")

    async def _kill(self) -> None:
        try:
            await self._spawner.signal(self.pid, signals.SIGKILL, group=True)
        except Exception:  # the pump reports what became of the process
            log.warning("killing pid %d at its deadline failed", self.pid, exc_info=True)

    def release(self) -> None:
        """Drop everything held for this process without signalling it (sandbox forgotten)."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        else:
            self._close_fds()
        self._cancel_killer()

    # -- subscribers ---------------------------------------------------------------------

    def subscribe(self) -> Subscriber[ProcessEvent]:
        sub: Subscriber[ProcessEvent] = Subscriber()
        if self.outcome is not None:
            sub.put_final(self.outcome)
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber[ProcessEvent]) -> None:
        self._subscribers.discard(sub)
        sub.close()

    async def _broadcast(self, event: Output) -> None:
        for sub in list(self._subscribers):
            if not await sub.put(event):
                self._subscribers.discard(sub)

    def _finish(self, outcome: Ended | Failed) -> None:
        self.outcome = outcome
        subscribers, self._subscribers = self._subscribers, set()
        for sub in subscribers:
            sub.put_final(outcome)
            sub.close()

    # -- pump ----------------------------------------------------------------------------

    async def _run(self) -> None:
        readers = [
            asyncio.create_task(self._read(fd, kind), name=f"envd-read-{self.pid}-{kind}")
            for fd, kind in self._outputs
        ]
        outcome: Ended | Failed
        try:
            try:
                outcome = Ended(await self.handle.wait())
            except Exception as exc:  # SandboxGone, or a broken spawner: tell the streams
                outcome = Failed(exc)
            else:
                await self._drain(readers)
        except asyncio.CancelledError:
            # Only release() cancels the pump: the sandbox is going away under the streams.
            outcome = Failed(SandboxGone("the sandbox is gone"))
            raise
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            self._close_fds()
            self._cancel_killer()
            self._finish(outcome)
            if self._on_finish is not None:
                self._on_finish(self)

    async def _read(self, fd: int, kind: OutputKind) -> None:
        size = PTY_CHUNK if kind == "pty" else PIPE_CHUNK
        while True:
            data = await read_chunk(fd, size)
            if not data:
                return
            self._progress += 1
            if self._subscribers:
                await self._broadcast(Output(kind, data))
                # A flood never makes read_chunk wait; yield so the loop serves the rest.
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(DISCARD_PAUSE)
            self._progress += 1

    async def _drain(self, readers: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._drain_max
        pending = {r for r in readers if not r.done()}
        while pending:
            before = self._progress
            _, pending = await asyncio.wait(pending, timeout=self._drain_idle)
            if pending and (self._progress == before or loop.time() >= give_up):
                return

    def _cancel_killer(self) -> None:
        if self._killer is not None:
            self._killer.cancel()
            self._killer = None

    def _close_fds(self) -> None:
        self._input_fd = None
        loop = asyncio.get_running_loop()
        for waiter in self._input_waiters:
            if not waiter.done():
                waiter.set_result(None)
        fds, self._fds = self._fds, set()
        for fd in fds:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- input ---------------------------------------------------------------------------

    async def write_input(self, data: bytes, *, pty: bool) -> None:
        """Write ``data`` to the process's stdin (``pty=False``) or terminal (``pty=True``)."""
        if pty and not self.is_pty:
            raise InvalidStateTransition(
                "tty not assigned to process — input should be written to the stdin, not the tty"
            )
        if not pty and self.is_pty:
            raise InvalidStateTransition(
                "tty assigned to process — input should be written to the pty, not the stdin"
            )
        view = memoryview(data)
        async with self._input_lock:
            while view:
                fd = self._input_fd
                if fd is None:
                    raise InvalidStateTransition("stdin not enabled or closed")
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await self._wait_writable(fd)
                    continue
                except OSError as exc:
                    raise InvalidStateTransition(
                        f"error writing to stdin of process '{self.pid}': {exc.strerror}"
                    ) from exc
                view = view[written:]

    async def _wait_writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._input_waiters.add(fut)
        loop.add_writer(fd, wake, fut)
        try:
            await fut
        finally:
            self._input_waiters.discard(fut)
            if fd in self._fds:
                loop.remove_writer(fd)

    def close_stdin(self) -> None:
        if self.is_pty:
            raise InvalidStateTransition(
                "cannot close stdin for PTY process — send Ctrl+D (0x04) instead"
            )
        fd = self._input_fd
        if fd is None:
            return
        self._input_fd = None
        for waiter in self._input_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if fd in self._fds:
            self._fds.discard(fd)
            asyncio.get_running_loop().remove_writer(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def resize(self, cols: int, rows: int) -> None:
        fd = self.handle.pty
        if fd is None or fd not in self._fds:
            raise InvalidStateTransition("tty not assigned to process")
        try:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise InvalidStateTransition("tty not assigned to process") from exc
            raise


class ProcessTable:
    """Every process envd started in one sandbox, by pid, plus the recently ended ones."""

    def __init__(self) -> None:
        self._running: dict[int, RunningProcess] = {}
        self._ended: OrderedDict[int, RunningProcess] = OrderedDict()
        self._released = False

    def add(self, proc: RunningProcess) -> None:
        """Register ``proc`` and start its pump (subscribe the first stream before this)."""
        self._ended.pop(proc.pid, None)
        self._running[proc.pid] = proc
        proc.start(self._finished)

    def _finished(self, proc: RunningProcess) -> None:
        if self._running.get(proc.pid) is proc:
            del self._running[proc.pid]
        if self._released:
            return
        self._ended[proc.pid] = proc
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def running(self) -> list[RunningProcess]:
        return list(self._running.values())

    def knows(self, pid: int) -> bool:
        """Whether ``pid`` is a running process of this table."""
        return pid in self._running

    def find(
        self, selector: pb.ProcessSelector, *, include_ended: bool = False
    ) -> RunningProcess | None:
        """The process a selector names (running first; ended only if asked)."""
        choice = selector.selector
        if choice is None:
            return None
        pools = [self._running, self._ended] if include_ended else [self._running]
        if choice.field == "pid":
            for pool in pools:
                if (proc := pool.get(int(choice.value))) is not None:
                    return proc
            return None
        for pool in pools:
            for proc in pool.values():
                if proc.tag is not None and proc.tag == choice.value:
                    return proc
        return None

    def release(self) -> None:
        """Let go of every fd, pump and timer; the processes themselves are not signalled."""
        self._released = True
        for proc in list(self._running.values()):
            proc.release()
        self._running.clear()
        self._ended.clear()
