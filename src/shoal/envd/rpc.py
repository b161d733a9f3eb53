"""The one place envd's Connect handlers turn Shoal errors into Connect errors.

:class:`~shoal.errors.ShoalError` becomes its Connect code; :class:`~shoal.errors.SandboxGone`
marks the response aborted and propagates, so the client sees a broken response rather
than a clean end (e2b-compat §3); anything else is an internal error, logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from shoal.envd.errors import to_connect
from shoal.envd.request import abort_response
from shoal.errors import SandboxGone, ShoalError

log = logging.getLogger(__name__)

Res = TypeVar("Res")


def translate(exc: Exception) -> BaseException:
    if isinstance(exc, SandboxGone):
        abort_response()
        return exc
    if isinstance(exc, ShoalError):
        return to_connect(exc)
    if isinstance(exc, ConnectError):
        return exc
    log.exception("envd handler failed", exc_info=exc)
    return ConnectError(Code.INTERNAL, f"internal error: {exc}")


async def unary(call: Awaitable[Res]) -> Res:
    try:
        return await call
    except Exception as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


async def stream(responses: AsyncIterator[Res]) -> AsyncIterator[Res]:
    async with contextlib.aclosing(responses):  # type: ignore[type-var]
        try:
            async for response in responses:
                yield response
        except Exception as exc:
            translated = translate(exc)
            if translated is exc:
                raise
            raise translated from exc
