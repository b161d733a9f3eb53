"""First start: a default team and its API key.

The key is kept in ``<data_dir>/api-key`` (mode 0600) so ``shoal serve`` can print it
at every start while the store holds only its hash. ``Settings.api_key`` wins when set.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from shoal.api.auth import hash_key
from shoal.config import Settings
from shoal.ids import new_api_key
from shoal.store.base import ApiKey, Store, Team

log = logging.getLogger(__name__)

DEFAULT_TEAM_ID = "default"
KEY_FILE = "api-key"


def _read_or_create_key_file(path: Path) -> str:
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_api_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


async def bootstrap(settings: Settings, store: Store, *, now: datetime | None = None) -> str:
    """Ensure the default team and its key exist; return the key. Idempotent."""
    now = now or datetime.now(UTC)
    team_ids = {t.team_id for t in await store.list_teams()}
    if DEFAULT_TEAM_ID not in team_ids:
        await store.create_team(Team(team_id=DEFAULT_TEAM_ID, name="default", created_at=now))
        log.info("created the default team")
    key = settings.api_key or _read_or_create_key_file(settings.data_dir / KEY_FILE)
    await store.add_api_key(
        ApiKey(key_hash=hash_key(key), team_id=DEFAULT_TEAM_ID, created_at=now, prefix=key[:8])
    )
    return key


__all__ = ["DEFAULT_TEAM_ID", "KEY_FILE", "bootstrap"]
