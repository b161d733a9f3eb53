"""filesystem.Filesystem/ListDir: the entries below a directory, ``depth`` levels deep.

As upstream (Go's ``filepath.WalkDir``): depth 0 means 1; lexical pre-order by bytes
(``file1.txt, subdir1, subdir1/a, subdir1/b, subdir2``), the directory itself excluded.
The listed path may be a symlink to a directory (entries then carry the requested path,
not the resolved one); below it, symlinks are listed, never descended into. Every open
below the root is ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, so a tree rearranged while
it is walked (a directory swapped for a symlink) still never leads out of the sandbox.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import stat

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.entry import Names, build
from shoal.envd.filesystem.oserr import FailedPrecondition, os_error
from shoal.errors import InvalidArgument
from shoal.runtime.rootfs import MAX_TREE_DEPTH, RootFS, open_beneath
from shoal.wire.envd import filesystem_pb as pb


async def list_dir(call: FsCall, request: pb.ListDirRequest) -> pb.ListDirResponse:
    path = call.path(request.path)
    depth = request.depth or 1
    fs = call.sandbox.fs
    names = Names(fs, call.sandbox.uid_base)
    entries = await asyncio.to_thread(walk, fs, path, depth, names)
    return pb.ListDirResponse(entries=entries)


def walk(fs: RootFS, path: str, depth: int, names: Names) -> list[pb.EntryInfo]:
    try:
        root = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FailedPrecondition(f"cyclic symlink or chain >255 links at {path!r}") from exc
        if exc.errno == errno.ENOTDIR:
            raise InvalidArgument(f"path is not a directory: {path}") from exc
        raise os_error(exc, path, "open") from exc
    try:
        real = fs.path_of(root) or path
        return _walk(fs, root, path, real, min(depth, MAX_TREE_DEPTH), names)
    except OSError as exc:
        raise os_error(exc, path, "readdir") from exc
    finally:
        os.close(root)


def _walk(
    fs: RootFS, root: int, path: str, real: str, depth: int, names: Names
) -> list[pb.EntryInfo]:
    entries: list[pb.EntryInfo] = []
    # One frame per directory being read: (its fd, requested path, real path, level,
    # names still to visit, reversed so pop() yields them in order).
    stack = [(root, path, real, 1, _sorted_names(root))]
    try:
        while stack:
            dir_fd, dir_path, dir_real, level, pending = stack[-1]
            if not pending:
                stack.pop()
                if dir_fd != root:
                    os.close(dir_fd)
                continue
            name = pending.pop()
            try:
                fd = open_beneath(dir_fd, name, os.O_PATH)
            except FileNotFoundError:
                continue  # removed meanwhile
            try:
                st = os.fstat(fd)
                entry_path = posixpath.join(dir_path, name)
                entry_real = posixpath.join(dir_real, name)
                entries.append(build(fs, entry_path, fd, st, entry_real, names))
                if stat.S_ISDIR(st.st_mode) and level < depth:
                    # "." of the very inode just described: no second lookup by name.
                    sub = open_beneath(fd, ".", os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        children = _sorted_names(sub)
                    except BaseException:
                        os.close(sub)
                        raise
                    stack.append((sub, entry_path, entry_real, level + 1, children))
            finally:
                os.close(fd)
    finally:
        for dir_fd, *_ in stack:
            if dir_fd != root:
                os.close(dir_fd)
    return entries


def _sorted_names(dir_fd: int) -> list[str]:
    """Names in ``dir_fd``, in reverse byte order (Go sorts by bytes; pop() takes the
    smallest)."""
    with os.scandir(dir_fd) as it:
        found = [entry.name for entry in it]
    found.sort(key=os.fsencode, reverse=True)
    return found
