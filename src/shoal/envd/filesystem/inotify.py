"""One inotify instance per sandbox, shared by all of that sandbox's watchers.

Why per sandbox: the kernel limits inotify *instances* per user (``max_user_instances``,
128 by default, and envd runs as root for every sandbox on the node), and bounds each
instance's queue (``max_queued_events``, 16384). One instance per sandbox keeps the
instance count at "sandboxes with a watcher" and lets a sandbox that floods events
overflow only its own queue.

Watches are added by file descriptor, never by host path: the caller opens the directory
inside the sandbox's root (``openat2``) and we hand the kernel ``/proc/self/fd/<fd>``,
which names exactly that inode, so a symlink planted by code in the sandbox cannot redirect
a watch to a host directory.

The kernel gives the same watch descriptor (wd) for the same inode, so two watchers of one
directory share a wd: each wd keeps its listeners, each with the path (relative to the
listener's watched root) under which it knows that directory, and is removed from the
kernel only when its last listener lets go.

Reading: the fd is non-blocking and read from the event loop (``loop.add_reader``), at most
:data:`READ_CHUNK` bytes per wake-up so a flood cannot stall other requests;
:meth:`Inotify.drain` reads everything queued right now, for callers that must see events
caused by requests that already completed (GetWatcherEvents).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Protocol

from inotify_simple import INotify, flags, parse_events

log = logging.getLogger(__name__)

WATCH_MASK = (
    flags.CREATE
    | flags.MODIFY
    | flags.ATTRIB
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.MOVE_SELF
    | flags.ONLYDIR
)
"""What upstream envd's fsnotify watches for (Create, Write, Remove, Rename, Chmod)."""

READ_CHUNK = 64 * 1024
"""Bytes read per event-loop wake-up (a few thousand events)."""


class Listener(Protocol):
    def on_event(self, prefix: str, mask: int, cookie: int, name: str) -> None:
        """An event on the directory this listener knows as ``prefix`` ("" = its root)."""

    def on_ignored(self, prefix: str, wd: int) -> None:
        """The kernel dropped the watch (directory deleted, filesystem unmounted)."""

    def on_overflow(self) -> None:
        """The kernel queue overflowed: events were lost."""


class Inotify:
    """A non-blocking inotify fd read by the running loop; see the module docstring."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ino = INotify(nonblocking=True)
        self._fd: int = self._ino.fileno()
        self._wds: dict[int, dict[Listener, str]] = {}
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __len__(self) -> int:
        """Directories watched (distinct inodes), what counts against the kernel's limit."""
        return len(self._wds)

    def add(self, dir_fd: int, listener: Listener, prefix: str) -> int:
        """Watch the directory ``dir_fd`` refers to for ``listener``; returns the wd.

        ``OSError`` as the kernel gives it (``ENOSPC``: the user's watch limit)."""
        wd = int(self._ino.add_watch(f"/proc/self/fd/{dir_fd}", WATCH_MASK))
        self._wds.setdefault(wd, {})[listener] = prefix
        return wd

    def remove(self, wd: int, listener: Listener) -> None:
        listeners = self._wds.get(wd)
        if listeners is None or listeners.pop(listener, None) is None or listeners:
            return
        del self._wds[wd]
        try:
            self._ino.rm_watch(wd)
        except OSError:
            pass  # the kernel already dropped it (an IN_IGNORED is on its way)

    def drain(self) -> None:
        """Handle every event queued in the kernel now (non-blocking)."""
        while self._read_once():
            pass

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        self._fd = -1
        self._wds.clear()
        self._ino.close()

    def _on_readable(self) -> None:
        try:
            self._read_once()
        except Exception:  # a listener's bug must not kill the reader
            log.exception("inotify event handling failed")

    def _read_once(self) -> bool:
        if self._fd < 0:
            return False
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except InterruptedError:
            return True
        if not data:
            return False
        for event in parse_events(data):
            self._dispatch(event.wd, event.mask, event.cookie, event.name)
        return True

    def _dispatch(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & flags.Q_OVERFLOW:
            everyone = {listener for ls in self._wds.values() for listener in ls}
            for listener in everyone:
                listener.on_overflow()
            return
        listeners = self._wds.get(wd)
        if not listeners:
            return  # removed meanwhile
        if mask & (flags.IGNORED | flags.UNMOUNT):
            if mask & flags.IGNORED:
                del self._wds[wd]
            for listener, prefix in list(listeners.items()):
                listener.on_ignored(prefix, wd)
            return
        for listener, prefix in list(listeners.items()):
            listener.on_event(prefix, mask, cookie, name)
