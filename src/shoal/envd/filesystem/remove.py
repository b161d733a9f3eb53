"""filesystem.Filesystem/remove (not implemented yet)."""

from __future__ import annotations

from typing import Any

from shoal.envd.filesystem.context import FsCall
from shoal.errors import ShoalError


class Unimplemented(ShoalError):
    status, code = 501, "unimplemented"


async def remove(call: FsCall, request: Any) -> Any:
    raise Unimplemented("remove is not implemented yet")
