"""Client of the node protocol (``/node/v1`` on every node agent).

The one place where HTTP answers and transport failures of a node become
``shoal.errors`` exceptions, so the API's service layer only ever sees domain errors.

    >>> client = NodeClient("http://10.0.0.5:3002", token="s3cret")
    >>> client = NodeClient.for_app(agent_app, token="s3cret")   # in-process (``shoal serve``)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from shoal import errors
from shoal.wire.node.models import (
    NODE_TOKEN_HEADER,
    PREFIX,
    CheckpointStatus,
    CreateSandboxRequest,
    MetricSample,
    NodeInfo,
    PauseRequest,
    ResumeRequest,
    SandboxStatus,
    SnapshotRequest,
)


class NodeUnreachable(errors.ShoalError):
    """The node agent could not be reached or answered garbage (not a refusal)."""

    status, code = 503, "unavailable"


_STATUS_ERRORS: dict[int, type[errors.ShoalError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.AlreadyExists,
    429: errors.RateLimited,
    502: errors.SandboxGone,
    503: errors.CapacityExhausted,
    504: errors.Timeout,
    507: errors.NoSpace,
}

_M = TypeVar("_M", NodeInfo, SandboxStatus, CheckpointStatus)

_STATUS_LIST = TypeAdapter(list[SandboxStatus])
_SAMPLE_LIST = TypeAdapter(list[MetricSample])
_LATEST_SAMPLES = TypeAdapter(dict[str, MetricSample])

DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=120.0)
"""Create answers only once envd can serve, so reads wait long; connects do not."""


def error_from_response(response: httpx.Response) -> errors.ShoalError:
    """The ``shoal.errors`` exception a node's error answer stands for."""
    message = f"node answered {response.status_code}"
    error_code: str | None = None
    try:
        body: Any = response.json()
        if isinstance(body, dict):
            message = str(body.get("message") or message)
            raw_code = body.get("error_code")
            error_code = str(raw_code) if raw_code else None
    except ValueError:
        if response.text:
            message = f"{message}: {response.text[:200]}"
    cls = _STATUS_ERRORS.get(response.status_code)
    if cls is None:
        cls = errors.RuntimeFailure if response.status_code >= 500 else errors.InvalidArgument
    return cls(message, error_code=error_code)


CHECKPOINT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
CheckpointKind = Literal["paused", "snapshots"]
"""Pauses, resumes and snapshots of big sandboxes take seconds."""


class NodeClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        headers = {NODE_TOKEN_HEADER: token} if token else {}
        self.base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + PREFIX,
            headers=headers,
            transport=transport,
            timeout=timeout,
        )

    @classmethod
    def for_app(cls, app: Any, *, token: str | None = None) -> NodeClient:
        """A client of an agent ASGI app in this process (same protocol, no socket)."""
        transport = httpx.ASGITransport(app=app)
        return cls("http://node.inproc", token=token, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise NodeUnreachable(f"node {self.base_url} timed out") from exc
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"node {self.base_url} unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    async def info(self) -> NodeInfo:
        response = await self._request("GET", "/info")
        return _parse(NodeInfo, response)

    async def create_sandbox(self, request: CreateSandboxRequest) -> SandboxStatus:
        response = await self._request("POST", "/sandboxes", json=request.model_dump(mode="json"))
        return _parse(SandboxStatus, response)

    async def pause_sandbox(self, sandbox_id: str, *, memory: bool = True) -> CheckpointStatus:
        """Checkpoint a running sandbox and release it (``errors.NotFound`` if the node
        does not run it). On failure the sandbox keeps running."""
        response = await self._request(
            "POST", f"/sandboxes/{sandbox_id}/pause",
            json=PauseRequest(memory=memory).model_dump(mode="json"), timeout=CHECKPOINT_TIMEOUT,
        )
        return _parse(CheckpointStatus, response)

    async def resume_sandbox(self, sandbox_id: str, request: ResumeRequest) -> SandboxStatus:
        """Bring a paused sandbox back (``errors.NotFound`` if the node holds no checkpoint
        of it). On failure the checkpoint stays, so the resume can be tried again."""
        response = await self._request(
            "POST", f"/sandboxes/{sandbox_id}/resume",
            json=request.model_dump(mode="json"), timeout=CHECKPOINT_TIMEOUT,
        )
        return _parse(SandboxStatus, response)

    async def snapshot_sandbox(self, sandbox_id: str, request: SnapshotRequest) -> CheckpointStatus:
        """Checkpoint a running sandbox that keeps running."""
        response = await self._request(
            "POST", f"/sandboxes/{sandbox_id}/snapshots",
            json=request.model_dump(mode="json"), timeout=CHECKPOINT_TIMEOUT,
        )
        return _parse(CheckpointStatus, response)

    async def move_checkpoint(
        self, to: NodeClient, kind: CheckpointKind, checkpoint_id: str
    ) -> CheckpointStatus:
        """Copy a checkpoint (``paused`` sandbox or ``snapshots``) this node holds to node
        ``to``, streamed through this process; the caller removes the original."""
        url = f"/checkpoints/{kind}/{checkpoint_id}/archive"
        try:
            async with self._http.stream("GET", url, timeout=CHECKPOINT_TIMEOUT) as src:
                if src.status_code >= 400:
                    await src.aread()
                    raise error_from_response(src)
                response = await to._request(
                    "PUT", url, content=src.aiter_raw(), timeout=CHECKPOINT_TIMEOUT,
                    headers={"Content-Type": "application/x-tar"},
                )
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"moving checkpoint {checkpoint_id} failed: {exc}") from exc
        return _parse(CheckpointStatus, response)

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        """True if the node removed it, False if it does not hold it."""
        try:
            await self._request("DELETE", f"/snapshots/{snapshot_id}")
        except errors.NotFound:
            return False
        return True

    async def kill_sandbox(self, sandbox_id: str) -> bool:
        """True if the node killed it (or removed its checkpoint, if paused), False if the
        node has neither."""
        try:
            await self._request("DELETE", f"/sandboxes/{sandbox_id}")
        except errors.NotFound:
            return False
        return True

    async def list_sandboxes(self) -> list[SandboxStatus]:
        response = await self._request("GET", "/sandboxes")
        try:
            return _STATUS_LIST.validate_json(response.content)
        except ValidationError as exc:
            raise NodeUnreachable(f"node {self.base_url} sent a malformed sandbox list") from exc

    async def sandbox_metrics(
        self, sandbox_id: str, start: int | None = None, end: int | None = None
    ) -> list[MetricSample]:
        """The samples of a sandbox whose whole second is in ``[start, end]`` (Unix seconds,
        None = open), oldest first. ``errors.NotFound`` if the node does not have it."""
        params = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        response = await self._request("GET", f"/sandboxes/{sandbox_id}/metrics", params=params)
        try:
            return _SAMPLE_LIST.validate_json(response.content)
        except ValidationError as exc:
            raise NodeUnreachable(f"node {self.base_url} sent malformed metrics") from exc

    async def latest_metrics(self, sandbox_ids: list[str]) -> dict[str, MetricSample]:
        """The newest sample of each of ``sandbox_ids`` the node has one for."""
        params = {"sandbox_ids": ",".join(sandbox_ids)}
        response = await self._request("GET", "/metrics", params=params)
        try:
            return _LATEST_SAMPLES.validate_json(response.content)
        except ValidationError as exc:
            raise NodeUnreachable(f"node {self.base_url} sent malformed metrics") from exc


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise NodeUnreachable(f"node sent a malformed {model.__name__}") from exc


__all__ = ["DEFAULT_TIMEOUT", "NodeClient", "NodeUnreachable", "error_from_response"]
