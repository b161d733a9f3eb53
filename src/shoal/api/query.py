"""Parsing of list filters and page tokens (``GET /v2/sandboxes``, ``GET /sandboxes``)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import unquote, unquote_plus

from shoal.errors import InvalidArgument
from shoal.store.base import Cursor, SandboxState
from shoal.store.sql import from_us, to_us

LISTABLE_STATES = {"running": SandboxState.RUNNING, "paused": SandboxState.PAUSED}
MAX_LIMIT = 100


def parse_metadata_filter(raw: str | None) -> dict[str, str]:
    """Decode the SDKs' metadata filter.

    Both SDKs percent-encode each key and value, join them as ``k=v&k2=v2`` with a
    form encoder (which encodes the ``%`` again) and send that as one query parameter.
    So after the framework's decoding: unescape once more, split on ``&`` and ``=``,
    and unescape each key and value.
    """
    if not raw:
        return {}
    result: dict[str, str] = {}
    for pair in unquote_plus(raw).split("&"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid metadata filter {pair!r}: expected key=value")
        result[unquote(key)] = unquote(value)
    return result


def parse_states(raw: Iterable[str] | None) -> frozenset[SandboxState]:
    """``state`` may be comma-separated, repeated, or both; default: running and paused."""
    names = [s.strip() for item in raw or () for s in item.split(",") if s.strip()]
    if not names:
        return frozenset(LISTABLE_STATES.values())
    unknown = [n for n in names if n not in LISTABLE_STATES]
    if unknown:
        raise InvalidArgument(f"invalid state {unknown[0]!r}: expected running or paused")
    return frozenset(LISTABLE_STATES[n] for n in names)


def parse_timestamp(raw: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError as exc:
        raise InvalidArgument(f"invalid {name} {raw!r}: expected an RFC 3339 timestamp") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_limit(raw: int | None) -> int:
    if raw is None:
        return MAX_LIMIT
    if not 1 <= raw <= MAX_LIMIT:
        raise InvalidArgument(f"invalid limit {raw}: must be between 1 and {MAX_LIMIT}")
    return raw


def parse_order(raw: str | None) -> str:
    if raw is None or raw == "":
        return "desc"
    if raw not in ("asc", "desc"):
        raise InvalidArgument(f"invalid order {raw!r}: expected asc or desc")
    return raw


def encode_token(cursor: Cursor) -> str:
    payload = json.dumps([to_us(cursor.started_at), cursor.sandbox_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str) -> Cursor:
    try:
        padded = token + "=" * (-len(token) % 4)
        started_us, sandbox_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(started_us, int) or not isinstance(sandbox_id, str):
            raise ValueError(token)
        return Cursor(started_at=from_us(started_us), sandbox_id=sandbox_id)
    except (ValueError, TypeError, binascii.Error, OverflowError, OSError) as exc:
        raise InvalidArgument(
            "invalid nextToken: pass the X-Next-Token of a previous page"
        ) from exc


__all__ = [
    "LISTABLE_STATES",
    "MAX_LIMIT",
    "decode_token",
    "encode_token",
    "parse_limit",
    "parse_metadata_filter",
    "parse_order",
    "parse_states",
    "parse_timestamp",
]
