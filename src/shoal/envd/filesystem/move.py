"""filesystem.Filesystem/Move: ``rename(2)`` after creating the destination's parents
(owned by the run-as user); the answer is the destination's entry.

Neither last component is followed: a symlink is moved as a symlink, and one at the
destination is replaced. Symlinks on the way resolve inside the sandbox's root.
"""

from __future__ import annotations

import asyncio
import posixpath

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.entry import Names, entry_for
from shoal.envd.filesystem.oserr import os_error
from shoal.envd.sandbox import User
from shoal.runtime.rootfs import RootFS
from shoal.wire.envd import filesystem_pb as pb


async def move(call: FsCall, request: pb.MoveRequest) -> pb.MoveResponse:
    source = call.path(request.source)
    destination = call.path(request.destination)
    fs = call.sandbox.fs
    names = Names(fs, call.sandbox.uid_base)
    entry = await asyncio.to_thread(_move, fs, source, destination, call.user, names)
    return pb.MoveResponse(entry=entry)


def _move(fs: RootFS, source: str, destination: str, user: User, names: Names) -> pb.EntryInfo:
    parent = posixpath.dirname(destination)
    try:
        fs.makedirs(parent, user.uid, user.gid)
    except OSError as exc:
        raise os_error(exc, parent, "mkdir") from exc
    try:
        fs.rename(source, destination)
    except OSError as exc:
        raise os_error(exc, f"{source} {destination}", "rename") from exc
    try:
        return entry_for(fs, destination, names)
    except OSError as exc:
        raise os_error(exc, destination, "lstat") from exc
