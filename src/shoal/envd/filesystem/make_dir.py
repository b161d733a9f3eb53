"""filesystem.Filesystem/MakeDir: ``mkdir -p``, new directories owned by the run-as user.

An existing directory (a symlink to one included) is ``already_exists`` (the SDK returns
False); an existing non-directory is ``invalid_argument``.
"""

from __future__ import annotations

import asyncio
import stat as st

from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.entry import Names, entry_for
from shoal.envd.filesystem.oserr import os_error
from shoal.envd.sandbox import User
from shoal.errors import AlreadyExists, InvalidArgument
from shoal.runtime.rootfs import RootFS
from shoal.wire.envd import filesystem_pb as pb


async def make_dir(call: FsCall, request: pb.MakeDirRequest) -> pb.MakeDirResponse:
    path = call.path(request.path)
    fs = call.sandbox.fs
    entry = await asyncio.to_thread(
        _make_dir, fs, path, call.user, Names(fs, call.sandbox.uid_base)
    )
    return pb.MakeDirResponse(entry=entry)


def _make_dir(fs: RootFS, path: str, user: User, names: Names) -> pb.EntryInfo:
    try:
        existing = fs.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error(exc, path, "stat") from exc
    else:
        if st.S_ISDIR(existing.st_mode):
            raise AlreadyExists(f"directory already exists: {path}")
        raise InvalidArgument(f"path already exists but it is not a directory: {path}")
    try:
        created = fs.makedirs(path, user.uid, user.gid)
        if not created:  # a concurrent request made it first
            raise AlreadyExists(f"directory already exists: {path}")
        return entry_for(fs, path, names)
    except OSError as exc:
        raise os_error(exc, path, "mkdir") from exc
