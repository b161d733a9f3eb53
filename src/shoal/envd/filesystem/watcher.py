"""One watcher: a watched directory (optionally recursive) turned into E2B's events.

The mapping is upstream envd's (fsnotify): one inotify event may carry several operations,
emitted in the order CREATE, RENAME, CHMOD, WRITE, REMOVE:

    IN_CREATE, IN_MOVED_TO        → CREATE
    IN_MOVED_FROM, IN_MOVE_SELF   → RENAME
    IN_ATTRIB                     → CHMOD   (chmod, chown, utimes, xattrs)
    IN_MODIFY                     → WRITE
    IN_DELETE, IN_DELETE_SELF     → REMOVE

``name`` is relative to the watched directory (``"."`` for the directory itself; a nested
path when recursive). Like upstream: the watched directory being deleted gives REMOVE ``.``;
being moved gives RENAME ``.`` and ends the watch (nothing more arrives). A recursive watch
adds a watch for every directory created or moved in later and, since files may already be
in it by then (``mkdir -p a/b/c``, ``mv dir here``), emits a CREATE for each entry found
below it, in lexical pre-order. A subdirectory's own events are dropped: its parent's watch
reports each of them under the same name (upstream reports a subdirectory's IN_ATTRIB
twice when its watch happens to be in place already, e.g. for MakeDir's chown: a race).

Every subdirectory is opened with :func:`~shoal.runtime.rootfs.open_beneath` from the
watched root (no symlink followed, nothing above the root reachable), and watched by that
fd; see :mod:`shoal.envd.filesystem.inotify`. No fd is held between events: an open fd
pins its inode, and the kernel reports IN_DELETE_SELF only once the inode goes. The root
is reopened by its sandbox path when a directory appears and used only if it is still the
same directory (device and inode).

Events queue here until taken (the WatchDir stream, or GetWatcherEvents). At most
:data:`MAX_QUEUED_EVENTS` wait; one more, or an overflow of the kernel's queue, fails the
watcher the way upstream fails on a kernel overflow: the queued events are dropped and the
stream (or every later poll) ends with ``internal: watcher error: ... overflow``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
from collections import deque
from collections.abc import Callable

from inotify_simple import flags

from shoal.envd.filesystem.entry import text
from shoal.envd.filesystem.inotify import Inotify
from shoal.errors import RateLimited, ShoalError
from shoal.runtime.rootfs import open_beneath
from shoal.wire.envd import filesystem_pb as pb

MAX_QUEUED_EVENTS = 10_000
"""Events a watcher holds for its client before it fails (see the module docstring)."""

OVERFLOW_MESSAGE = "watcher error: fsnotify: queue or buffer overflow"

ET = pb.EventType
_ENTRY_TYPES = frozenset({ET.CREATE, ET.WRITE, ET.CHMOD})
_SKIPPED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EACCES})
"""Errors that mean "that directory is gone or was swapped for something else meanwhile"."""

EntryBuilder = Callable[[str], "pb.EntryInfo | None"]


class WatcherFailed(ShoalError):
    """The watcher lost events (overflow) or could not extend itself."""


def _ops(mask: int) -> list[pb.EventType]:
    ops = []
    if mask & (flags.CREATE | flags.MOVED_TO):
        ops.append(ET.CREATE)
    if mask & (flags.MOVED_FROM | flags.MOVE_SELF):
        ops.append(ET.RENAME)
    if mask & flags.ATTRIB:
        ops.append(ET.CHMOD)
    if mask & flags.MODIFY:
        ops.append(ET.WRITE)
    if mask & (flags.DELETE | flags.DELETE_SELF):
        ops.append(ET.REMOVE)
    return ops


class Watcher:
    """A watch on ``path`` (a sandbox path); ``open_root()`` opens it (``O_PATH``, inside
    the sandbox's root) again when a recursive watch must reach below it."""

    def __init__(
        self,
        watcher_id: str,
        hub: Inotify,
        path: str,
        *,
        open_root: Callable[[], int],
        recursive: bool,
        entry: EntryBuilder | None,
        max_watches: int,
    ) -> None:
        self.id = watcher_id
        self.path = path
        self.recursive = recursive
        self._hub = hub
        self._open_root = open_root
        self._root_id: tuple[int, int] | None = None
        self._entry = entry
        self._max_watches = max_watches
        self._wds: dict[str, int] = {}
        self._events: deque[pb.FilesystemEvent] = deque()
        self.error: ShoalError | None = None
        self.closed = False
        self.gone = False
        """The sandbox went away (the stream must abort, not end)."""
        self.ready = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, root_fd: int) -> None:
        """Watch the directory ``root_fd`` (the caller keeps it) and, when recursive, every
        directory below it."""
        st = os.fstat(root_fd)
        self._root_id = (st.st_dev, st.st_ino)
        self._add_tree(root_fd, "", announce=False, strict=True)

    def close(self, *, gone: bool = False) -> None:
        """Release every watch; wakes a waiting stream."""
        if self.closed:
            return
        self.closed = True
        self.gone = gone
        for wd in self._wds.values():
            self._hub.remove(wd, self)
        self._wds.clear()
        self.ready.set()

    # ---- what clients take -----------------------------------------------------------

    def take(self) -> list[pb.FilesystemEvent]:
        events = list(self._events)
        self._events.clear()
        self.ready.clear()
        return events

    # ---- inotify listener ------------------------------------------------------------

    def on_event(self, prefix: str, mask: int, cookie: int, name: str) -> None:
        if self.closed or self.error is not None:
            return
        if prefix and not name:
            # A subdirectory's own event (IN_ATTRIB, IN_DELETE_SELF, IN_MOVE_SELF): its
            # parent's watch reports the same change under the same name.
            return
        rel = posixpath.join(prefix, name) if name else prefix
        is_dir = bool(mask & flags.ISDIR)
        if self.recursive and is_dir and mask & flags.MOVED_FROM:
            self._drop_subtree(rel)
        for op in _ops(mask):
            self._emit(rel, op)
        if not prefix and mask & flags.MOVE_SELF:
            # The watched directory itself moved: upstream drops the watch.
            for wd in self._wds.values():
                self._hub.remove(wd, self)
            self._wds.clear()
            return
        if self.recursive and is_dir and mask & (flags.CREATE | flags.MOVED_TO):
            self._add_below(rel)

    def on_ignored(self, prefix: str, wd: int) -> None:
        if self._wds.get(prefix) == wd:
            del self._wds[prefix]

    def on_overflow(self) -> None:
        self._fail(WatcherFailed(OVERFLOW_MESSAGE))

    # ---- internals -------------------------------------------------------------------

    def _emit(self, rel: str, op: pb.EventType) -> None:
        if self.error is not None:
            return
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._fail(WatcherFailed(OVERFLOW_MESSAGE))
            return
        event = pb.FilesystemEvent(name=text(rel or "."), type=op)
        if self._entry is not None and op in _ENTRY_TYPES:
            event.entry = self._entry(posixpath.join(self.path, rel) if rel else self.path)
        self._events.append(event)
        self.ready.set()

    def _fail(self, error: ShoalError) -> None:
        if self.error is None:
            self.error = error
            self._events.clear()
            self.ready.set()

    def _drop_subtree(self, rel: str) -> None:
        inside = rel + "/"
        for sub in [p for p in self._wds if p == rel or p.startswith(inside)]:
            self._hub.remove(self._wds.pop(sub), self)

    def _add_below(self, rel: str) -> None:
        try:
            root_fd = self._open_root()
        except OSError:
            return  # the watched directory is gone: its IN_DELETE_SELF/IN_IGNORED follow
        try:
            st = os.fstat(root_fd)
            if (st.st_dev, st.st_ino) == self._root_id:
                self._add_tree(root_fd, rel, announce=True, strict=False)
        finally:
            os.close(root_fd)

    def _add_tree(self, root_fd: int, top: str, *, announce: bool, strict: bool) -> None:
        """Watch ``top`` (relative to the root) and, when recursive, every directory below
        it; with ``announce``, emit CREATE for each entry found below ``top``.

        ``strict`` (the initial watch) raises; later (a directory that appeared) a vanished
        or swapped entry is skipped and running out of watches fails the watcher."""
        stack: list[tuple[str, bool]] = [(top, True)]
        while stack:
            rel, is_dir = stack.pop()
            if rel != top and announce:
                self._emit(rel, ET.CREATE)
            if not is_dir:
                continue
            try:
                children = self._watch_one(root_fd, rel)
            except OSError as exc:
                if strict:
                    raise
                if exc.errno in _SKIPPED:
                    continue
                self._fail(WatcherFailed(f"watcher error: {exc.strerror}"))
                return
            except ShoalError as exc:
                if strict:
                    raise
                self._fail(exc)
                return
            stack.extend(reversed(children))

    def _watch_one(self, root_fd: int, rel: str) -> list[tuple[str, bool]]:
        """Add the watch for ``rel``; its entries (relative, is-dir) when recursive."""
        if rel not in self._wds and len(self._hub) >= self._max_watches:
            raise RateLimited(
                f"too many watched directories in this sandbox (limit {self._max_watches})"
            )
        flags_ = os.O_RDONLY | os.O_DIRECTORY if self.recursive else os.O_PATH | os.O_DIRECTORY
        fd = open_beneath(root_fd, rel or ".", flags_)
        try:
            try:
                wd = self._hub.add(fd, self, rel)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise RateLimited("the node's inotify watch limit is reached") from exc
                raise
            self._wds[rel] = wd
            if not self.recursive:
                return []
            with os.scandir(fd) as it:
                found = sorted((posixpath.join(rel, e.name), _is_dir(e)) for e in it)
        finally:
            os.close(fd)
        return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
