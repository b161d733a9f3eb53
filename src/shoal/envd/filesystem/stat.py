"""filesystem.Filesystem/Stat: the entry for a path (a last symlink described, not followed)."""

from __future__ import annotations

import asyncio

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.entry import Names, entry_for
from shoal.envd.filesystem.oserr import os_error
from shoal.wire.envd import filesystem_pb as pb


async def stat(call: FsCall, request: pb.StatRequest) -> pb.StatResponse:
    path = call.path(request.path)
    fs = call.sandbox.fs
    names = Names(fs, call.sandbox.uid_base)
    try:
        entry = await asyncio.to_thread(entry_for, fs, path, names)
    except OSError as exc:
        raise os_error(exc, path, "lstat") from exc
    return pb.StatResponse(entry=entry)
