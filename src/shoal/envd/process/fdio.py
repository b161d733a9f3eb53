"""Non-blocking reads and writes on a process's stdio fds from the event loop.

The fds come from the spawner (pipes or a pty master). They are switched to non-blocking
mode and polled through the loop's selector, so a silent or flooding process never blocks
the loop and no thread is held per process.
"""

from __future__ import annotations

import asyncio
import errno
import os


def wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_chunk(fd: int, size: int) -> bytes:
    """The next bytes available on ``fd``; ``b""`` at end of file.

    A pty master reports the slave side's last close as EIO: that is end of file too.
    """
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await wait_readable(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)
