"""The ``filesystem.Filesystem`` service: a thin dispatcher to one module per RPC.

Errors are mapped once, by :mod:`shoal.envd.rpc`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from connectrpc.request import RequestContext

from shoal.envd import rpc
from shoal.envd.filesystem import list_dir, make_dir, move, remove, stat, watch
from shoal.envd.filesystem.context import FsCall, fs_call
from shoal.wire.envd import filesystem_pb as pb
from shoal.wire.envd.filesystem_connect import Filesystem

Req = TypeVar("Req")
Res = TypeVar("Res")


async def _with_call(
    handler: Callable[[FsCall, Req], Awaitable[Res]], ctx: RequestContext, request: Req
) -> Res:
    """Run ``handler`` with the request's :class:`FsCall`, resolved here, inside
    :func:`rpc.unary`'s error mapping: an unknown user must come out ``unauthenticated``."""
    return await handler(fs_call(ctx), request)


class FilesystemService(Filesystem):
    def __init__(self) -> None:
        self.watchers = watch.WatcherRegistry()

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: drop its watchers (and their inotify fds)."""
        self.watchers.forget(sandbox_id)

    async def aclose(self) -> None:
        self.watchers.close()

    async def stat(self, request: pb.StatRequest, ctx: RequestContext) -> pb.StatResponse:
        return await rpc.unary(_with_call(stat.stat, ctx, request))

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext) -> pb.MakeDirResponse:
        return await rpc.unary(_with_call(make_dir.make_dir, ctx, request))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext) -> pb.MoveResponse:
        return await rpc.unary(_with_call(move.move, ctx, request))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext) -> pb.ListDirResponse:
        return await rpc.unary(_with_call(list_dir.list_dir, ctx, request))

    async def remove(self, request: pb.RemoveRequest, ctx: RequestContext) -> pb.RemoveResponse:
        return await rpc.unary(_with_call(remove.remove, ctx, request))

    def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        return rpc.stream(self._watch_dir(request, ctx))

    async def _watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        # The user is resolved inside the stream, so an unknown one reaches rpc.stream's error
        # mapping and ends the stream ``unauthenticated`` (not ``unknown``).
        responses = self.watchers.watch_dir(fs_call(ctx), request, ctx)
        async with contextlib.aclosing(responses):  # type: ignore[type-var]
            async for response in responses:
                yield response

    async def create_watcher(
        self, request: pb.CreateWatcherRequest, ctx: RequestContext
    ) -> pb.CreateWatcherResponse:
        return await rpc.unary(_with_call(self.watchers.create_watcher, ctx, request))

    async def get_watcher_events(
        self, request: pb.GetWatcherEventsRequest, ctx: RequestContext
    ) -> pb.GetWatcherEventsResponse:
        return await rpc.unary(_with_call(self.watchers.get_watcher_events, ctx, request))

    async def remove_watcher(
        self, request: pb.RemoveWatcherRequest, ctx: RequestContext
    ) -> pb.RemoveWatcherResponse:
        return await rpc.unary(_with_call(self.watchers.remove_watcher, ctx, request))
