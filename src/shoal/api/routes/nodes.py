"""Internal node endpoints: heartbeats from stand-alone agents.

Not part of E2B's API; authenticated with the shared node token, never an API key.
Without a configured node token no agent can register over HTTP.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from shoal.api.reconcile import reconcile
from shoal.api.registry import NodeRegistry, node_row
from shoal.api.service import SandboxService
from shoal.errors import InvalidArgument, Unauthenticated
from shoal.wire.node.models import NODE_TOKEN_HEADER, Heartbeat

router = APIRouter()


def require_node_token(request: Request) -> None:
    """Checked as a dependency so a bad token is 401 before the body is validated."""
    service: SandboxService = request.app.state.service
    expected = service.settings.node_token
    given = request.headers.get(NODE_TOKEN_HEADER, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthenticated("invalid node token")


@router.post("/internal/v1/nodes/{node_id}/heartbeat", dependencies=[Depends(require_node_token)])
async def heartbeat(node_id: str, body: Heartbeat, request: Request) -> JSONResponse:
    service: SandboxService = request.app.state.service
    if body.node.node_id != node_id:
        raise InvalidArgument(f"heartbeat for {body.node.node_id!r} posted to node {node_id!r}")
    registry: NodeRegistry = service.registry
    now = service.clock()
    await registry.observe(body.node, now, pushed=True)
    await service.store.upsert_node(node_row(body.node, now))
    orphans = await reconcile(service.store, registry, node_id, body.sandboxes, now)
    return JSONResponse({"orphans": orphans})
