"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shoal.api.auth import team_for_request
from shoal.api.service import SandboxService


def get_service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.service
    return service


Team = Annotated[str, Depends(team_for_request)]
Service = Annotated[SandboxService, Depends(get_service)]

__all__ = ["Service", "Team", "get_service"]
