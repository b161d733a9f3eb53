"""A thin asyncio wrapper over the ``crun`` binary (Debian's package).

Each node agent keeps its own crun state directory (``--root``), so two agents on one
machine never see each other's containers and an agent's restart finds exactly its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from typing import Any

from shoal.errors import RuntimeFailure


@dataclass(frozen=True)
class ContainerState:
    id: str
    pid: int
    status: str
    bundle: str


class Crun:
    def __init__(self, state_root: str, binary: str | None = None) -> None:
        found = binary or shutil.which("crun")
        if not found:
            raise RuntimeFailure("crun is not installed (run scripts/setup)")
        self.binary = found
        self.state_root = state_root

    async def _run(self, *args: str, check: bool = True) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--root",
            self.state_root,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        rc = proc.returncode or 0
        if check and rc != 0:
            raise RuntimeFailure(f"crun {args[0]} failed: {err.decode(errors='replace').strip()}")
        return rc, out, err

    async def run_detached(
        self, container_id: str, bundle: str, pid_file: str, log_file: str
    ) -> int:
        """Start the container in the background and return its init's host pid.

        The container inherits crun's stdio, so it must not be a pipe we wait on: stdout
        goes to /dev/null and stderr to ``log_file`` (crun's own errors land there too).
        """
        with open(log_file, "ab") as log:  # noqa: ASYNC230 (local file, create path)
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                "--root",
                self.state_root,
                "run",
                "--detach",
                "--pid-file",
                pid_file,
                "--bundle",
                bundle,
                container_id,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
            rc = await proc.wait()
        if rc != 0:
            with open(log_file, "rb") as f:  # noqa: ASYNC230
                tail = f.read()[-2000:].decode(errors="replace").strip()
            raise RuntimeFailure(f"crun run failed: {tail}")
        with open(pid_file) as f:  # noqa: ASYNC230
            return int(f.read().strip())

    async def state(self, container_id: str) -> ContainerState | None:
        rc, out, _ = await self._run("state", container_id, check=False)
        if rc != 0:
            return None
        return _parse_state(json.loads(out))

    async def kill(self, container_id: str, signal: str = "KILL") -> None:
        await self._run("kill", "--all", container_id, signal, check=False)

    async def delete(self, container_id: str) -> None:
        await self._run("delete", "--force", container_id, check=False)

    async def list(self) -> list[ContainerState]:
        rc, out, _ = await self._run("list", "--format", "json", check=False)
        if rc != 0 or not out.strip():
            return []
        return [_parse_state(item) for item in json.loads(out) or []]


def _parse_state(data: dict[str, Any]) -> ContainerState:
    return ContainerState(
        id=data["id"],
        pid=int(data.get("pid") or 0),
        status=data["status"],
        bundle=data.get("bundle", ""),
    )
