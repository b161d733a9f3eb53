"""Watchers: the WatchDir stream and the polling CreateWatcher / GetWatcherEvents /
RemoveWatcher (not implemented yet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from connectrpc.request import RequestContext

from shoal.envd.filesystem.context import FsCall
from shoal.errors import ShoalError
from shoal.wire.envd import filesystem_pb as pb


class Unimplemented(ShoalError):
    status, code = 501, "unimplemented"


class WatcherRegistry:
    def forget(self, sandbox_id: str) -> None:
        pass

    def close(self) -> None:
        pass

    async def watch_dir(
        self, call: FsCall, request: pb.WatchDirRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        raise Unimplemented("WatchDir is not implemented yet")
        yield  # pragma: no cover

    async def create_watcher(self, call: FsCall, request: Any) -> Any:
        raise Unimplemented("CreateWatcher is not implemented yet")

    async def get_watcher_events(self, call: FsCall, request: Any) -> Any:
        raise Unimplemented("GetWatcherEvents is not implemented yet")

    async def remove_watcher(self, call: FsCall, request: Any) -> Any:
        raise Unimplemented("RemoveWatcher is not implemented yet")
