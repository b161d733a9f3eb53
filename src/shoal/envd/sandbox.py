"""What envd needs to know about a sandbox; implemented by the node agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shoal.runtime.process import ProcessSpawner
from shoal.runtime.rootfs import RootFS

ENVD_VERSION = "0.6.13"
"""The envd version Shoal reports: it unlocks every client-side feature gate (§7.2)."""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    groups: list[int] = field(default_factory=list)


class EnvdSandbox(Protocol):
    @property
    def sandbox_id(self) -> str: ...

    @property
    def access_token(self) -> str | None:
        """Required as ``X-Access-Token`` on every envd request but ``/health`` (None = open)."""
        ...

    @property
    def default_user(self) -> str:
        """Run-as user when a request names none (``user`` for ``base``)."""
        ...

    @property
    def default_workdir(self) -> str | None:
        """Working directory when a request gives none (None = the user's home)."""
        ...

    @property
    def env_vars(self) -> dict[str, str]:
        """Sandbox-level variables: create ``envVars`` plus ``E2B_SANDBOX*``."""
        ...

    @property
    def spawner(self) -> ProcessSpawner: ...

    @property
    def uid_base(self) -> int:
        """Host uid (and gid) of the sandbox's root: sandbox id ``n`` is ``uid_base + n`` on
        the host, which is what files written from the host must be owned by."""
        ...

    @property
    def fs(self) -> RootFS:
        """The sandbox's root filesystem; every host-side file operation goes through it."""
        ...

    @property
    def rootfs(self) -> Path:
        """Host path of the sandbox's mounted root filesystem (read-only use by envd)."""
        ...

    def lookup_user(self, name: str) -> User | None:
        """Resolve a user name from the sandbox's own ``/etc/passwd`` and ``/etc/group``."""
        ...


class SandboxDirectory(Protocol):
    def get(self, sandbox_id: str) -> EnvdSandbox | None:
        """The running sandbox with this id on this node, or None."""
        ...
