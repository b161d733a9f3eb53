"""Watchers: the WatchDir stream and the polling CreateWatcher / GetWatcherEvents /
RemoveWatcher (e2b-compat §4.3).

The async SDK and JS stream (``WatchDir``: ``start{}`` first, then events, a ``keepalive``
after each quiet ``Keepalive-Ping-Interval``); the sync SDK polls. Both share
:class:`~shoal.envd.filesystem.watcher.Watcher` (event mapping, recursion, queue bound) and
one :class:`~shoal.envd.filesystem.inotify.Inotify` per sandbox.

Polls must already include what requests that completed before them caused (the SDK
tests write a file and poll at once), so GetWatcherEvents first drains the kernel's
queue synchronously.

Bounds: :data:`MAX_WATCHERS_PER_SANDBOX` watchers (streams and polling watchers together)
and :data:`MAX_WATCHES_PER_SANDBOX` watched directories per sandbox, else
``resource_exhausted``. Everything (watches, fds, the inotify instance once its sandbox has
no watcher left) is released on RemoveWatcher, when a stream's client goes away, and when
the sandbox does (:meth:`WatcherRegistry.forget`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.entry import Names, entry_for
from shoal.envd.filesystem.inotify import Inotify
from shoal.envd.filesystem.oserr import os_error
from shoal.envd.filesystem.watcher import EntryBuilder, Watcher
from shoal.envd.process.stream import keepalive_interval, timeout_seconds
from shoal.envd.request import current_request
from shoal.envd.sandbox import EnvdSandbox
from shoal.errors import InvalidArgument, NotFound, RateLimited, SandboxGone
from shoal.wire.envd import filesystem_pb as pb

log = logging.getLogger(__name__)

MAX_WATCHERS_PER_SANDBOX = 128
MAX_WATCHES_PER_SANDBOX = 8192
"""Watched directories per sandbox. Every sandbox's watches count against the node's one
``fs.inotify.max_user_watches`` (envd is root for all of them), so one sandbox's recursive
watch of a huge tree must not starve the others."""

NETWORK_FS_MAGIC = frozenset({0x6969, 0xFF534D42, 0x517B, 0xFE534D42, 0x65735546})
"""NFS, CIFS, SMB, SMB2, FUSE (upstream's list)."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def fs_magic(fd: int) -> int:
    """``fstatfs(fd).f_type`` (Python's ``os.fstatvfs`` does not expose it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


@dataclass
class _SandboxWatchers:
    hub: Inotify | None = None
    watchers: dict[str, Watcher] = field(default_factory=dict)


class WatcherRegistry:
    def __init__(self) -> None:
        self._sandboxes: dict[str, _SandboxWatchers] = {}

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: close its watchers (streams abort) and its inotify fd."""
        state = self._sandboxes.pop(sandbox_id, None)
        if state is None:
            return
        for watcher in state.watchers.values():
            watcher.close(gone=True)
        if state.hub is not None:
            state.hub.close()

    def close(self) -> None:
        for sandbox_id in list(self._sandboxes):
            self.forget(sandbox_id)

    # ---- RPCs ------------------------------------------------------------------------

    async def watch_dir(
        self, call: FsCall, request: pb.WatchDirRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        envd_request = current_request.get()
        keepalive = keepalive_interval(ctx.request_headers)
        timeout = timeout_seconds(ctx.request_headers)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        watcher = self._create(call, request, stream=True)
        unsubscribe = envd_request.on_disconnect(watcher.close)
        try:
            yield _response("start", pb.WatchDirResponse.StartEvent())
            while True:
                for event in watcher.take():
                    yield _response("filesystem", event)
                if watcher.gone:
                    raise SandboxGone(f"sandbox {call.sandbox.sandbox_id} is gone")
                if watcher.error is not None:
                    raise watcher.error
                if watcher.closed:
                    return  # the client went away
                wait = keepalive
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                    wait = min(wait, left)
                try:
                    await asyncio.wait_for(watcher.ready.wait(), wait)
                except TimeoutError:
                    if deadline is None or deadline - loop.time() > 0:
                        yield _response("keepalive", pb.WatchDirResponse.KeepAlive())
        finally:
            unsubscribe()
            self._discard(call.sandbox.sandbox_id, watcher)

    async def create_watcher(
        self, call: FsCall, request: pb.CreateWatcherRequest
    ) -> pb.CreateWatcherResponse:
        watcher = self._create(call, request, stream=False)
        return pb.CreateWatcherResponse(watcher_id=watcher.id)

    async def get_watcher_events(
        self, call: FsCall, request: pb.GetWatcherEventsRequest
    ) -> pb.GetWatcherEventsResponse:
        state, watcher = self._polling(call.sandbox.sandbox_id, request.watcher_id)
        if state.hub is not None:
            state.hub.drain()
        if watcher.error is not None:
            raise watcher.error
        return pb.GetWatcherEventsResponse(events=watcher.take())

    async def remove_watcher(
        self, call: FsCall, request: pb.RemoveWatcherRequest
    ) -> pb.RemoveWatcherResponse:
        _, watcher = self._polling(call.sandbox.sandbox_id, request.watcher_id)
        self._discard(call.sandbox.sandbox_id, watcher)
        return pb.RemoveWatcherResponse()

    # ---- internals -------------------------------------------------------------------

    def _polling(self, sandbox_id: str, watcher_id: str) -> tuple[_SandboxWatchers, Watcher]:
        state = self._sandboxes.get(sandbox_id)
        watcher = state.watchers.get(watcher_id) if state is not None else None
        if state is None or watcher is None or watcher_id.startswith("s"):
            raise NotFound(f"watcher with id {watcher_id} not found")
        return state, watcher

    def _create(
        self,
        call: FsCall,
        request: pb.WatchDirRequest | pb.CreateWatcherRequest,
        *,
        stream: bool,
    ) -> Watcher:
        sandbox = call.sandbox
        path = call.path(request.path)
        root_fd = _open_watch_root(sandbox, path, request.allow_network_mounts)
        try:
            return self._start(sandbox, path, root_fd, request, stream=stream)
        finally:
            # Never kept open: an open fd pins the inode (no IN_DELETE_SELF while held).
            os.close(root_fd)

    def _start(
        self,
        sandbox: EnvdSandbox,
        path: str,
        root_fd: int,
        request: pb.WatchDirRequest | pb.CreateWatcherRequest,
        *,
        stream: bool,
    ) -> Watcher:
        state = self._sandboxes.setdefault(sandbox.sandbox_id, _SandboxWatchers())
        if len(state.watchers) >= MAX_WATCHERS_PER_SANDBOX:
            self._release_hub_if_idle(sandbox.sandbox_id)
            raise RateLimited(
                f"too many watchers in this sandbox (limit {MAX_WATCHERS_PER_SANDBOX})"
            )
        if state.hub is None or state.hub.closed:
            try:
                state.hub = Inotify()
            except OSError as exc:
                self._release_hub_if_idle(sandbox.sandbox_id)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                    # fs.inotify.max_user_instances (node-wide) or fds exhausted.
                    raise RateLimited(f"cannot watch now: {exc.strerror}") from exc
                raise
        # Stream watchers are never reachable by id ("s…"): only polling ids are.
        watcher_id = ("s" if stream else "w") + secrets.token_hex(8)
        watcher = Watcher(
            watcher_id,
            state.hub,
            path,
            open_root=lambda: sandbox.fs.open(path, os.O_PATH | os.O_DIRECTORY),
            recursive=request.recursive,
            entry=_entry_builder(sandbox) if request.include_entry else None,
            max_watches=MAX_WATCHES_PER_SANDBOX,
        )
        state.watchers[watcher_id] = watcher
        try:
            watcher.start(root_fd)
        except OSError as exc:
            self._discard(sandbox.sandbox_id, watcher)
            raise os_error(exc, path, "watch") from exc
        except BaseException:
            self._discard(sandbox.sandbox_id, watcher)
            raise
        return watcher

    def _discard(self, sandbox_id: str, watcher: Watcher) -> None:
        watcher.close()
        state = self._sandboxes.get(sandbox_id)
        if state is not None and state.watchers.get(watcher.id) is watcher:
            del state.watchers[watcher.id]
        self._release_hub_if_idle(sandbox_id)

    def _release_hub_if_idle(self, sandbox_id: str) -> None:
        # An inotify instance per sandbox with watchers, not per sandbox ever watched:
        # instances are a node-wide limit (see shoal.envd.filesystem.inotify).
        state = self._sandboxes.get(sandbox_id)
        if state is not None and not state.watchers:
            if state.hub is not None:
                state.hub.close()
            del self._sandboxes[sandbox_id]


def _response(kind: str, message: object) -> pb.WatchDirResponse:
    return pb.WatchDirResponse(event=Oneof(kind, message))  # type: ignore[arg-type]


def _open_watch_root(sandbox: EnvdSandbox, path: str, allow_network_mounts: bool) -> int:
    """An ``O_PATH`` fd of the directory ``path`` resolved inside the sandbox's root."""
    try:
        fd = sandbox.fs.open(path, os.O_PATH)
    except FileNotFoundError as exc:
        raise NotFound(f"path {path} not found") from exc
    except OSError as exc:
        raise os_error(exc, path, "watch") from exc
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise InvalidArgument(f"path {path} not a directory")
        if not allow_network_mounts and fs_magic(fd) in NETWORK_FS_MAGIC:
            raise InvalidArgument(f"cannot watch path on network filesystem: {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _entry_builder(sandbox: EnvdSandbox) -> EntryBuilder:
    """EntryInfo for a path an event names, or None once it is gone: best effort, as
    upstream (a vanished or unreadable entry never fails the watch). Owner and group
    names are read from the sandbox's passwd/group once per watcher."""
    fs = sandbox.fs
    names = Names(fs, sandbox.uid_base)

    def build(path: str) -> pb.EntryInfo | None:
        try:
            return entry_for(fs, path, names)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.debug("no entry for watch event on %s: %s", path, exc)
            return None

    return build
