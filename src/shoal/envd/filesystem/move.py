"""filesystem.Filesystem/move (not implemented yet)."""

from __future__ import annotations

from typing import Any

from shoal.envd.filesystem.context import FsCall
from shoal.errors import ShoalError


class Unimplemented(ShoalError):
    status, code = 501, "unimplemented"


async def move(call: FsCall, request: Any) -> Any:
    raise Unimplemented("move is not implemented yet")
