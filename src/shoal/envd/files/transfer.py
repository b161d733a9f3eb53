"""What uploads and downloads share: a thread-side step runner and OS error mapping.

File I/O runs in worker threads so the event loop never waits on a disk. A request can be
cancelled (client gone, sandbox killed) while one of its steps is still running in a
thread; :class:`Steps` then defers releasing the transfer's resources (its fds) until that
step returns, so a thread never reads or writes an fd number that was closed and handed
to someone else meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shoal.errors import InvalidArgument, NoSpace, NotFound, ShoalError

T = TypeVar("T")

CHUNK = 1 << 20
"""Bytes per read from a file and most bytes of a request body held per upload step."""

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Steps:
    """Runs one transfer's blocking steps in threads, one at a time, and calls ``release``
    exactly once, never while a step runs."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._release_pending = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("transfer already closed")
            if self._busy:
                raise RuntimeError("a step of this transfer is still running")
            self._busy = True
        return asyncio.get_running_loop().run_in_executor(None, self._step, fn, args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def _step(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy = False
                release = self._release_pending
                self._release_pending = False
            if release:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._busy:
                self._release_pending = True
                return
        self._release()


def os_error(exc: OSError, path: str, *, writing: bool) -> ShoalError:
    """The envd error for an ``OSError`` about ``path`` (its status is what ``/files``
    answers: 404 missing, 400 bad path, 507 no space, 500 anything else)."""
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"path '{path}' does not exist")
    if code == errno.EISDIR:
        return InvalidArgument(f"path '{path}' is a directory")
    if code == errno.ENOTDIR:
        if writing:
            return InvalidArgument(f"a parent of path '{path}' is not a directory")
        return NotFound(f"path '{path}' does not exist")
    if code in (errno.EINVAL, errno.ENXIO):
        return InvalidArgument(f"path '{path}' is not a regular file")
    if code == errno.ELOOP:
        return InvalidArgument(f"path '{path}' has too many levels of symbolic links")
    if code == errno.ENAMETOOLONG:
        return InvalidArgument(f"path '{path}' is too long")
    if code in NO_SPACE:
        return NoSpace("not enough disk space available")
    verb = "writing" if writing else "reading"
    return ShoalError(f"error {verb} file '{path}': {exc.strerror}")
