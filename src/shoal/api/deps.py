"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shoal.api.auth import team_for_request
from shoal.api.metrics import MetricsService
from shoal.api.service import SandboxService
from shoal.api.snapshots import SnapshotService


def get_service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.service
    return service


def get_metrics(request: Request) -> MetricsService:
    metrics: MetricsService = request.app.state.metrics
    return metrics


def get_snapshots(request: Request) -> SnapshotService:
    snapshots: SnapshotService = request.app.state.snapshots
    return snapshots


Team = Annotated[str, Depends(team_for_request)]
Service = Annotated[SandboxService, Depends(get_service)]
Metrics = Annotated[MetricsService, Depends(get_metrics)]
Snapshots = Annotated[SnapshotService, Depends(get_snapshots)]

__all__ = [
    "Metrics",
    "Service",
    "Snapshots",
    "Team",
    "get_metrics",
    "get_service",
    "get_snapshots",
]
