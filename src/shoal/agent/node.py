"""A node agent: the sandboxes of one machine, and its heartbeat to the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.agent.dataplane import DataPlane
from shoal.agent.manager import SandboxManager
from shoal.agent.metrics import HostUsageReader, MetricsSampler, manager_targets
from shoal.config import Settings
from shoal.envd.app import build_envd_app
from shoal.errors import RuntimeFailure
from shoal.ids import new_node_id
from shoal.runtime.checkpoint import Checkpointer
from shoal.runtime.container import ContainerRuntime
from shoal.runtime.initbin import ensure_built
from shoal.template.store import TemplateStore
from shoal.wire.node import Heartbeat, NodeInfo, NodeResources

log = logging.getLogger(__name__)

HeartbeatSender = Callable[[Heartbeat], Awaitable[None]]


def node_id_for(settings: Settings) -> str:
    """The node id is chosen once per data directory and kept there."""
    if settings.node_id:
        return settings.node_id
    path = settings.data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    node_id = new_node_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(node_id + "\n")
    return node_id


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def _checkpointer(runtime: ContainerRuntime, criu: Path) -> Checkpointer | None:
    """The node's CRIU, or None (pausing with memory then fails with a clear error)."""
    try:
        return Checkpointer(runtime, criu)
    except RuntimeFailure as exc:
        log.warning("%s; pause and snapshots keep the disk only", exc)
        return None


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        *,
        address: str,
        heartbeat: HeartbeatSender | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = node_id_for(settings)
        self.address = address
        self._send_heartbeat = heartbeat
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tune_kernel()
        init_binary = ensure_built(settings.data_dir / "bin")
        self.templates = TemplateStore(settings.templates_path)
        self.runtime = ContainerRuntime(
            settings.data_dir, self.node_id, init_binary, settings.uid_base
        )
        self.manager = SandboxManager(
            self.runtime,
            self.templates,
            max_sandboxes=settings.max_sandboxes_per_node,
            warm_pool=settings.warm_pool,
            primed_pool=settings.primed_pool,
            checkpointer=_checkpointer(self.runtime, settings.criu_path),
        )
        self.envd = build_envd_app(self.manager)
        self.manager.on_gone(self.envd.forget)
        # After a restart, the processes envd started in adopted sandboxes are listed,
        # followed and reported again (their init kept their output fds and metadata).
        self.manager.on_adopted(self.envd.processes.adopt_processes)
        self.dataplane = DataPlane(self.manager, self.envd)
        self.metrics = MetricsSampler(
            manager_targets(self.manager),
            HostUsageReader(self.runtime),
            interval=settings.metrics_interval,
            retention=settings.metrics_retention,
        )
        self.manager.on_gone(self.metrics.forget)
        self._metrics_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._started = False
        cpus = settings.node_cpu_count or os.cpu_count() or 1
        mem = settings.node_memory_mb or int(_memory_mb() * 0.9)
        self.capacity = NodeResources(
            cpu_count=cpus,
            memory_mb=mem,
            disk_mb=_disk_mb(settings.data_dir),
            sandboxes=settings.max_sandboxes_per_node,
        )

    def info(self) -> NodeInfo:
        running = self.manager.running()
        return NodeInfo(
            node_id=self.node_id,
            address=self.address,
            region=self.settings.node_region,
            cost=self.settings.node_cost,
            capacity=self.capacity,
            allocated=NodeResources(
                cpu_count=sum(s.cpu_count for s in running),
                memory_mb=sum(s.memory_mb for s in running),
                disk_mb=sum(s.disk_mb for s in running),
                sandboxes=len(running),
            ),
            templates=[t.template_id for t in self.templates.list()],
        )

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            node=self.info(), sandboxes=[self.manager.status(s) for s in self.manager.running()]
        )

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.manager.adopt()
        for d in (self.manager.paused, self.manager.snapshots):
            for name in await asyncio.to_thread(d.sweep):
                log.info("removed unfinished checkpoint %s", name)
        self._metrics_task = asyncio.get_running_loop().create_task(
            self.metrics.run(), name=f"shoal-metrics-{self.node_id}"
        )
        if self._send_heartbeat is not None:
            await self._beat()
            self._hb_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _beat(self) -> None:
        assert self._send_heartbeat is not None
        try:
            await self._send_heartbeat(self.heartbeat())
        except Exception as exc:
            log.warning("heartbeat from %s failed: %s", self.node_id, exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._beat()

    async def stop(self, *, kill_sandboxes: bool = False) -> None:
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
            self._metrics_task = None
        if self._hb_task is not None:
            self._hb_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hb_task
            self._hb_task = None
        if kill_sandboxes:
            await self.manager.kill_all()
        await self.manager.detach()
        try:
            await self.runtime.release_node()
        except Exception:  # shut-down goes on; leftovers are empty directories only
            log.exception("could not release node %s", self.node_id)
        self._started = False


KERNEL_MINIMUMS = {
    # envd keeps one inotify instance per sandbox with watchers (root's default is 128).
    "/proc/sys/fs/inotify/max_user_instances": 8192,
    "/proc/sys/fs/inotify/max_user_watches": 1 << 20,
}


def tune_kernel() -> None:
    """Raise the node-wide limits sandboxes share to what a full node needs (never lower)."""
    for path, minimum in KERNEL_MINIMUMS.items():
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                current = int(f.read().strip())
            if current < minimum:
                with open(path, "w") as f:
                    f.write(str(minimum))


def _disk_mb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)
