"""The ``/files`` endpoint: who may call it, as whom, and which transfer it is.

Order as upstream envd: authorization (``X-Access-Token`` or a signature, see
:mod:`~shoal.envd.files.signature`) → run-as user (``username``; unknown → 401) → path
(NUL, too long → 400) → the transfer. Errors are JSON ``{"code": <status>, "message": …}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shoal.envd.files.download import download
from shoal.envd.files.signature import SignedRequest, authorize, first_values, operation_of
from shoal.envd.files.upload import display, upload
from shoal.envd.paths import resolve
from shoal.envd.request import current_request
from shoal.envd.sandbox import EnvdSandbox, User
from shoal.errors import InvalidArgument, ShoalError, Unauthenticated

log = logging.getLogger(__name__)

ACCESS_TOKEN_HEADER = "x-access-token"


def json_response(status: int, body: Any) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type="application/json",
    )


def error_response(exc: ShoalError) -> Response:
    return json_response(exc.status, {"code": exc.status, "message": display(exc.message)})


def _user(sandbox: EnvdSandbox, username: str | None) -> User:
    name = username or sandbox.default_user
    user = sandbox.lookup_user(name)
    if user is None:
        raise Unauthenticated(f"error looking up user '{display(name)}': unknown user")
    return user


async def files(request: Request) -> Response:
    """``GET /files`` (download) and ``POST /files`` (upload)."""
    sandbox = current_request.get().sandbox
    try:
        operation = operation_of(request.method)
        if operation is None:  # the route admits GET and POST only
            raise InvalidArgument(f"method {request.method} is not supported")
        query = first_values(request.scope.get("query_string", b""))
        authorize(
            sandbox.access_token,
            request.headers.get(ACCESS_TOKEN_HEADER),
            SignedRequest.parse(operation, query),
        )
        user = await asyncio.to_thread(_user, sandbox, query.get("username"))
        if operation == "read":
            path = resolve(query.get("path", ""), home=user.home, workdir=sandbox.default_workdir)
            return await download(sandbox, path, request.headers.get("accept-encoding"))
        entries = await upload(sandbox, user, query, request.scope["headers"], request.stream())
        return json_response(200, entries)
    except ShoalError as exc:
        if exc.status >= 500 and exc.status != 507:
            log.warning("/files %s failed: %s", request.method, exc.message)
        return error_response(exc)
    except ClientDisconnect:
        # Nobody is left to answer; what was written stays (see upload's module doc).
        return Response(status_code=400)
