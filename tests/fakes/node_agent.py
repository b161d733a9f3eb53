"""A fake node agent: the ``/node/v1`` protocol over an in-memory sandbox table.

Only the node is fake; tests drive the real API, store and node client against it.
Knobs: ``refuse`` (answer creates with 503 capacity), ``down`` (the transport fails as
if the machine were unreachable), ``create_delay`` (slow creates, for concurrency).

Pause, resume and snapshots follow the node protocol's contract: a pause moves a running
sandbox into ``paused`` (its "checkpoint"), a resume moves it back, a kill removes either;
snapshots are kept per id and creates with ``snapshot_id`` need one. Knobs:
``pause_delay``/``resume_delay``/``snapshot_delay`` (seconds), ``fail_pause``/
``fail_resume``/``fail_snapshot`` (answer 500; the sandbox keeps running, the checkpoint
stays), ``checkpoint_size`` (bytes reported). Every call is appended to ``calls`` as
``(operation, id)``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.client.node import NodeClient
from shoal.wire.node.models import (
    DEFAULT_CPU_COUNT,
    DEFAULT_MEMORY_MB,
    NODE_TOKEN_HEADER,
    PREFIX,
    CheckpointStatus,
    CreateSandboxRequest,
    MetricSample,
    NodeInfo,
    NodeResources,
    PauseRequest,
    ResumeRequest,
    SandboxStatus,
    SnapshotRequest,
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


class _Switchable(httpx.AsyncBaseTransport):
    """ASGI transport that can be made to fail like a dead machine."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.inner = httpx.ASGITransport(app=node.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.node.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


