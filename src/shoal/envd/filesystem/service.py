"""The ``filesystem.Filesystem`` service: a thin dispatcher to one module per RPC.

Errors are mapped once, by :mod:`shoal.envd.rpc`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from connectrpc.request import RequestContext

from shoal.envd import rpc
from shoal.envd.filesystem import list_dir, make_dir, move, remove, stat, watch
from shoal.envd.filesystem.context import fs_call
from shoal.wire.envd import filesystem_pb as pb
from shoal.wire.envd.filesystem_connect import Filesystem


class FilesystemService(Filesystem):
    def __init__(self) -> None:
        self.watchers = watch.WatcherRegistry()

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: drop its watchers (and their inotify fds)."""
        self.watchers.forget(sandbox_id)

    async def aclose(self) -> None:
        self.watchers.close()

    async def stat(self, request: pb.StatRequest, ctx: RequestContext) -> pb.StatResponse:
        return await rpc.unary(stat.stat(fs_call(ctx), request))

    async def make_dir(
        self, request: pb.MakeDirRequest, ctx: RequestContext
    ) -> pb.MakeDirResponse:
        return await rpc.unary(make_dir.make_dir(fs_call(ctx), request))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext) -> pb.MoveResponse:
        return await rpc.unary(move.move(fs_call(ctx), request))

    async def list_dir(
        self, request: pb.ListDirRequest, ctx: RequestContext
    ) -> pb.ListDirResponse:
        return await rpc.unary(list_dir.list_dir(fs_call(ctx), request))

    async def remove(self, request: pb.RemoveRequest, ctx: RequestContext) -> pb.RemoveResponse:
        return await rpc.unary(remove.remove(fs_call(ctx), request))

    def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        return rpc.stream(self.watchers.watch_dir(fs_call(ctx), request, ctx))

    async def create_watcher(
        self, request: pb.CreateWatcherRequest, ctx: RequestContext
    ) -> pb.CreateWatcherResponse:
        return await rpc.unary(self.watchers.create_watcher(fs_call(ctx), request))

    async def get_watcher_events(
        self, request: pb.GetWatcherEventsRequest, ctx: RequestContext
    ) -> pb.GetWatcherEventsResponse:
        return await rpc.unary(self.watchers.get_watcher_events(fs_call(ctx), request))

    async def remove_watcher(
        self, request: pb.RemoveWatcherRequest, ctx: RequestContext
    ) -> pb.RemoveWatcherResponse:
        return await rpc.unary(self.watchers.remove_watcher(fs_call(ctx), request))
