"""The objects of the ``/execute`` NDJSON stream (e2b-compat.md §5.2) and their serialisation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]

KEEPALIVE: Event = {"type": "keepalive"}
END_OF_EXECUTION: Event = {"type": "end_of_execution"}


def number_of_executions(count: int) -> Event:
    return {"type": "number_of_executions", "execution_count": count}


def output(stream: str, text: str, timestamp: datetime | str | None) -> Event:
    """A ``stdout``/``stderr`` chunk; ``timestamp`` from the Jupyter header (ISO 8601)."""
    kind = "stderr" if stream == "stderr" else "stdout"
    return {"type": kind, "text": text, "timestamp": _iso(timestamp)}


def error(name: str, value: str, traceback: str | list[str] = "") -> Event:
    if not isinstance(traceback, str):
        traceback = "\n".join(traceback)
    return {"type": "error", "name": name, "value": value, "traceback": traceback}


def result(fields: dict[str, Any], *, is_main_result: bool) -> Event:
    return {"type": "result", **fields, "is_main_result": is_main_result}


def encode(event: Event) -> bytes:
    """One line: compact JSON, never empty, always ``\\n``-terminated."""
    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)
    return line.encode() + b"\n"


def _iso(ts: datetime | str | None) -> str:
    if isinstance(ts, str):
        return ts
    if ts is None:
        ts = datetime.now(UTC)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
