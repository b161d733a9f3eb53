"""The node agent's HTTP face: the node protocol (``/node/v1``) and sandbox traffic.

A request that names a sandbox (``E2b-Sandbox-Id`` or a ``<port>-<id>.<domain>`` Host)
is data plane; everything else is the node protocol, guarded by the node token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from shoal.agent.checkpoints import CheckpointDir, export_archive, import_archive
from shoal.agent.metrics import Sample
from shoal.errors import InvalidArgument, NotFound, RuntimeFailure, ShoalError, Unauthenticated
from shoal.proxy.routing import route_of
from shoal.wire.node import (
    CreateSandboxRequest,
    MetricSample,
    PauseRequest,
    ResumeRequest,
    SnapshotRequest,
)
from shoal.wire.node.models import NODE_TOKEN_HEADER, PREFIX

if TYPE_CHECKING:
    from shoal.agent.node import NodeAgent


def _error(exc: ShoalError) -> JSONResponse:
    body: dict[str, Any] = {"code": exc.status, "message": exc.message}
    if exc.error_code:
        body["error_code"] = exc.error_code
    return JSONResponse(body, status_code=exc.status)


def _unix_seconds(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be Unix seconds, got {raw!r}") from None
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative (got {value})")
    return value


_B = TypeVar("_B", PauseRequest, ResumeRequest, SnapshotRequest)


def _parse(model: type[_B], body: bytes) -> _B:
    try:
        return model.model_validate_json(body or b"{}")
    except (ValidationError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"invalid request: {exc}") from exc


def _wire_sample(sample: Sample) -> dict[str, Any]:
    return MetricSample(**dataclasses.asdict(sample)).model_dump(mode="json")


def build_node_api(agent: NodeAgent) -> Router:
    async def info(request: Request) -> Response:
        return JSONResponse(agent.info().model_dump(mode="json"))

    async def list_sandboxes(request: Request) -> Response:
        return JSONResponse(
            [agent.manager.status(s).model_dump(mode="json") for s in agent.manager.running()]
        )

    async def create_sandbox(request: Request) -> Response:
        try:
            req = CreateSandboxRequest.model_validate_json(await request.body())
        except (ValidationError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"invalid create request: {exc}") from exc
        sbx = await agent.manager.create(req)
        return JSONResponse(agent.manager.status(sbx).model_dump(mode="json"), status_code=201)

    async def kill_sandbox(request: Request) -> Response:
        sandbox_id = request.path_params["sandbox_id"]
        if not await agent.manager.kill(sandbox_id):
            raise NotFound(f"sandbox {sandbox_id} not found on this node")
        return Response(status_code=204)

    async def pause_sandbox(request: Request) -> Response:
        req = _parse(PauseRequest, await request.body())
        held = await agent.manager.pause(request.path_params["sandbox_id"], memory=req.memory)
        return JSONResponse(held.model_dump(mode="json"))

    async def resume_sandbox(request: Request) -> Response:
        req = _parse(ResumeRequest, await request.body())
        sbx = await agent.manager.resume(
            request.path_params["sandbox_id"], memory=req.memory,
            access_token=req.access_token, env_vars=req.env_vars or None,
        )
        return JSONResponse(agent.manager.status(sbx).model_dump(mode="json"), status_code=201)

    async def snapshot_sandbox(request: Request) -> Response:
        req = _parse(SnapshotRequest, await request.body())
        held = await agent.manager.snapshot(
            request.path_params["sandbox_id"], req.snapshot_id, memory=req.memory
        )
        return JSONResponse(held.model_dump(mode="json"), status_code=201)

    async def delete_snapshot(request: Request) -> Response:
        snapshot_id = request.path_params["snapshot_id"]
        if not await agent.manager.delete_snapshot(snapshot_id):
            raise NotFound(f"snapshot {snapshot_id} not found on this node")
        return Response(status_code=204)

    def _kind(request: Request) -> CheckpointDir:
        kind = request.path_params["kind"]
        if kind == "paused":
            return agent.manager.paused
        if kind == "snapshots":
            return agent.manager.snapshots
        raise NotFound(f"no checkpoints of kind {kind!r}")

    async def export_checkpoint(request: Request) -> Response:
        checkpoint_id = request.path_params["checkpoint_id"]
        held = _kind(request).get(checkpoint_id)
        if held is None:
            raise NotFound(f"checkpoint {checkpoint_id} not found on this node")
        return StreamingResponse(export_archive(held), media_type="application/x-tar")

    async def import_checkpoint(request: Request) -> Response:
        held = await import_archive(
            _kind(request), request.path_params["checkpoint_id"], request.stream()
        )
        status = await asyncio.to_thread(held.status)
        return JSONResponse(status.model_dump(mode="json"), status_code=201)

    async def list_checkpoints(request: Request) -> Response:
        held = await asyncio.to_thread(agent.manager.checkpoints)
        return JSONResponse([h.model_dump(mode="json") for h in held])

    async def sandbox_metrics(request: Request) -> Response:
        sandbox_id = request.path_params["sandbox_id"]
        if agent.manager.get(sandbox_id) is None:
            raise NotFound(f"sandbox {sandbox_id} not found on this node")
        start, end = _unix_seconds(request, "start"), _unix_seconds(request, "end")
        samples = agent.metrics.samples(sandbox_id, start, end)
        return JSONResponse([_wire_sample(s) for s in samples])

    async def latest_metrics(request: Request) -> Response:
        """The newest sample of each listed sandbox this node has one for."""
        ids = [i for i in request.query_params.get("sandbox_ids", "").split(",") if i]
        latest = {i: agent.metrics.latest(i) for i in ids if agent.manager.get(i) is not None}
        return JSONResponse({i: _wire_sample(s) for i, s in latest.items() if s is not None})

    return Router(
        routes=[
            Route(f"{PREFIX}/info", info, methods=["GET"]),
            Route(f"{PREFIX}/sandboxes", list_sandboxes, methods=["GET"]),
            Route(f"{PREFIX}/sandboxes", create_sandbox, methods=["POST"]),
            Route(f"{PREFIX}/sandboxes/{{sandbox_id}}", kill_sandbox, methods=["DELETE"]),
            Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/pause", pause_sandbox, methods=["POST"]),
            Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/resume", resume_sandbox, methods=["POST"]),
            Route(
                f"{PREFIX}/sandboxes/{{sandbox_id}}/snapshots", snapshot_sandbox, methods=["POST"]
            ),
            Route(f"{PREFIX}/snapshots/{{snapshot_id}}", delete_snapshot, methods=["DELETE"]),
            Route(f"{PREFIX}/checkpoints", list_checkpoints, methods=["GET"]),
            Route(
                f"{PREFIX}/checkpoints/{{kind}}/{{checkpoint_id}}/archive",
                export_checkpoint, methods=["GET"],
            ),
            Route(
                f"{PREFIX}/checkpoints/{{kind}}/{{checkpoint_id}}/archive",
                import_checkpoint, methods=["PUT"],
            ),
            Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/metrics", sandbox_metrics, methods=["GET"]),
            Route(f"{PREFIX}/metrics", latest_metrics, methods=["GET"]),
        ]
    )


class AgentApp:
    """ASGI entry point of a node agent."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.node_api = build_node_api(agent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(self.agent, receive, send)
            return
        if scope["type"] != "http":
            return
        # Everything reaching a node agent's port comes from the control plane or the
        # proxy, both of which carry the node token; sandbox traffic included.
        try:
            self._check_token(scope)
        except ShoalError as exc:
            await _error(exc)(scope, receive, send)
            return
        if route_of(scope) is not None:
            await self.agent.dataplane(scope, receive, send)
            return
        try:
            await self.node_api(scope, receive, send)
        except ShoalError as exc:
            await _error(exc)(scope, receive, send)
        except Exception as exc:  # the node protocol answers errors in its own shape
            await _error(RuntimeFailure(f"internal error: {exc}"))(scope, receive, send)

    def _check_token(self, scope: Scope) -> None:
        expected = self.agent.settings.node_token
        if not expected:
            return
        want = NODE_TOKEN_HEADER.lower().encode()
        for name, value in scope["headers"]:
            if name.lower() == want and hmac.compare_digest(value, expected.encode()):
                return
        raise Unauthenticated("missing or invalid node token")


async def _lifespan(agent: NodeAgent, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await agent.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await agent.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
