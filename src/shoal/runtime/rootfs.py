"""Reading and writing inside a sandbox's root filesystem from the host, safely.

Code in the sandbox controls every path component below its root: a symlink or ``..``
planted there must never lead the host to a host file. Every open goes through
``openat2(2)`` with ``RESOLVE_IN_ROOT``, which resolves ``/``, ``..`` and absolute symlinks
as if the sandbox root were ``/``, and refuses magic links such as ``/proc/<pid>/root``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
    """Open ``path`` (absolute or relative, as the sandbox sees it) below ``root_fd``."""
    how = _OpenHow(
        flags | os.O_CLOEXEC,
        mode if flags & os.O_CREAT else 0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
    while True:
        fd = _libc.syscall(
            SYS_OPENAT2,
            ctypes.c_int(root_fd),
            path.encode("utf-8", "surrogateescape"),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == 4:  # EINTR
            continue
        if err == 11:  # EAGAIN: a concurrent rename raced the walk; retry
            continue
        raise OSError(err, os.strerror(err), path)


def read_file_in_root(root: str, path: str, limit: int = 1 << 20) -> bytes:
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(root_fd)
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(21, "not a regular file", path)
        return os.read(fd, limit)
    finally:
        os.close(fd)
