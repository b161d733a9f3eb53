"""One running sandbox as the node agent holds it (and as envd sees it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shoal.agent.users import lookup_user
from shoal.envd.sandbox import User
from shoal.errors import SandboxGone
from shoal.runtime.container import Container
from shoal.runtime.netns import connect_tcp_in_netns
from shoal.runtime.process import ProcessSpawner, SpawnError, SpawnRequest
from shoal.runtime.rootfs import RootFS

log = logging.getLogger(__name__)

SERVICE_METADATA = json.dumps({"shoal": "start_cmd", "v": 1}).encode()
"""Kept by init with the start command's process: how a restarted agent recognises it
(envd lists only processes whose metadata it wrote itself, so this one stays unlisted)."""
SERVICE_LOG_BYTES = 16 * 1024
RESTART_MIN_DELAY = 0.1
RESTART_MAX_DELAY = 10.0
STABLE_AFTER = 30.0
"""A start command that ran this long before dying is restarted without backoff."""


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
    hostname: str | None = None
    service: SandboxService | None = None
    """The template's start command, when it has one."""
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


@dataclass(frozen=True)
class ServiceSpec:
    """The template's ``start_cmd`` as it runs in one sandbox (kept in ``sandbox.json``)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    ready_port: int | None

    def request(self) -> SpawnRequest:
        return SpawnRequest(
            list(self.argv), dict(self.env), self.cwd, self.uid, self.gid, list(self.groups)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.argv, "env": self.env, "cwd": self.cwd, "uid": self.uid,
            "gid": self.gid, "groups": self.groups, "ready_port": self.ready_port,
        }

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> ServiceSpec:
        return cls(
            argv=[str(a) for a in rec["argv"]],
            env={str(k): str(v) for k, v in rec["env"].items()},
            cwd=str(rec["cwd"]),
            uid=int(rec["uid"]),
            gid=int(rec["gid"]),
            groups=[int(g) for g in rec.get("groups", [])],
            ready_port=None if rec.get("ready_port") is None else int(rec["ready_port"]),
        )


class _Drain(asyncio.Protocol):
    def __init__(self, ring: deque[bytes]) -> None:
        self.ring = ring

    def data_received(self, data: bytes) -> None:
        self.ring.append(data[-SERVICE_LOG_BYTES:])
        total = sum(len(c) for c in self.ring)
        while total > SERVICE_LOG_BYTES and len(self.ring) > 1:
            total -= len(self.ring.popleft())


class SandboxService:
    """The template's start command, supervised: started through the sandbox's init (so it
    outlives the agent, and envd does not list it), its output drained into a small ring,
    restarted with a bounded backoff when it dies, gone with the sandbox."""

    def __init__(self, sandbox_id: str, spawner: Any, spec: ServiceSpec) -> None:
        self.sandbox_id = sandbox_id
        self.spec = spec
        self._spawner = spawner
        self._ring: deque[bytes] = deque()
        self._transports: list[asyncio.BaseTransport] = []
        self._task: asyncio.Task[None] | None = None
        self.pid: int | None = None
        self.starts = 0

    def start(self, adopted: Any = None) -> None:
        """Supervise; ``adopted`` is a handle on an instance a previous agent started."""
        self._task = asyncio.get_running_loop().create_task(self._supervise(adopted))

    def output_tail(self, limit: int = 2000) -> str:
        return b"".join(self._ring)[-limit:].decode("utf-8", "replace")

    async def _supervise(self, proc: Any) -> None:
        delay = RESTART_MIN_DELAY
        while True:
            if proc is None:
                try:
                    proc = await self._spawner.spawn(self.spec.request(), metadata=SERVICE_METADATA)
                except SandboxGone:
                    return
                except SpawnError as exc:
                    log.warning("sandbox %s: start command failed: %s", self.sandbox_id, exc)
                    self._ring.append(f"[shoal] cannot start: {exc}\n".encode())
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_MAX_DELAY)
                    continue
                self.starts += 1
            self.pid = proc.pid
            began = time.monotonic()
            await self._follow(proc)
            try:
                status = await proc.wait()
            except SandboxGone:
                return
            finally:
                self._close_transports()
            self.pid = None
            proc = None
            log.warning(
                "sandbox %s: start command exited (%s); restarting. Output: %s",
                self.sandbox_id, status, self.output_tail(500),
            )
            if time.monotonic() - began > STABLE_AFTER:
                delay = RESTART_MIN_DELAY
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def _follow(self, proc: Any) -> None:
        # Take the fds out of the handle: the spawner hands the same handle to envd's
        # adoption, which closes the fds of processes that are not its own.
        fds = [fd for fd in (proc.stdout, proc.stderr, proc.pty) if fd is not None]
        proc.stdout = proc.stderr = proc.pty = proc.stdin = None
        loop = asyncio.get_running_loop()
        for fd in fds:
            try:
                pipe = os.fdopen(fd, "rb", buffering=0)
            except OSError:
                with contextlib.suppress(OSError):
                    os.close(fd)
                continue
            try:
                transport, _ = await loop.connect_read_pipe(lambda: _Drain(self._ring), pipe)
            except (OSError, ValueError):
                pipe.close()
                continue
            self._transports.append(transport)

    def _close_transports(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    async def close(self) -> None:
        """Stop supervising and release the fds (the process dies with the sandbox)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._close_transports()

    async def wait_ready(self, netns_path: str, within: float) -> bool:
        """Poll ``GET /health`` on the ready port inside the sandbox until it answers 200
        (False after ``within`` seconds)."""
        port = self.spec.ready_port
        if port is None:
            return True
        deadline = time.monotonic() + within
        delay = 0.005
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                return False
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                if await asyncio.wait_for(_health(netns_path, port), 2.0):
                    return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return False


async def _health(netns_path: str, port: int) -> bool:
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return await status_of(netns_path, port, request) == b"200"


async def status_of(netns_path: str, port: int, request: bytes) -> bytes:
    """Send one HTTP/1.1 ``request`` to ``127.0.0.1:port`` inside the netns; the status code
    of the answer (b"" if none came)."""
    sock = await connect_tcp_in_netns(netns_path, "127.0.0.1", port)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, request)
        head = b""
        while b"\r\n" not in head and len(head) < 1024:
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                break
            head += chunk
        parts = head.split(b" ", 2)
        return parts[1] if len(parts) >= 2 else b""
    finally:
        sock.close()
