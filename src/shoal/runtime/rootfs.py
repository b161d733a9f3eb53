"""Reading and writing inside a sandbox's root filesystem from the host, safely.

Code in the sandbox controls every path component below its root: a symlink or ``..``
planted there must never lead the host to a host file. Every open goes through
``openat2(2)`` with ``RESOLVE_IN_ROOT``, which resolves ``/``, ``..`` and absolute symlinks
as if the sandbox root were ``/``, and refuses magic links such as ``/proc/<pid>/root``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
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


def openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """``openat2(2)`` with ``O_CLOEXEC``, retried on ``EINTR`` and ``EAGAIN``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    raw = path.encode("utf-8", "surrogateescape")
    while True:
        fd = _libc.syscall(
            SYS_OPENAT2,
            ctypes.c_int(dir_fd),
            raw,
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (4, 11):  # EINTR; EAGAIN (a concurrent rename raced the walk)
            raise OSError(err, os.strerror(err), path)


def open_beneath(dir_fd: int, name: str, flags: int = os.O_PATH) -> int:
    """Open ``name`` below ``dir_fd`` following no symlink at all (the last component
    included: with ``O_PATH`` a symlink itself is opened). For walking a tree that code
    in the sandbox may be rearranging while we walk it."""
    return openat2(
        dir_fd,
        name,
        flags | os.O_NOFOLLOW,
        0,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )


def fd_xattrs(fd: int, prefix: str) -> dict[str, bytes]:
    """The extended attributes named ``prefix*`` of the file ``fd`` refers to (an
    ``O_PATH`` fd will do: it is read through ``/proc/self/fd``, which opens nothing),
    keyed without the prefix. Empty when the filesystem has none or supports none."""
    proc = f"/proc/self/fd/{fd}"
    try:
        names = os.listxattr(proc)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    for name in names:
        if name.startswith(prefix):
            try:
                found[name[len(prefix) :]] = os.getxattr(proc, name)
            except OSError:
                continue  # removed meanwhile
    return found


MAX_TREE_DEPTH = 1024
"""Deepest directory :func:`remove_tree_at` descends into (it holds one fd per level)."""


def remove_tree_at(dir_fd: int, name: str) -> None:
    """``rm -rf`` of ``name`` in ``dir_fd`` that never follows a symlink.

    ``shutil.rmtree(dir_fd=...)`` is not enough: it opens each subdirectory with a plain
    ``openat`` before checking it, so a directory swapped for a symlink meanwhile makes
    the host open (and, for a FIFO, block on) a path resolved from the *host's* root.
    Every open here is ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``. Iterative: a hostile
    tree cannot exhaust the stack (and deeper than :data:`MAX_TREE_DEPTH` is refused)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # (parent fd, name in parent, own fd, children not yet removed)
    stack: list[tuple[int, str, int, list[str]]] = []
    try:
        _push(stack, dir_fd, name)
        while stack:
            parent, dname, fd, pending = stack[-1]
            if not pending:
                stack.pop()
                os.close(fd)
                try:
                    os.rmdir(dname, dir_fd=parent)
                except FileNotFoundError:
                    pass
                continue
            child = pending.pop()
            try:
                cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(cst.st_mode):
                    os.unlink(child, dir_fd=fd)
                    continue
                if len(stack) >= MAX_TREE_DEPTH:
                    raise OSError(errno.ENAMETOOLONG, "directory tree is too deep", child)
                _push(stack, fd, child)
            except FileNotFoundError:
                pass  # removed meanwhile
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def _push(stack: list[tuple[int, str, int, list[str]]], parent: int, name: str) -> None:
    fd = open_beneath(parent, name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
    except BaseException:
        os.close(fd)
        raise
    stack.append((parent, name, fd, names))


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
        self._real: str | None = None  # the root as /proc/self/fd shows it, once asked

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

    def lstat(self, path: str) -> os.stat_result:
        """``lstat`` of ``path``: symlinks on the way resolved in the root, not the last."""
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: str) -> os.stat_result:
        """``stat`` of ``path``, every symlink (the last included) resolved in the root."""
        fd = self.open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def path_of(self, fd: int) -> str | None:
        """The sandbox path of an fd opened below the root (None if it is not below it)."""
        if self._real is None:
            self._real = os.readlink(f"/proc/self/fd/{self._fd}")
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        if real == self._real:
            return "/"
        if self._real == "/":
            return real
        if real.startswith(self._real + "/"):
            return real[len(self._real) :]
        return None

    def realpath(self, path: str) -> str:
        """``path`` with every symlink resolved inside the root (absolute, in the sandbox's
        terms); ``OSError`` when it does not resolve (``ENOENT``, ``ELOOP``...)."""
        fd = self.open(path, os.O_PATH)
        try:
            resolved = self.path_of(fd)
        finally:
            os.close(fd)
        if resolved is None:
            raise OSError(errno.EXDEV, "resolved outside the sandbox root", path)
        return resolved

    def rename(self, source: str, destination: str) -> None:
        """``rename(2)``; neither last component is followed (a symlink is moved as such)."""
        sfd, sname = self.open_parent(source)
        try:
            dfd, dname = self.open_parent(destination)
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def remove(self, path: str) -> bool:
        """``rm -rf path`` (a symlink is removed, never followed); False if it was absent."""
        try:
            pfd, name = self.open_parent(path)
        except FileNotFoundError:
            return False
        try:
            remove_tree_at(pfd, name)
        except FileNotFoundError:
            return False
        finally:
            os.close(pfd)
        return True

    def read_small(self, path: str, limit: int = 4 << 20) -> bytes:
        """Up to ``limit`` bytes of the regular file ``path``; anything else (a FIFO or a
        device node planted there) is refused without being opened (:meth:`open_regular`)."""
        fd, _ = self.open_regular(path)
        try:
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                chunk = os.read(fd, min(1 << 16, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def open_regular(self, path: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
        """Open the regular file ``path`` (symlinks resolved in the root) and its ``fstat``.

        The file is looked at through an ``O_PATH`` fd before it is really opened, so a
        directory fails with ``IsADirectoryError`` and anything else that is not a regular
        file (a FIFO planted by the sandbox, the device nodes a template keeps under
        ``/dev``, which the host would otherwise open as *its own* devices) with ``EINVAL``,
        without ever being opened. The reopen goes through ``/proc/self/fd``: same inode,
        no second path walk to race."""
        pfd = self.open(path, os.O_PATH)
        try:
            st = os.fstat(pfd)
            _require_regular(st, path)
            fd = os.open(f"/proc/self/fd/{pfd}", flags | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        return fd, st

    def create_file(self, path: str, uid: int, gid: int, mode: int = 0o644) -> int:
        """An fd to write ``path`` from scratch, the way an envd upload does it.

        Missing parents are made (owned by the sandbox user ``uid:gid``); a missing file is
        created with ``mode``; the file is then chowned to the user and, only if it has
        content, truncated. A watcher therefore sees exactly ``CREATE, CHMOD`` for a new
        file and ``CHMOD, WRITE`` for an overwrite, before the data's own ``WRITE``s (as
        upstream envd: chown, then truncate). Non-regular targets are refused as in
        :meth:`open_regular`."""
        parent = path.rsplit("/", 1)[0] or "/"
        try:
            os.close(self.open(parent, os.O_PATH | os.O_DIRECTORY))
        except FileNotFoundError:
            self.makedirs(parent, uid, gid)
        flags = os.O_WRONLY | os.O_NONBLOCK
        fd = -1
        for attempt in range(3):
            try:
                fd, _ = self.open_regular(path, flags)
                break
            except FileNotFoundError:
                pass
            # A last component that is a dangling symlink makes O_EXCL fail forever; the
            # final try follows it (inside the root) like a plain O_CREAT open does.
            excl = os.O_EXCL if attempt < 2 else 0
            try:
                fd = self.open(path, flags | os.O_CREAT | excl | os.O_NOCTTY, mode)
                break
            except FileExistsError:
                continue  # someone (or a dangling symlink) was first: look again
        if fd < 0:
            raise OSError(errno.EEXIST, "could not create the file", path)
        try:
            st = os.fstat(fd)
            _require_regular(st, path)  # without O_EXCL a FIFO may have won the race
            os.fchown(fd, self.uid_base + uid, self.uid_base + gid)
            if st.st_size:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _require_regular(st: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)


def replace_xattrs(fd: int, prefix: str, values: dict[str, bytes]) -> None:
    """Make the ``prefix*`` extended attributes of ``fd`` exactly ``values`` (keys without
    the prefix). Touches nothing when there is nothing to set or remove, so a file without
    metadata gets no extra attribute event (watchers count them)."""
    try:
        names = [n for n in os.listxattr(fd) if n.startswith(prefix)]
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) and not values:
            return
        raise
    for name in names:
        if name[len(prefix) :] not in values:
            try:
                os.removexattr(fd, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    for key, value in values.items():
        os.setxattr(fd, prefix + key, value)
