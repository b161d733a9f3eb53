"""The Starlette ASGI app of the in-sandbox code-interpreter server (e2b-compat.md §5.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shoal.interpreter import events
from shoal.interpreter.config import Settings
from shoal.interpreter.contexts import Context, ContextNotFound, Registry
from shoal.interpreter.events import Event
from shoal.interpreter.execute import Control
from shoal.interpreter.kernels import UnknownLanguage

log = logging.getLogger(__name__)

_DONE: Event = {"type": "__done__"}


class ExecutionStream(Response):
    """Streams the events of one execution as NDJSON, with keepalives on silence.

    Watches for the client going away independently of writes: a disconnect (or a failed
    write) detaches the stream and interrupts the kernel; the execution then finishes in the
    background, its remaining events dropped.
    """

    media_type = "application/x-ndjson"

    def __init__(self, context: Context, code: str, env_vars: dict[str, str] | None,
                 token: str | None, settings: Settings, tasks: set[asyncio.Task[None]]) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"application/x-ndjson")]
        self._context = context
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=256)
        self._detached = False
        self._keepalive = settings.keepalive_interval
        loop = asyncio.get_running_loop()
        limit = settings.execution_timeout
        self._control = Control(None if limit is None else loop.time() + limit,
                                settings.interrupt_grace)
        self._task = asyncio.create_task(self._produce(code, env_vars, token))
        tasks.add(self._task)
        self._task.add_done_callback(tasks.discard)

    async def _emit(self, event: Event) -> None:
        if not self._detached:
            await self._queue.put(event)

    async def _produce(self, code: str, env_vars: dict[str, str] | None,
                       token: str | None) -> None:
        try:
            await self._context.run(code, env_vars, token, self._emit, self._control)
        except Exception:
            log.exception("execution failed")
            await self._emit(events.error("UnexpectedEndOfExecution",
                                          "the interpreter server failed", ""))
            await self._emit(events.END_OF_EXECUTION)
        finally:
            await self._emit(_DONE)

    async def _lines(self) -> AsyncIterator[bytes]:
        while True:
            try:
                event = await asyncio.wait_for(self._queue.get(), self._keepalive)
            except TimeoutError:
                event = events.KEEPALIVE
            if event is _DONE:
                return
            yield events.encode(event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": self.raw_headers})

        async def pump() -> None:
            async for line in self._lines():
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(watch())
        completed = False
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
            completed = pumping.done() and pumping.exception() is None
        finally:
            for task in (pumping, watching):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(pumping, watching, return_exceptions=True)
            if not completed:
                await self._detach()

    async def _detach(self) -> None:
        self._detached = True
        while not self._queue.empty():  # unblock a producer waiting on a full queue
            self._queue.get_nowait()
        if not self._task.done():
            await self._context.interrupt(self._control)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    tasks: set[asyncio.Task[None]] = set()
    state: dict[str, Registry] = {}

    def reg() -> Registry:
        return state["registry"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["registry"] = registry or Registry(settings)
        started = await asyncio.gather(
            *(
                reg().default(lang, lazy=lang not in settings.eager_languages)
                for lang in settings.default_languages
            ),
            return_exceptions=True,
        )
        for language, outcome in zip(settings.default_languages, started, strict=True):
            if isinstance(outcome, UnknownLanguage):
                log.warning("no kernel for default language %s; skipped", language)
            elif isinstance(outcome, BaseException):
                raise outcome
        try:
            yield
        finally:
            await reg().close()

    async def health(request: Request) -> Response:
        return JSONResponse("OK")

    async def execute(request: Request) -> Response:
        try:
            body: dict[str, Any] = await request.json()
            code = body["code"]
            if not isinstance(code, str):
                raise TypeError("code must be a string")
            if not isinstance(body.get("env_vars") or {}, dict):
                raise TypeError("env_vars must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return PlainTextResponse(f"Invalid request: {exc}", status_code=422)
        context_id, language = body.get("context_id"), body.get("language")
        if context_id and language:
            return PlainTextResponse(
                "Only one of context_id or language can be provided", status_code=400)
        try:
            context = reg().get(context_id) if context_id else await reg().default(language)
        except ContextNotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except UnknownLanguage as exc:
            return PlainTextResponse(str(exc), status_code=500)
        env_vars = body.get("env_vars") or None
        if env_vars is not None:
            env_vars = {str(k): str(v) for k, v in env_vars.items()}
        token = request.headers.get("x-access-token")
        return ExecutionStream(context, code, env_vars, token, settings, tasks)

    async def create_context(request: Request) -> Response:
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return PlainTextResponse("Invalid JSON", status_code=422)
        try:
            ctx = await reg().create(body.get("language"), body.get("cwd"))
        except Exception as exc:
            return PlainTextResponse(f"Failed to create context: {exc}", status_code=500)
        return JSONResponse(ctx.to_json())

    async def list_contexts(request: Request) -> Response:
        return JSONResponse([c.to_json() for c in reg().list()])

    async def restart_context(request: Request) -> Response:
        try:
            await reg().get(request.path_params["context_id"]).restart()
        except ContextNotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        return JSONResponse(None)

    async def remove_context(request: Request) -> Response:
        try:
            await reg().remove(request.path_params["context_id"])
        except ContextNotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        return JSONResponse(None)

    async def provide_env(request: Request) -> Response:
        """The node agent hands over the sandbox's variables to a server started before the
        sandbox was handed out (a primed sandbox)."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("expected a JSON object")
        except (ValueError, TypeError) as exc:
            return PlainTextResponse(f"Invalid request: {exc}", status_code=422)
        reg().sandbox_envs.provide({str(k): str(v) for k, v in body.items()})
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/execute", execute, methods=["POST"]),
            Route("/contexts", create_context, methods=["POST"]),
            Route("/contexts", list_contexts, methods=["GET"]),
            Route("/contexts/{context_id}/restart", restart_context, methods=["POST"]),
            Route("/contexts/{context_id}", remove_context, methods=["DELETE"]),
            Route("/shoal/env", provide_env, methods=["PUT"]),
        ],
        lifespan=lifespan,
    )
