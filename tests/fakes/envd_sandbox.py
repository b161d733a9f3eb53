"""An in-memory :class:`shoal.envd.sandbox.SandboxDirectory` of host-backed sandboxes.

Each :class:`FakeSandbox` runs its processes on the host through
:class:`fakes.spawner.FakeSpawner`; its "passwd" is a dict of users whose homes are host
directories (tests pass a tmp dir).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fakes.spawner import FakeSpawner
from shoal.envd.sandbox import User


def current_user(home: str, name: str = "user") -> User:
    """A sandbox user that is really the test's own uid, living in ``home``."""
    return User(name=name, uid=os.getuid(), gid=os.getgid(), home=home)


@dataclass
class FakeSandbox:
    sandbox_id: str
    home: str
    access_token: str | None = None
    default_user: str = "user"
    default_workdir: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    spawner: FakeSpawner = field(default_factory=FakeSpawner)
    rootfs: Path = Path("/")
    users: dict[str, User] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.users:
            self.users = {"user": current_user(self.home)}

    def lookup_user(self, name: str) -> User | None:
        return self.users.get(name)


@dataclass
class FakeDirectory:
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)

    def get(self, sandbox_id: str) -> FakeSandbox | None:
        return self.sandboxes.get(sandbox_id)

    def add(self, sandbox: FakeSandbox) -> FakeSandbox:
        self.sandboxes[sandbox.sandbox_id] = sandbox
        return sandbox
