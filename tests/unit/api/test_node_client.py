"""The node client turns node answers and transport failures into shoal.errors."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from shoal import errors
from shoal.client.node import NodeClient, NodeUnreachable
from shoal.wire.node.models import CreateSandboxRequest


def client_answering(
    status: int, body: object = None, *, seen: list[httpx.Request] | None = None
) -> NodeClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)

    return NodeClient("http://node.test", token="tok", transport=httpx.MockTransport(handler))


REQ = CreateSandboxRequest(
    sandbox_id="s1", template_id="base", cpu_count=2, memory_mb=512, disk_mb=1024, access_token="a"
)


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, errors.InvalidArgument),
        (401, errors.Unauthenticated),
        (404, errors.NotFound),
        (409, errors.AlreadyExists),
        (502, errors.SandboxGone),
        (503, errors.CapacityExhausted),
        (504, errors.Timeout),
        (507, errors.NoSpace),
        (500, errors.RuntimeFailure),
        (599, errors.RuntimeFailure),
    ],
)
async def test_error_statuses_map_to_errors(status: int, exc: type[errors.ShoalError]) -> None:
    client = client_answering(
        status, {"code": status, "message": "node says no", "error_code": "x"}
    )
    with pytest.raises(exc) as info:
        await client.create_sandbox(REQ)
    assert info.value.message == "node says no"
    assert info.value.error_code == "x"


async def test_non_json_error_body_keeps_status_and_text() -> None:
    with pytest.raises(errors.CapacityExhausted, match="busy"):
        await client_answering(503, b"busy").create_sandbox(REQ)


async def test_create_sends_token_and_parses_status() -> None:
    seen: list[httpx.Request] = []
    now = datetime.now(UTC).isoformat()
    body = {"sandbox_id": "s1", "template_id": "base", "state": "running", "started_at": now}
    status = await client_answering(201, body, seen=seen).create_sandbox(REQ)
    assert status.sandbox_id == "s1"
    assert seen[0].url.path == "/node/v1/sandboxes"
    assert seen[0].headers["X-Shoal-Node-Token"] == "tok"


async def test_kill_404_is_false_and_garbage_is_unreachable() -> None:
    assert await client_answering(404, {"code": 404, "message": "no"}).kill_sandbox("s") is False
    assert await client_answering(204, b"").kill_sandbox("s") is True
    with pytest.raises(NodeUnreachable):
        await client_answering(200, {"not": "a list"}).list_sandboxes()
    with pytest.raises(NodeUnreachable):
        await client_answering(200, b"<html>").info()


async def test_transport_failure_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = NodeClient("http://node.test", transport=httpx.MockTransport(refuse))
    with pytest.raises(NodeUnreachable, match="unreachable"):
        await client.info()
