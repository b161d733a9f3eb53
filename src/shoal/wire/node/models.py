"""Pydantic models of the node protocol (wire only, no logic)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

NODE_TOKEN_HEADER = "X-Shoal-Node-Token"
PREFIX = "/node/v1"
DEFAULT_CPU_COUNT = 2
"""A sandbox's vCPUs when neither the request nor its template says."""
DEFAULT_MEMORY_MB = 512
"""A sandbox's memory limit when neither the request nor its template says."""


class NodeResources(BaseModel):
    cpu_count: int
    memory_mb: int
    disk_mb: int
    sandboxes: int = 0


class NodeInfo(BaseModel):
    """``GET /node/v1/info`` and the body of every heartbeat."""

    node_id: str
    address: str
    """Base URL the control plane and proxy use to reach this agent (``inproc://`` in serve)."""
    region: str = "local"
    cost: float = 1.0
    draining: bool = False
    capacity: NodeResources
    allocated: NodeResources
    templates: list[str] = Field(default_factory=list)


class CreateSandboxRequest(BaseModel):
    """``POST /node/v1/sandboxes``: answered 201 only once envd can serve the sandbox."""

    sandbox_id: str
    template_id: str
    cpu_count: int | None = None
    """vCPUs; None: the template's default (else the node's)."""
    memory_mb: int | None = None
    """Memory limit; None: the template's default (else the node's)."""
    disk_mb: int
    access_token: str | None
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Sandbox-level variables, ``E2B_SANDBOX*`` included."""
    hostname: str | None = None
    snapshot_id: str | None = None
    """Start from this snapshot (held by this node) instead of the template: a copy of the
    snapshotted sandbox's disk, and of its processes and memory if the snapshot kept them."""


class SandboxStatus(BaseModel):
    sandbox_id: str
    template_id: str
    state: str
    """``running`` (more states come with pause)."""
    started_at: datetime
    init_pid: int = 0
    """Host pid of the sandbox's pid 1 (diagnostics)."""
    cpu_count: int | None = None
    """The sandbox's actual limits (None from nodes that predate reporting them)."""
    memory_mb: int | None = None
    disk_mb: int | None = None


class PauseRequest(BaseModel):
    """``POST /node/v1/sandboxes/{id}/pause``."""

    memory: bool = True
    """False: keep the disk only; the sandbox boots again on resume (a new boot id)."""


class ResumeRequest(BaseModel):
    """``POST /node/v1/sandboxes/{id}/resume``: 201 ``SandboxStatus`` once envd can serve."""

    memory: bool = True
    """False: boot from the kept disk even if memory was kept (``on_resume="reboot"``)."""
    access_token: str | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Used when the sandbox boots again (filesystem-only); a memory resume keeps its own."""


class SnapshotRequest(BaseModel):
    """``POST /node/v1/sandboxes/{id}/snapshots``: the sandbox keeps running."""

    snapshot_id: str
    """Letters, digits and ``_.:-``, at most 128, not starting with ``.`` or ``-``."""
    memory: bool = True


class CheckpointStatus(BaseModel):
    """A paused sandbox or a snapshot, as the node that holds it sees it."""

    checkpoint_id: str
    """The sandbox id (a paused sandbox) or the snapshot id."""
    sandbox_id: str
    """The sandbox it was taken from."""
    template_id: str
    memory: bool
    """Processes and memory kept (else the disk only)."""
    size_bytes: int
    """Disk space the checkpoint occupies on the node."""
    created_at: datetime
    cpu_count: int
    memory_mb: int
    disk_mb: int


class MetricSample(BaseModel):
    """One sample of a sandbox's usage: ``GET /node/v1/sandboxes/{id}/metrics``."""

    timestamp: float
    """Unix time of the sample, in seconds."""
    cpu_count: int
    cpu_used_pct: float
    """CPU used since the previous sample, in percent of ``cpu_count`` CPUs (0-100)."""
    mem_used: int
    """Bytes; memory other than page cache."""
    mem_total: int
    """Bytes; the sandbox's memory limit."""
    mem_cache: int
    """Bytes; page cache charged to the sandbox."""
    disk_used: int
    disk_total: int
    """Bytes, of the sandbox's own disk."""


class Heartbeat(BaseModel):
    """``POST /internal/v1/nodes/{node_id}/heartbeat`` on the control plane."""

    node: NodeInfo
    sandboxes: list[SandboxStatus]
