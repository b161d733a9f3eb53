"""``X-API-KEY`` → team. Keys are stored as sha256 hashes; a key of another team is
simply a different team, so its sandboxes answer 404 rather than 403."""

from __future__ import annotations

import hashlib

from fastapi import Request

from shoal.errors import Unauthenticated
from shoal.store.base import Store

API_KEY_HEADER = "X-API-KEY"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def team_for_request(request: Request) -> str:
    """FastAPI dependency: the caller's team id, or 401."""
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        raise Unauthenticated("Missing API key: pass it in the X-API-KEY header")
    store: Store = request.app.state.store
    team_id = await store.team_for_key(hash_key(key))
    if team_id is None:
        raise Unauthenticated("Invalid API key")
    return team_id


__all__ = ["API_KEY_HEADER", "hash_key", "team_for_request"]
