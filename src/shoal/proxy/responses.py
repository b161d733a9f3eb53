"""The data plane's own answers, in the exact shapes the SDKs match on (§3)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def sandbox_not_found(send: Send, sandbox_id: str) -> None:
    """The phrase "was not found" is what the SDKs turn into "sandbox not running"."""
    await send_json(
        send, 502, {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}
    )


async def port_not_open(send: Send, sandbox_id: str, port: int) -> None:
    await send_json(
        send,
        502,
        {
            "sandboxId": sandbox_id,
            "port": port,
            "message": "The sandbox is running but port is not open",
            "code": 502,
        },
    )
