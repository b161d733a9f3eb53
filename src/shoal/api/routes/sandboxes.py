"""E2B's sandbox endpoints, v1 and v2 (both generations of the SDK are in use), with
pause and resume (connect resumes a paused sandbox: 201 instead of 200)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from shoal.api.deps import Service, Team
from shoal.api.service import ListFilters
from shoal.wire.api.models import (
    ConnectSandbox,
    ConnectSandboxV1,
    NewSandbox,
    PauseSandbox,
    RefreshRequest,
    ResumeSandbox,
    TimeoutRequest,
    to_wire,
)

router = APIRouter()

NEXT_TOKEN_HEADER = "X-Next-Token"


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)
async def create_sandbox(body: NewSandbox, team: Team, service: Service) -> JSONResponse:
    sandbox = await service.create(team, body)
    return JSONResponse(to_wire(sandbox), status_code=201)


@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect_sandbox(
    sandbox_id: str, body: ConnectSandbox, team: Team, service: Service
) -> JSONResponse:
    sandbox, resumed = await service.connect(team, sandbox_id, body.timeout, memory=body.memory)
    return JSONResponse(to_wire(sandbox), status_code=201 if resumed else 200)


@router.post("/sandboxes/{sandbox_id}/connect")
async def connect_sandbox_v1(
    sandbox_id: str, body: ConnectSandboxV1, team: Team, service: Service
) -> JSONResponse:
    sandbox, resumed = await service.connect(team, sandbox_id, body.timeout, memory=body.memory)
    return JSONResponse(to_wire(sandbox), status_code=201 if resumed else 200)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201)
async def resume_sandbox(
    sandbox_id: str, team: Team, service: Service, body: ResumeSandbox | None = None
) -> JSONResponse:
    """Legacy (early 2.x SDKs): only a paused sandbox; a running one is a 409."""
    body = body or ResumeSandbox()
    sandbox = await service.resume(team, sandbox_id, body.timeout, body.auto_pause)
    return JSONResponse(to_wire(sandbox), status_code=201)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause_sandbox(
    sandbox_id: str, team: Team, service: Service, body: PauseSandbox | None = None
) -> Response:
    # requireHealthyGuest is accepted and needs nothing more: the node refuses a pause
    # (and the sandbox keeps running) whenever it cannot checkpoint the sandbox whole.
    await service.pause(team, sandbox_id, memory=body.memory if body else None)
    return Response(status_code=204)


@router.get("/v2/sandboxes")
async def list_sandboxes(
    team: Team,
    service: Service,
    state: Annotated[list[str] | None, Query()] = None,
    metadata: str | None = None,
    started_after: Annotated[str | None, Query(alias="startedAfter")] = None,
    template: str | None = None,
    order: str | None = None,
    limit: int | None = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> JSONResponse:
    filters = ListFilters(
        states=state,
        metadata=metadata,
        started_after=started_after,
        template=template,
        order=order,
        limit=limit,
        next_token=next_token,
    )
    items, token = await service.list_sandboxes(team, filters)
    headers = {NEXT_TOKEN_HEADER: token} if token else {}
    return JSONResponse([to_wire(i) for i in items], headers=headers)


@router.get("/sandboxes")
async def list_sandboxes_v1(
    team: Team, service: Service, metadata: str | None = None
) -> JSONResponse:
    items = await service.list_running(team, metadata)
    return JSONResponse([to_wire(i) for i in items])


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, team: Team, service: Service) -> JSONResponse:
    return JSONResponse(to_wire(await service.get(team, sandbox_id)))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, team: Team, service: Service) -> Response:
    await service.kill(team, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(
    sandbox_id: str, body: TimeoutRequest, team: Team, service: Service
) -> Response:
    await service.set_timeout(team, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204)
async def refresh_sandbox(
    sandbox_id: str, team: Team, service: Service, body: RefreshRequest | None = None
) -> Response:
    await service.refresh(team, sandbox_id, body.duration if body else None)
    return Response(status_code=204)
