"""What the rest of Shoal sees of a process running inside a sandbox.

``shoal-init`` (pid 1 of every sandbox) forks and execs processes on request and hands
their stdio file descriptors back to the node agent over a unix socket. These types are
the contract between the envd services (``shoal.envd``) and the init client
(``shoal.runtime.initclient``); unit tests substitute a local fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SpawnRequest:
    """Start ``argv`` inside the sandbox.

    ``argv[0]`` is looked up on ``env["PATH"]`` when it has no ``/``. The process is the
    leader of a new session (and process group), so signals can reach its whole tree.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    pty: tuple[int, int] | None = None
    """``(cols, rows)``: give the process a new pseudo-terminal as its controlling tty."""
    stdin: bool = False
    """Keep a writable stdin; when False the process reads ``/dev/null``."""


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: ``code`` when it exited, ``signal`` when a signal killed it."""

    code: int | None
    signal: int | None

    @property
    def exited(self) -> bool:
        return self.signal is None


class SpawnError(Exception):
    """The process could not be started. ``errno`` is the failing call's errno
    (ENOENT for a missing program or cwd, EACCES, ...)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class ProcessHandle(Protocol):
    """A started process. The caller owns the fds and must close them."""

    pid: int
    """The pid as seen inside the sandbox's pid namespace."""
    stdin: int | None
    """Write end of the stdin pipe, or the pty master; None when stdin is /dev/null."""
    stdout: int | None
    """Read end of the stdout pipe (None with a pty)."""
    stderr: int | None
    """Read end of the stderr pipe (None with a pty)."""
    pty: int | None
    """The pty master (read output, write input, resize), or None."""

    async def wait(self) -> ExitStatus:
        """Wait for the process to end. May be awaited by several tasks."""
        ...


class ProcessSpawner(Protocol):
    """Starts and signals processes in one sandbox."""

    async def spawn(self, request: SpawnRequest) -> ProcessHandle: ...

    async def signal(self, pid: int, signum: int, *, group: bool = True) -> bool:
        """Send ``signum`` to ``pid`` (its process group when ``group``); False if no such pid."""
        ...

    async def aclose(self) -> None: ...
