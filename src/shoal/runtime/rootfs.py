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


class RootFS:
    """A sandbox's root filesystem as seen from the host, every path resolved inside it.

    Paths are the sandbox's own (absolute, clean; see :func:`shoal.envd.paths.resolve`).
    Whatever sandbox code planted (symlinks to ``/``, ``..``, ``/proc/<pid>/root``), an
    operation here touches only files below ``root``. Owners are host ids: the sandbox's
    ``uid`` is ``uid_base + uid`` here.

    >>> fs = RootFS("/var/lib/shoal/sandboxes/abc/rootfs", uid_base=100000)
    >>> fd = fs.open("/home/user/a.txt", os.O_RDONLY)
    """

    def __init__(self, root: str, *, uid_base: int) -> None:
        self.root = root
        self.uid_base = uid_base
        self._fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
        """``openat2`` below the root; the caller owns the returned fd."""
        return open_in_root(self._fd, path, flags, mode)

    def open_parent(self, path: str) -> tuple[int, str]:
        """An fd of ``path``'s parent directory (resolved in the root) and the last
        component, for ``*at`` calls that must not follow that component."""
        parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
        if not name or name in (".", ".."):
            raise OSError(22, "path has no last component", path)
        return self.open(parent or "/", os.O_PATH | os.O_DIRECTORY), name

    def makedirs(self, path: str, uid: int, gid: int, mode: int = 0o755) -> bool:
        """``mkdir -p`` owned by the sandbox user ``uid:gid``; True if ``path`` was created.

        Raises ``NotADirectoryError`` when a component exists and is not a directory."""
        parts = [p for p in path.split("/") if p]
        created = False
        current = ""
        for part in parts:
            parent = current or "/"
            current = f"{current}/{part}"
            try:
                fd = self.open(current, os.O_PATH | os.O_DIRECTORY)
            except FileNotFoundError:
                pfd = self.open(parent, os.O_PATH | os.O_DIRECTORY)
                try:
                    os.mkdir(part, mode, dir_fd=pfd)
                    os.chown(
                        part,
                        self.uid_base + uid,
                        self.uid_base + gid,
                        dir_fd=pfd,
                        follow_symlinks=False,
                    )
                    created = True
                except FileExistsError:
                    pass  # a concurrent creator won; the next open checks what it made
                finally:
                    os.close(pfd)
                fd = self.open(current, os.O_PATH | os.O_DIRECTORY)
            os.close(fd)
        return created
