"""filesystem.Filesystem/Remove: ``rm -rf``; an absent path is a success.

A symlink is removed, never followed (neither the path's last component nor anything
met below it); components on the way resolve inside the sandbox's root.
"""

from __future__ import annotations

import asyncio

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.oserr import os_error
from shoal.wire.envd import filesystem_pb as pb


async def remove(call: FsCall, request: pb.RemoveRequest) -> pb.RemoveResponse:
    path = call.path(request.path)
    try:
        await asyncio.to_thread(call.sandbox.fs.remove, path)
    except OSError as exc:
        raise os_error(exc, path, "remove") from exc
    return pb.RemoveResponse()
