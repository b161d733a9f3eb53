"""Pydantic models of E2B's control-plane REST shapes (wire only, no logic).

Names follow the wire: camelCase with a capitalised ``ID`` and the one snake_case
field ``allow_internet_access``. Request models ignore unknown fields (newer SDKs add
fields); responses are dumped with :func:`to_wire`, which drops unset optionals
because the Python SDK treats a present ``null`` and an absent field differently for
some fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    always: ClassVar[frozenset[str]] = frozenset()
    """Wire names kept even when ``None`` (optional in the spec but sent as ``null``)."""


def to_wire(model: _Response) -> dict[str, Any]:
    """The JSON body of a response model: aliases, and no ``None`` unless listed in ``always``."""
    full = model.model_dump(mode="json", by_alias=True)
    return {k: v for k, v in full.items() if v is not None or k in model.always}


class AutoResume(_Request):
    enabled: bool = False


class NewSandbox(_Request):
    """Body of ``POST /v2/sandboxes`` and of the v1 ``POST /sandboxes`` (which adds ``secure``)."""

    template_id: str = Field(alias="templateID", min_length=1)
    timeout: int | None = None
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = Field(default=None, alias="envVars")
    auto_pause: bool = Field(default=False, alias="autoPause")
    auto_pause_memory: bool | None = Field(default=None, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(default=None, alias="autoResume")
    allow_internet_access: bool | None = None
    network: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None
    secure: bool | None = None
    """v1 only; Shoal issues an access token either way."""


class ConnectSandbox(_Request):
    """Body of ``POST /v2/sandboxes/{id}/connect`` (v1 requires ``timeout``)."""

    timeout: int | None = None
    memory: bool | None = None


class ConnectSandboxV1(_Request):
    timeout: int
    memory: bool | None = None


class ResumeSandbox(_Request):
    """Body of the legacy ``POST /sandboxes/{id}/resume`` (early 2.x SDKs)."""

    timeout: int | None = None
    auto_pause: bool | None = Field(default=None, alias="autoPause")


class PauseSandbox(_Request):
    """Body of ``POST /sandboxes/{id}/pause`` (the Python SDK always sends one, ``{}``)."""

    memory: bool | None = None
    """False: keep the disk only (``mode="filesystem"``); None: memory too."""
    require_healthy_guest: bool | None = Field(default=None, alias="requireHealthyGuest")


class NewSnapshot(_Request):
    """Body of ``POST /sandboxes/{id}/snapshots``."""

    name: str | None = Field(default=None, max_length=255)
    memory: bool | None = None


class ForkSandbox(_Request):
    """Body of ``POST /sandboxes/{id}/fork``."""

    timeout: int | None = None
    count: int | None = None


class TimeoutRequest(_Request):
    timeout: int


class RefreshRequest(_Request):
    duration: int | None = None


class Sandbox(_Response):
    """Response of create and connect."""

    always = frozenset({"trafficAccessToken", "domain"})

    template_id: str = Field(alias="templateID")
    sandbox_id: str = Field(alias="sandboxID")
    client_id: str = Field(alias="clientID")
    envd_version: str = Field(alias="envdVersion")
    alias: str | None = None
    envd_access_token: str | None = Field(default=None, alias="envdAccessToken")
    traffic_access_token: str | None = Field(default=None, alias="trafficAccessToken")
    domain: str | None = None


SandboxState = Literal["running", "paused"]


class ListedSandbox(_Response):
    template_id: str = Field(alias="templateID")
    sandbox_id: str = Field(alias="sandboxID")
    client_id: str = Field(alias="clientID")
    started_at: datetime = Field(alias="startedAt")
    end_at: datetime = Field(alias="endAt")
    cpu_count: int = Field(alias="cpuCount")
    memory_mb: int = Field(alias="memoryMB")
    disk_size_mb: int = Field(alias="diskSizeMB")
    state: SandboxState
    envd_version: str = Field(alias="envdVersion")
    alias: str | None = None
    metadata: dict[str, str] | None = None


class SandboxLifecycle(_Response):
    auto_resume: bool = Field(default=False, alias="autoResume")
    on_timeout: Literal["kill", "pause"] = Field(default="kill", alias="onTimeout")


class SandboxDetail(ListedSandbox):
    envd_access_token: str | None = Field(default=None, alias="envdAccessToken")
    allow_internet_access: bool | None = Field(default=None, alias="allowInternetAccess")
    domain: str | None = None
    lifecycle: SandboxLifecycle = Field(default_factory=SandboxLifecycle)
    pause_mode: Literal["full", "filesystem"] | None = Field(default=None, alias="pauseMode")
    """What the latest pause kept; only while paused (absent while the pause runs)."""


class SnapshotInfo(_Response):
    """Response of ``POST /sandboxes/{id}/snapshots`` and items of ``GET /snapshots``."""

    snapshot_id: str = Field(alias="snapshotID")
    """Usable as ``templateID`` to create sandboxes from it."""
    names: list[str] = Field(default_factory=list)


class SandboxMetric(_Response):
    """One sample of ``GET /sandboxes/{id}/metrics`` (all fields required on the wire)."""

    timestamp: datetime
    timestamp_unix: int = Field(alias="timestampUnix")
    cpu_count: int = Field(alias="cpuCount")
    cpu_used_pct: float = Field(alias="cpuUsedPct")
    mem_used: int = Field(alias="memUsed")
    mem_total: int = Field(alias="memTotal")
    mem_cache: int = Field(alias="memCache")
    disk_used: int = Field(alias="diskUsed")
    disk_total: int = Field(alias="diskTotal")


class SandboxesWithMetrics(_Response):
    """``GET /sandboxes/metrics?sandbox_ids=``: the newest sample per sandbox."""

    sandboxes: dict[str, SandboxMetric]


class ErrorBody(_Response):
    code: int
    message: str
    error_code: str | None = None


class SandboxForkResult(_Response):
    """One fork: exactly one of ``sandbox`` and ``error``."""

    sandbox: Sandbox | None = None
    error: ErrorBody | None = None


__all__ = [
    "AutoResume",
    "ConnectSandbox",
    "ConnectSandboxV1",
    "ErrorBody",
    "ForkSandbox",
    "ListedSandbox",
    "NewSandbox",
    "NewSnapshot",
    "PauseSandbox",
    "RefreshRequest",
    "ResumeSandbox",
    "Sandbox",
    "SandboxDetail",
    "SandboxForkResult",
    "SandboxLifecycle",
    "SandboxMetric",
    "SandboxState",
    "SandboxesWithMetrics",
    "SnapshotInfo",
    "TimeoutRequest",
    "to_wire",
]
