"""E2B's sandbox metrics endpoints (``get_metrics``; the bulk one is the dashboard's).

Included before ``sandboxes``: ``GET /sandboxes/metrics`` would otherwise be taken for
``GET /sandboxes/{sandbox_id}`` of a sandbox named "metrics".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from shoal.api.deps import Metrics, Team
from shoal.wire.api.models import SandboxesWithMetrics, to_wire

router = APIRouter()


@router.get("/sandboxes/metrics")
async def sandboxes_metrics(
    team: Team,
    metrics: Metrics,
    sandbox_ids: Annotated[list[str], Query(min_length=1)],
) -> JSONResponse:
    # The SDKs send one comma-separated value; repeated parameters are accepted too.
    ids = [i for value in sandbox_ids for i in value.split(",") if i]
    latest = await metrics.latest(team, ids)
    return JSONResponse(to_wire(SandboxesWithMetrics(sandboxes=latest)))


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str,
    team: Team,
    metrics: Metrics,
    start: int | None = None,
    end: int | None = None,
) -> JSONResponse:
    samples = await metrics.sandbox_metrics(team, sandbox_id, start, end)
    return JSONResponse([to_wire(s) for s in samples])
