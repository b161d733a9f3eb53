"""How :mod:`shoal.errors` look on envd's two edges: Connect RPCs and plain HTTP.

The Connect codes mirror what the E2B SDK maps back into its own exceptions
(``e2b/envd/rpc.py``): ``invalid_argument``, ``unauthenticated``, ``not_found``,
``resource_exhausted``, ``deadline_exceeded`` and ``unavailable`` ("sandbox gone").
:class:`~shoal.errors.SandboxGone` is deliberately *not* mapped: a sandbox that dies under a
request must abort the response (see :func:`shoal.envd.request.abort_response`), which the
SDK reads as "the sandbox was killed".
"""

from __future__ import annotations

from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.responses import JSONResponse

from shoal import errors

UNAUTHORIZED_MESSAGE = (
    "unauthorized access, please provide a valid access token or method signing if supported"
)
SANDBOX_NOT_FOUND_MESSAGE = "The sandbox was not found"


def to_connect(exc: errors.ShoalError) -> ConnectError:
    """The Connect error a client sees for ``exc``; the original stays as ``__cause__``."""
    try:
        code = Code(exc.code)
    except ValueError:
        code = Code.INTERNAL
    err = ConnectError(code, exc.message)
    err.__cause__ = exc
    return err


def http_error(status: int, message: str, **extra: Any) -> JSONResponse:
    """envd's plain-HTTP error body: ``{"code": <status>, "message": ...}``."""
    return JSONResponse({**extra, "code": status, "message": message}, status_code=status)


def to_http(exc: errors.ShoalError) -> JSONResponse:
    return http_error(exc.status, exc.message)


def sandbox_not_found(sandbox_id: str) -> JSONResponse:
    """What the SDK needs to see for an unknown sandbox: 502 and "was not found" (§3)."""
    return http_error(502, SANDBOX_NOT_FOUND_MESSAGE, sandboxId=sandbox_id)


def unauthorized() -> JSONResponse:
    return http_error(401, UNAUTHORIZED_MESSAGE)
