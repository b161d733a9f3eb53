"""E2B's snapshot endpoints and fork: ``create_snapshot``, ``list_snapshots``,
``delete_snapshot`` (a snapshot is deleted as a template, ``DELETE /templates/{id}``)
and ``fork``.

Snapshot ids and names may carry ``/`` and ``:`` (the SDK percent-encodes them as one
segment); the server decodes the path before routing, so the delete route takes a path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from shoal.api.deps import Snapshots, Team
from shoal.errors import ShoalError
from shoal.wire.api.models import ErrorBody, ForkSandbox, NewSnapshot, to_wire

router = APIRouter()

NEXT_TOKEN_HEADER = "X-Next-Token"


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(
    sandbox_id: str, team: Team, snapshots: Snapshots, body: NewSnapshot | None = None
) -> JSONResponse:
    body = body or NewSnapshot()
    info = await snapshots.create(team, sandbox_id, name=body.name, memory=body.memory)
    return JSONResponse(to_wire(info), status_code=201)


@router.get("/snapshots")
async def list_snapshots(
    team: Team,
    snapshots: Snapshots,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None,
    name: str | None = None,
    limit: int | None = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> JSONResponse:
    items, token = await snapshots.list_snapshots(
        team, sandbox_id=sandbox_id, name=name, limit=limit, next_token=next_token
    )
    headers = {NEXT_TOKEN_HEADER: token} if token else {}
    return JSONResponse([to_wire(i) for i in items], headers=headers)


@router.delete("/templates/{template_id:path}", status_code=204)
async def delete_template(template_id: str, team: Team, snapshots: Snapshots) -> Response:
    await snapshots.delete(team, template_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(
    sandbox_id: str, team: Team, snapshots: Snapshots, body: ForkSandbox | None = None
) -> JSONResponse:
    body = body or ForkSandbox()
    results = await snapshots.fork(team, sandbox_id, timeout_s=body.timeout, count=body.count)
    out: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, ShoalError):
            error = ErrorBody(code=result.status, message=result.message)
            out.append({"error": to_wire(error)})
        else:
            out.append({"sandbox": to_wire(result)})
    return JSONResponse(out, status_code=201)
