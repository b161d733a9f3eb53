"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shoal.api.auth import team_for_request
from shoal.api.metrics import MetricsService
from shoal.api.service import SandboxService


def get_service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.service
    return service


def get_metrics(request: Request) -> MetricsService:
    metrics: MetricsService = request.app.state.metrics
    return metrics


Team = Annotated[str, Depends(team_for_request)]
Service = Annotated[SandboxService, Depends(get_service)]
Metrics = Annotated[MetricsService, Depends(get_metrics)]

__all__ = ["Metrics", "Service", "Team", "get_metrics", "get_service"]
