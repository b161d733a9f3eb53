"""The REST edge's one error mapping: every failure becomes ``{"code", "message"[, "error_code"]}``.

Routes only raise. ``ShoalError`` carries its own status; FastAPI's validation errors
and malformed JSON are 400 (E2B answers bad input with 400, never 422); unknown
routes and methods keep their status; anything unexpected is a 500 whose message
hides the internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoal.errors import ShoalError

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, error_code: str | None = None, *, retry: bool | None = None
) -> JSONResponse:
    body: dict[str, object] = {"code": status, "message": message}
    if error_code:
        body["error_code"] = error_code
    headers = {}
    if retry is not None:
        # The SDK retries 5xx (even creates) unless told not to; a 500 may have left
        # work behind, so a blind retry could duplicate it.
        headers["Should-Retry"] = "true" if retry else "false"
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


async def _shoal_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ShoalError)
    if exc.status >= 500:
        log.warning("request failed: %s", exc.message, exc_info=exc.__cause__ or exc)
    retry = False if exc.status == 500 else None
    return error_response(exc.status, exc.message, exc.error_code, retry=retry)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, _validation_message(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    response = error_response(exc.status_code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", "internal_server_error", retry=False)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ShoalError, _shoal_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


__all__ = ["error_response", "install_error_handlers"]
