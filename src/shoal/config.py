"""Typed settings, read once at start-up from ``SHOAL_*`` environment variables.

Nothing else in Shoal reads the environment for its own settings: each process builds
one :class:`Settings` and passes the parts down.

    >>> s = Settings.from_env({"SHOAL_API_PORT": "4000"})
    >>> s.api_port
    4000
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

PREFIX = "SHOAL_"


class ConfigError(ValueError):
    pass


def _cast(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is Path:
            return Path(raw)
        if typ == (str | None):
            return raw or None
        return raw
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {typ}") from exc


@dataclass(frozen=True)
class Settings:
    """Every knob of a Shoal process. Field ``foo_bar`` is read from ``SHOAL_FOO_BAR``."""

    host: str = "127.0.0.1"
    """Address the API, proxy and node agent listen on."""
    api_port: int = 3000
    """Control-plane REST API port (``E2B_API_URL``)."""
    sandbox_port: int = 3001
    """Data-plane proxy port (``E2B_SANDBOX_URL``)."""
    local_agent: bool = True
    """``serve`` runs a node agent in its own process (off: control plane and proxy only,
    with stand-alone ``shoal agent`` nodes)."""
    agent_port: int = 0
    """Node agent's node-protocol port (``shoal agent``); ``serve`` runs its agent in-process."""
    data_dir: Path = Path("/var/lib/shoal")
    """Store, sandboxes' writable layers and bundles live here."""
    template_dir: Path | None = None
    """Built templates; defaults to ``<data_dir>/templates``. Shared by all agents of a machine."""
    api_key: str | None = None
    """Use this API key for the default team instead of generating one."""
    database_url: str | None = None
    """SQLAlchemy URL; defaults to SQLite at ``<data_dir>/shoal.db``."""
    domain: str = "shoal.local"
    """Domain reported to clients (``<port>-<sandbox_id>.<domain>`` for ``get_host``)."""
    node_id: str | None = None
    """This agent's node id; generated and kept in ``<data_dir>/node-id`` when unset."""
    node_token: str | None = None
    """Shared secret between the control plane and its node agents."""
    control_plane_url: str | None = None
    """Where a stand-alone ``shoal agent`` registers and heartbeats."""
    placement: str = "balanced"
    """Scheduler strategy: ``latency``, ``cost`` or ``balanced``."""
    node_cpu_count: int = 0
    """CPUs this node offers to sandboxes; 0 = all online CPUs."""
    node_memory_mb: int = 0
    """Memory this node offers to sandboxes; 0 = 90% of physical memory."""
    cpu_overcommit: float = 500.0
    """Scheduler: a sandbox's ``cpuCount`` is a ceiling (cgroup quota), not a reservation, and
    sandboxes mostly idle; place up to this many vCPUs per physical CPU."""
    memory_overcommit: float = 32.0
    """Scheduler: memory limits are ceilings, not reservations; place this multiple of a
    node's memory. Each sandbox's own cgroup limit still holds."""
    node_region: str = "local"
    node_cost: float = 1.0
    """Relative price of this node's capacity (cost-first placement)."""
    uid_base: int = 100000
    """Host uid/gid that root inside a sandbox maps to (65536 ids from there)."""
    criu_path: Path = Path("/opt/shoal/criu/bin/criu")
    """CRIU >= 4.1 for sandbox checkpoints; ``scripts/criu`` (run by ``scripts/setup``)
    installs it here on Debian 12 and 13 alike."""
    max_sandboxes_per_node: int = 2000
    warm_pool: int = 4
    """Warm containers a node keeps per template shape (template, cpu, memory, disk), laid
    out and created ahead so a create only starts one; 0 disables the pool."""
    primed_pool: int = 2
    """Sandboxes a node keeps started per shape of templates with a start command (the
    code interpreter), their start command already answering, so a create does not wait
    for it (agent/primed.py); 0 disables it."""
    heartbeat_interval: float = 2.0
    metrics_interval: float = 5.0
    """Seconds between two samples of each sandbox's cpu, memory and disk (``get_metrics``);
    E2B's resolution is 5 s, so keep it at most that."""
    metrics_retention: float = 3600.0
    """Seconds of samples a node keeps per sandbox (while the sandbox lives)."""
    node_dead_after: float = 10.0
    default_timeout: int = 300
    max_timeout: int = 24 * 3600
    log_level: str = "info"

    @property
    def templates_path(self) -> Path:
        return self.template_dir or self.data_dir / "templates"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'shoal.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            typ = hints[f.name]
            if typ == (Path | None):
                typ = Path
            values[f.name] = _cast(f.name, raw, typ)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


__all__ = ["ConfigError", "Settings", "field"]
