"""The node protocol: what the control plane and a node agent say to each other.

JSON over HTTP, served by every node agent under ``/node/v1`` (see
``docs/ARCHITECTURE.md`` § Node protocol). Requests carry ``X-Shoal-Node-Token``.
"""

from shoal.wire.node.models import (
    CheckpointStatus,
    CreateSandboxRequest,
    Heartbeat,
    MetricSample,
    NodeInfo,
    NodeResources,
    PauseRequest,
    ResumeRequest,
    SandboxStatus,
    SnapshotRequest,
)

__all__ = [
    "CheckpointStatus",
    "CreateSandboxRequest",
    "Heartbeat",
    "MetricSample",
    "NodeInfo",
    "NodeResources",
    "PauseRequest",
    "ResumeRequest",
    "SandboxStatus",
    "SnapshotRequest",
]
