"""One running sandbox as the node agent holds it (and as envd sees it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shoal.agent.users import lookup_user
from shoal.envd.sandbox import User
from shoal.runtime.container import Container
from shoal.runtime.process import ProcessSpawner
from shoal.runtime.rootfs import RootFS


@dataclass(eq=False)
class LocalSandbox:
    sandbox_id: str
    template_id: str
    access_token: str | None
    default_user: str
    default_workdir: str | None
    env_vars: dict[str, str]
    spawner: ProcessSpawner
    container: Container
    started_at: datetime
    cpu_count: int
    memory_mb: int
    disk_mb: int
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the sandbox is dead or being killed: in-flight data-plane streams abort."""

    @property
    def rootfs(self) -> Path:
        return self.container.rootfs

    @property
    def uid_base(self) -> int:
        return self.container.uid_base

    @property
    def fs(self) -> RootFS:
        return self.container.fs

    @property
    def netns_path(self) -> str:
        return self.container.netns_path

    def lookup_user(self, name: str) -> User | None:
        return lookup_user(self.container.fs, name)
