"""A ProcessSpawner that runs processes directly on the host, as the current user.

For tests of the envd services only: no namespaces, no uid switch (``uid``/``gid``/
``groups`` of the request are recorded but not applied), ``cwd`` is a host path. It
keeps the contract of :mod:`shoal.runtime.process`: a new session per process, pipes or a
pty with the requested size, ``/dev/null`` stdin unless asked, ``SpawnError`` with the
failing call's errno, and ``wait()`` that many tasks may await.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass, field

from shoal.errors import SandboxGone
from shoal.runtime.process import ExitStatus, SpawnError, SpawnRequest


@dataclass
class FakeHandle:
    pid: int
    stdin: int | None
    stdout: int | None
    stderr: int | None
    pty: int | None
    _exit: asyncio.Future[ExitStatus] = field(repr=False)

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)


def _child(req: SpawnRequest, fds: dict[int, int], slave: int | None, err_w: int) -> None:
    """Runs in the forked child: only async-signal-safe-ish os calls, then exec."""
    try:
        os.setsid()
        if slave is not None:
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for target, source in fds.items():
            os.dup2(source, target)
        os.chdir(req.cwd)
        os.execvpe(req.argv[0], req.argv, req.env)
    except OSError as exc:
        os.write(err_w, struct.pack("i", exc.errno or 1))
    finally:
        os._exit(127)


class FakeSpawner:
    """Host processes for tests. ``gone()`` simulates the sandbox being killed."""

    def __init__(self) -> None:
        self.requests: list[SpawnRequest] = []
        self.handles: dict[int, FakeHandle] = {}
        self._gone = False
        self._watchers: dict[int, int] = {}

    async def spawn(self, request: SpawnRequest) -> FakeHandle:
        if self._gone:
            raise SandboxGone("sandbox is gone")
        self.requests.append(request)
        fds: tuple[int, int | None, int | None, int | None, int | None]
        if request.pty is not None:
            fds = self._fork_pty(request)
        else:
            fds = self._popen(request)
        pid, stdin, stdout, stderr, pty = fds
        loop = asyncio.get_running_loop()
        handle = FakeHandle(pid, stdin, stdout, stderr, pty, loop.create_future())
        self.handles[pid] = handle
        pidfd = os.pidfd_open(pid)
        self._watchers[pid] = pidfd
        loop.add_reader(pidfd, self._reap, pid)
        return handle

    def _popen(self, request: SpawnRequest) -> tuple[int, int | None, int, int, None]:
        # subprocess uses vfork here: ~0.3 ms instead of ~5 ms for fork() of a big test process.
        parent: list[int] = []
        child: list[int] = []
        try:
            if request.stdin:
                stdin_r, stdin_w = os.pipe()
                parent.append(stdin_w)
                child.append(stdin_r)
            stdout_r, stdout_w = os.pipe()
            stderr_r, stderr_w = os.pipe()
            parent += [stdout_r, stderr_r]
            child += [stdout_w, stderr_w]
            try:
                proc = subprocess.Popen(
                    request.argv,
                    stdin=stdin_r if request.stdin else subprocess.DEVNULL,
                    stdout=stdout_w,
                    stderr=stderr_w,
                    cwd=request.cwd,
                    env=request.env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise SpawnError(f"{exc.strerror}: {exc.filename!r}", exc.errno or 0) from exc
            # We reap through the pidfd; stop Popen from warning about a "running" child.
            proc.returncode = 0
        except BaseException:
            for fd in parent:
                os.close(fd)
            raise
        finally:
            for fd in child:
                os.close(fd)
        return proc.pid, stdin_w if request.stdin else None, stdout_r, stderr_r, None

    def _fork_pty(self, request: SpawnRequest) -> tuple[int, int, None, None, int]:
        assert request.pty is not None
        master, slave = os.openpty()
        try:
            cols, rows = request.pty
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                os.close(master)
                os.close(err_r)
                _child(request, {0: slave, 1: slave, 2: slave}, slave, err_w)
            os.close(err_w)
            failure = os.read(err_r, 4)
            os.close(err_r)
            if failure:
                os.waitpid(pid, 0)
                (code,) = struct.unpack("i", failure)
                raise SpawnError(f"{os.strerror(code)}: {request.argv[0]!r}", code)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return pid, master, None, None, master

    def _reap(self, pid: int) -> None:
        pidfd = self._watchers.pop(pid)
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            result = ExitStatus(code=None, signal=os.WTERMSIG(status))
        else:
            result = ExitStatus(code=os.WEXITSTATUS(status), signal=None)
        fut = self.handles[pid]._exit
        if not fut.done():
            fut.set_result(result)

    async def signal(self, pid: int, signum: int, *, group: bool = True) -> bool:
        if self._gone:
            raise SandboxGone("sandbox is gone")
        handle = self.handles.get(pid)
        if handle is None or handle._exit.done():
            return False
        try:
            if group:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True

    def gone(self) -> None:
        """The sandbox dies: every process is killed and every waiter sees SandboxGone."""
        self._gone = True
        for pid, handle in self.handles.items():
            if not handle._exit.done():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                handle._exit.set_exception(SandboxGone("sandbox is gone"))

    async def aclose(self) -> None:
        for pid, handle in list(self.handles.items()):
            if not handle._exit.done():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        # Let the pidfd readers reap what was killed.
        for handle in self.handles.values():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(handle._exit), 2)