class FakeNode:
    def __init__(
        self,
        node_id: str = "node1",
        *,
        templates: tuple[str, ...] = ("base",),
        cpu_count: int = 8,
        memory_mb: int = 8192,
        max_sandboxes: int = 1000,
        token: str | None = "node-secret",
        cost: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.templates = list(templates)
        self.cpu_count = cpu_count
        self.memory_mb = memory_mb
        self.max_sandboxes = max_sandboxes
        self.token = token
        self.cost = cost
        self.draining = False
        self.refuse = False
        self.down = False
        self.create_delay = 0.0
        self.sandboxes: dict[str, SandboxStatus] = {}
        self.requests: dict[str, CreateSandboxRequest] = {}
        self.killed: list[str] = []
        self.samples: dict[str, list[MetricSample]] = {}
        """Metric samples per sandbox, set by tests (the real agent samples cgroups)."""
        self.metric_queries: list[dict[str, str]] = []
        self.paused: dict[str, CheckpointStatus] = {}
        self.snapshots: dict[str, CheckpointStatus] = {}
        self.calls: list[tuple[str, str]] = []
        self.resume_requests: list[ResumeRequest] = []
        self.pause_delay = 0.0
        self.resume_delay = 0.0
        self.snapshot_delay = 0.0
        self.fail_pause = False
        self.fail_resume = False
        self.fail_snapshot = False
        self.checkpoint_size = 4096
        self.app = Starlette(
            routes=[
                Route(f"{PREFIX}/info", self._info, methods=["GET"]),
                Route(f"{PREFIX}/sandboxes", self._list, methods=["GET"]),
                Route(f"{PREFIX}/sandboxes", self._create, methods=["POST"]),
                Route(f"{PREFIX}/sandboxes/{{sandbox_id}}", self._kill, methods=["DELETE"]),
                Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/metrics", self._metrics, methods=["GET"]),
                Route(f"{PREFIX}/metrics", self._latest_metrics, methods=["GET"]),
                Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/pause", self._pause, methods=["POST"]),
                Route(f"{PREFIX}/sandboxes/{{sandbox_id}}/resume", self._resume, methods=["POST"]),
                Route(
                    f"{PREFIX}/sandboxes/{{sandbox_id}}/snapshots",
                    self._snapshot,
                    methods=["POST"],
                ),
                Route(f"{PREFIX}/snapshots/{{snapshot_id}}", self._drop, methods=["DELETE"]),
                Route(f"{PREFIX}/checkpoints", self._checkpoints, methods=["GET"]),
            ]
        )

    def count(self, operation: str, ident: str | None = None) -> int:
        """How many ``operation`` calls (for ``ident``, if given) this node got."""
        return sum(1 for op, i in self.calls if op == operation and ident in (None, i))

    def _checkpoint(self, checkpoint_id: str, sandbox_id: str, memory: bool) -> CheckpointStatus:
        req = self.requests.get(sandbox_id)
        return CheckpointStatus(
            checkpoint_id=checkpoint_id,
            sandbox_id=sandbox_id,
            template_id=req.template_id if req else "base",
            memory=memory,
            size_bytes=self.checkpoint_size,
            created_at=datetime.now(UTC),
            cpu_count=(req.cpu_count if req else None) or DEFAULT_CPU_COUNT,
            memory_mb=(req.memory_mb if req else None) or DEFAULT_MEMORY_MB,
            disk_mb=req.disk_mb if req else 1024,
        )

    @property
    def address(self) -> str:
        return f"http://{self.node_id}.test"

    def info(self) -> NodeInfo:
        live = [r for r in self.requests.values() if r.sandbox_id in self.sandboxes]
        cpu = sum(r.cpu_count or DEFAULT_CPU_COUNT for r in live)
        mem = sum(r.memory_mb or DEFAULT_MEMORY_MB for r in live)
        return NodeInfo(
            node_id=self.node_id,
            address=self.address,
            cost=self.cost,
            draining=self.draining,
            capacity=NodeResources(cpu_count=self.cpu_count, memory_mb=self.memory_mb, disk_mb=0),
            allocated=NodeResources(
                cpu_count=cpu, memory_mb=mem, disk_mb=0, sandboxes=len(self.sandboxes)
            ),
            templates=list(self.templates),
        )

    def client(self) -> NodeClient:
        return NodeClient(self.address, token=self.token, transport=_Switchable(self))

    def add_orphan(self, sandbox_id: str, template_id: str = "base") -> None:
        self.sandboxes[sandbox_id] = SandboxStatus(
            sandbox_id=sandbox_id,
            template_id=template_id,
            state="running",
            started_at=datetime.now(UTC),
        )

    def _authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get(NODE_TOKEN_HEADER) == self.token

    async def _info(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        return JSONResponse(self.info().model_dump(mode="json"))

    async def _list(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        return JSONResponse([s.model_dump(mode="json") for s in self.sandboxes.values()])

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        req = CreateSandboxRequest.model_validate_json(await request.body())
        if req.template_id not in self.templates:
            return _error(404, f"template '{req.template_id}' not found")
        if req.snapshot_id is not None:
            self.calls.append(("create_from", req.snapshot_id))
            if req.snapshot_id not in self.snapshots:
                return _error(404, f"snapshot {req.snapshot_id} not found on this node")
        if self.refuse or len(self.sandboxes) >= self.max_sandboxes:
            return _error(503, f"node {self.node_id} is full")
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        status = SandboxStatus(
            sandbox_id=req.sandbox_id,
            template_id=req.template_id,
            state="running",
            started_at=datetime.now(UTC),
            init_pid=4242,
        )
        self.sandboxes[req.sandbox_id] = status
        self.requests[req.sandbox_id] = req
        body: dict[str, Any] = status.model_dump(mode="json")
        return JSONResponse(body, status_code=201)

    async def _kill(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        sandbox_id = request.path_params["sandbox_id"]
        self.calls.append(("kill", sandbox_id))
        running = self.sandboxes.pop(sandbox_id, None)
        checkpoint = self.paused.pop(sandbox_id, None)
        if running is None and checkpoint is None:
            return _error(404, f"sandbox {sandbox_id} not found on this node")
        self.killed.append(sandbox_id)
        return Response(status_code=204)

    async def _pause(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        sandbox_id = request.path_params["sandbox_id"]
        req = PauseRequest.model_validate_json(await request.body())
        self.calls.append(("pause", sandbox_id))
        if sandbox_id not in self.sandboxes:
            return _error(404, f"sandbox {sandbox_id} not running on this node")
        if self.pause_delay:
            await asyncio.sleep(self.pause_delay)
        if self.fail_pause:
            return _error(500, "checkpoint failed: criu said no")
        if self.sandboxes.pop(sandbox_id, None) is None:  # killed while checkpointing
            return _error(404, f"sandbox {sandbox_id} not running on this node")
        held = self._checkpoint(sandbox_id, sandbox_id, req.memory)
        self.paused[sandbox_id] = held
        return JSONResponse(held.model_dump(mode="json"))

    async def _resume(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        sandbox_id = request.path_params["sandbox_id"]
        req = ResumeRequest.model_validate_json(await request.body())
        self.calls.append(("resume", sandbox_id))
        self.resume_requests.append(req)
        if sandbox_id not in self.paused:
            return _error(404, f"sandbox {sandbox_id} is not paused on this node")
        if self.resume_delay:
            await asyncio.sleep(self.resume_delay)
        if self.fail_resume:
            return _error(500, "restore failed: criu said no")
        held = self.paused.pop(sandbox_id)
        status = SandboxStatus(
            sandbox_id=sandbox_id,
            template_id=held.template_id,
            state="running",
            started_at=datetime.now(UTC),
            init_pid=4343,
            cpu_count=held.cpu_count,
            memory_mb=held.memory_mb,
            disk_mb=held.disk_mb,
        )
        self.sandboxes[sandbox_id] = status
        return JSONResponse(status.model_dump(mode="json"), status_code=201)

    async def _snapshot(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        sandbox_id = request.path_params["sandbox_id"]
        req = SnapshotRequest.model_validate_json(await request.body())
        self.calls.append(("snapshot", sandbox_id))
        if sandbox_id not in self.sandboxes:
            return _error(404, f"sandbox {sandbox_id} not running on this node")
        if self.snapshot_delay:
            await asyncio.sleep(self.snapshot_delay)
        if self.fail_snapshot:
            return _error(500, "snapshot failed: criu said no")
        held = self._checkpoint(req.snapshot_id, sandbox_id, req.memory)
        self.snapshots[req.snapshot_id] = held
        return JSONResponse(held.model_dump(mode="json"), status_code=201)

    async def _drop(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        snapshot_id = request.path_params["snapshot_id"]
        self.calls.append(("delete_snapshot", snapshot_id))
        if self.snapshots.pop(snapshot_id, None) is None:
            return _error(404, f"snapshot {snapshot_id} not found on this node")
        return Response(status_code=204)

    async def _checkpoints(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        held = [*self.paused.values(), *self.snapshots.values()]
        return JSONResponse([h.model_dump(mode="json") for h in held])

    async def _metrics(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        sandbox_id = request.path_params["sandbox_id"]
        if sandbox_id not in self.sandboxes:
            return _error(404, f"sandbox {sandbox_id} not found on this node")
        self.metric_queries.append(dict(request.query_params))
        start = int(request.query_params.get("start", 0))
        end = int(request.query_params.get("end", 2**62))
        found = [s for s in self.samples.get(sandbox_id, []) if start <= int(s.timestamp) <= end]
        return JSONResponse([s.model_dump(mode="json") for s in found])

    async def _latest_metrics(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid node token")
        ids = request.query_params.get("sandbox_ids", "").split(",")
        latest = {
            i: self.samples[i][-1] for i in ids if i in self.sandboxes and self.samples.get(i)
        }
        return JSONResponse({i: s.model_dump(mode="json") for i, s in latest.items()})


__all__ = ["FakeNode"]
