"""The node's sandboxes: create, kill, find, adopt after a restart, notice deaths.

Every sandbox that exists on this node is in exactly one of three places: being created
(``_starting``), running (``_sandboxes``), or being torn down. A sandbox record on disk
(``sandbox.json`` in its directory) lets a restarted agent adopt what it left running;
anything on disk or in the runtime without a record is an orphan and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.agent.checkpoints import DISK, IMAGE, CheckpointDir, Held
from shoal.agent.primed import PrimedPool, PrimedSandbox, hand_over, with_sandbox_env
from shoal.agent.sandbox import SERVICE_METADATA, LocalSandbox, SandboxService, ServiceSpec
from shoal.agent.users import lookup_user
from shoal.errors import (
    CapacityExhausted,
    Forbidden,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    RuntimeFailure,
    SandboxGone,
)
from shoal.runtime.checkpoint import Checkpointer
from shoal.runtime.container import Container, ContainerLimits, ContainerRuntime
from shoal.runtime.initclient import InitTooOld, connect_init
from shoal.runtime.pool import WarmPool
from shoal.runtime.process import ProcessSpawner
from shoal.template.store import Template, TemplateStore
from shoal.wire.node import CheckpointStatus, CreateSandboxRequest, SandboxStatus
from shoal.wire.node.models import DEFAULT_CPU_COUNT, DEFAULT_MEMORY_MB

log = logging.getLogger(__name__)

INIT_CONNECT_TIMEOUT = 5.0
READY_TIMEOUT = 60.0
"""How long a template's start command may take to answer on its ready port."""
RECORD = "sandbox.json"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

GoneListener = Callable[[str], None]
AdoptedListener = Callable[[LocalSandbox], Awaitable[object]]


class SandboxManager:
    def __init__(
        self,
        runtime: ContainerRuntime,
        templates: TemplateStore,
        *,
        max_sandboxes: int = 2000,
        warm_pool: int = 0,
        primed_pool: int = 0,
        checkpointer: Checkpointer | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        self.runtime = runtime
        self.checkpointer = checkpointer
        root = checkpoint_root or runtime.root.parent
        self.paused = CheckpointDir(root / "paused")
        self.snapshots = CheckpointDir(root / "snapshots")
        self._pausing: dict[str, asyncio.Event] = {}
        """Sandboxes being checkpointed; the event is set when that is over."""
        self._leaving: set[str] = set()
        """Sandboxes being paused: closed to the data plane (``gone`` set), still listed."""
        self.pool = WarmPool(runtime, warm_pool)
        self.primed = PrimedPool(
            primed_pool, runtime, templates.resolve, self._connect, service_for, READY_TIMEOUT
        )
        self.templates = templates
        self.max_sandboxes = max_sandboxes
        self._sandboxes: dict[str, LocalSandbox] = {}
        self._starting: set[str] = set()
        self._killing: dict[str, asyncio.Task[None]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[object]] = set()
        """Clean-ups that need not delay an answer (removing a consumed checkpoint)."""
        self._gone_listeners: list[GoneListener] = []
        self._adopted_listeners: list[AdoptedListener] = []

    # -- lookup (envd's SandboxDirectory) --------------------------------------------

    def get(self, sandbox_id: str) -> LocalSandbox | None:
        sbx = self._sandboxes.get(sandbox_id)
        if sbx is None or sbx.gone.is_set():
            return None
        return sbx

    def running(self) -> list[LocalSandbox]:
        """What runs here, a sandbox being paused included (it still may run on)."""
        return [
            s
            for s in self._sandboxes.values()
            if not s.gone.is_set() or s.sandbox_id in self._leaving
        ]

    def on_gone(self, listener: GoneListener) -> None:
        """Call ``listener(sandbox_id)`` whenever a sandbox stops existing on this node."""
        self._gone_listeners.append(listener)

    def on_adopted(self, listener: AdoptedListener) -> None:
        """Await ``listener(sandbox)`` for each sandbox :meth:`adopt` takes back, once its
        init is connected and before ``adopt`` returns (envd re-attaches its processes)."""
        self._adopted_listeners.append(listener)

    def status(self, sbx: LocalSandbox) -> SandboxStatus:
        return SandboxStatus(
            sandbox_id=sbx.sandbox_id,
            template_id=sbx.template_id,
            state="running",
            started_at=sbx.started_at,
            init_pid=sbx.container.init_pid,
            cpu_count=sbx.cpu_count,
            memory_mb=sbx.memory_mb,
            disk_mb=sbx.disk_mb,
        )

    # -- create ------------------------------------------------------------------------

    async def create(self, req: CreateSandboxRequest) -> LocalSandbox:
        if req.snapshot_id is not None:
            return await self._create_from_snapshot(req)
        return await self._create(req)

    def _check_new(self, sandbox_id: str) -> None:
        if sandbox_id in self._sandboxes or sandbox_id in self._starting:
            raise InvalidArgument(f"sandbox {sandbox_id} already exists on this node")
        if len(self._sandboxes) + len(self._starting) >= self.max_sandboxes:
            raise CapacityExhausted("node is full")

    async def _create(
        self, req: CreateSandboxRequest, *, disk_from: Path | None = None,
        started_at: datetime | None = None,
    ) -> LocalSandbox:
        """A new sandbox of the request's template (``disk_from``: with a copy of that disk
        instead of an empty one, and no pools)."""
        self._check_new(req.sandbox_id)
        template = self.templates.resolve(req.template_id)
        if template.uid_base != self.runtime.uid_base:
            raise RuntimeFailure(
                f"template {req.template_id} was built for uid base {template.uid_base}, "
                f"this node maps sandboxes to {self.runtime.uid_base}"
            )
        self._starting.add(req.sandbox_id)
        container: Container | None = None
        sbx: LocalSandbox | None = None
        try:
            limits = ContainerLimits(
                req.cpu_count or template.cpu_count or DEFAULT_CPU_COUNT,
                req.memory_mb or template.memory_mb or DEFAULT_MEMORY_MB,
                req.disk_mb,
            )
            hostname = req.hostname or template.hostname
            env_vars = {**template.env, **req.env_vars}
            spawner: ProcessSpawner | None = None
            service: SandboxService | None = None
            if template.start_cmd and disk_from is None:
                primed = self.primed.take((template.template_id, template.rootfs, limits))
                if primed is not None:
                    claimed = await self._claim_primed(primed, req.sandbox_id, hostname, env_vars)
                    if claimed is not None:
                        container, spawner, service = claimed
            if container is None and disk_from is None:
                warm = self.pool.take((template.rootfs, limits))
                if warm is not None:
                    try:
                        container = await self.runtime.claim(warm, req.sandbox_id, hostname)
                    except Exception:
                        # A broken warm container costs this create the cold path, not a failure.
                        log.exception("could not claim warm container %s", warm.container_id)
                        await self.runtime.destroy(warm.container_id)
                        await self.runtime.destroy(req.sandbox_id)
                    except BaseException:
                        await self.runtime.destroy(warm.container_id)
                        raise
            if container is None:
                container = await self.runtime.start(
                    req.sandbox_id, template.rootfs, limits, hostname, disk_from=disk_from
                )
            if spawner is None:
                spawner = await self._connect(container)
            sbx = LocalSandbox(
                sandbox_id=req.sandbox_id,
                template_id=req.template_id,
                access_token=req.access_token,
                default_user=template.default_user,
                default_workdir=template.default_workdir,
                env_vars=env_vars,
                spawner=spawner,
                container=container,
                started_at=started_at or datetime.now(UTC),
                cpu_count=limits.cpu_count,
                memory_mb=limits.memory_mb,
                disk_mb=req.disk_mb,
                hostname=hostname,
            )
            if service is not None:  # primed: running and ready
                sbx.service = service
                self._write_record(sbx)
            elif template.start_cmd:
                sbx.service = service_for(
                    template, container, spawner, env_vars, req.sandbox_id
                )
                self._write_record(sbx)
                sbx.service.start()
                if not await sbx.service.wait_ready(container.netns_path, READY_TIMEOUT):
                    raise RuntimeFailure(
                        f"sandbox {req.sandbox_id}: the template's start command did not "
                        f"answer on port {sbx.service.spec.ready_port}: "
                        f"{sbx.service.output_tail(500)}"
                    )
            else:
                self._write_record(sbx)
        except BaseException:
            if sbx is not None and sbx.service is not None:
                await sbx.service.close()
            if container is not None:
                container.close()
            await self.runtime.destroy(req.sandbox_id)
            raise
        finally:
            self._starting.discard(req.sandbox_id)
        self._sandboxes[sbx.sandbox_id] = sbx
        self._watch(sbx)
        return sbx

    async def _connect(self, container: Container):  # type: ignore[no-untyped-def]
        """Connect to the sandbox's init; it binds its socket a moment after crun returns."""
        deadline = time.monotonic() + INIT_CONNECT_TIMEOUT
        delay = 0.0005
        while True:
            try:
                return await connect_init(container.socket_name, container.netns_path)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"sandbox {container.sandbox_id}: init did not come up"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)

    async def _claim_primed(
        self, primed: PrimedSandbox, sandbox_id: str, hostname: str, env_vars: dict[str, str]
    ) -> tuple[Container, ProcessSpawner, SandboxService] | None:
        """Make a primed sandbox ``sandbox_id`` and hand it its variables; None (and nothing
        left behind) if that fails: the create goes on the slower way."""
        service = primed.service
        try:
            container = await self.runtime.claim(primed.warm, sandbox_id, hostname, started=True)
        except Exception:
            log.exception("could not claim primed sandbox %s", primed.warm.container_id)
            await self.primed.discard(primed)
            await self.runtime.destroy(sandbox_id)
            return None
        except BaseException:
            await self.primed.discard(primed)
            raise
        primed.container.close()
        service.sandbox_id = sandbox_id
        service.spec = with_sandbox_env(service.spec, env_vars)
        try:
            if service.spec.ready_port is not None:
                await hand_over(container.netns_path, service.spec.ready_port, env_vars)
        except BaseException as exc:
            if isinstance(exc, Exception):
                log.exception("sandbox %s: primed start command failed", sandbox_id)
            await service.close()
            with contextlib.suppress(Exception):
                await primed.spawner.aclose()  # type: ignore[attr-defined]
            container.close()
            await self.runtime.destroy(sandbox_id)
            if not isinstance(exc, Exception):
                raise
            return None
        return container, primed.spawner, service

    def _write_record(self, sbx: LocalSandbox) -> None:
        record = self._record(sbx)
        path = self.runtime.dir_of(sbx.sandbox_id) / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    @staticmethod
    def _record(sbx: LocalSandbox) -> dict[str, Any]:
        return {
            "sandbox_id": sbx.sandbox_id,
            "template_id": sbx.template_id,
            "access_token": sbx.access_token,
            "default_user": sbx.default_user,
            "default_workdir": sbx.default_workdir,
            "env_vars": sbx.env_vars,
            "started_at": sbx.started_at.isoformat(),
            "cpu_count": sbx.cpu_count,
            "memory_mb": sbx.memory_mb,
            "disk_mb": sbx.disk_mb,
            "socket_name": sbx.container.socket_name,
            "service": sbx.service.spec.to_json() if sbx.service is not None else None,
            "hostname": sbx.hostname,
        }

    # -- death and kill ----------------------------------------------------------------

    def _watch(self, sbx: LocalSandbox) -> None:
        task = asyncio.get_running_loop().create_task(self._watch_one(sbx))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch_one(self, sbx: LocalSandbox) -> None:
        """The init connection breaking means the sandbox died (or is being killed)."""
        closed = sbx.spawner.closed  # type: ignore[attr-defined]
        await closed
        pausing = self._pausing.get(sbx.sandbox_id)
        if pausing is not None:  # a checkpoint ends the tree on purpose
            await pausing.wait()
        if self._sandboxes.get(sbx.sandbox_id) is sbx and sbx.sandbox_id not in self._killing:
            log.warning("sandbox %s died", sbx.sandbox_id)
            await self.kill(sbx.sandbox_id)

    async def kill(self, sandbox_id: str) -> bool:
        """Kill and remove a sandbox; False when this node does not have it."""
        task = self._killing.get(sandbox_id)
        if task is None:
            if sandbox_id not in self._sandboxes:
                # a paused sandbox: its checkpoint is all there is of it
                return await asyncio.to_thread(self.paused.remove, sandbox_id)
            task = asyncio.get_running_loop().create_task(self._teardown(sandbox_id))
            self._killing[sandbox_id] = task
        await asyncio.shield(task)
        return True

    async def _teardown(self, sandbox_id: str) -> None:
        sbx = self._sandboxes[sandbox_id]
        try:
            await self._let_go(sbx)
            await self.runtime.destroy(sandbox_id)
        finally:
            self._sandboxes.pop(sandbox_id, None)
            self._killing.pop(sandbox_id, None)

    async def _let_go(self, sbx: LocalSandbox) -> None:
        """Everything the agent holds of a sandbox that stops being here (killed, or
        checkpointed): in-flight streams abort, envd forgets it, fds are closed."""
        sbx.gone.set()
        for listener in self._gone_listeners:
            try:
                listener(sbx.sandbox_id)
            except Exception:  # a listener's bug must not leak the sandbox
                log.exception("gone listener failed for %s", sbx.sandbox_id)
        if sbx.service is not None:
            await sbx.service.close()
        with contextlib.suppress(Exception):
            await sbx.spawner.aclose()
        sbx.container.close()

    # -- start-up and shut-down --------------------------------------------------------

    async def adopt(self) -> None:
        """Take back the sandboxes this node left running; remove every orphan."""
        known = {c.id: c for c in await self.runtime.list_containers()}
        dirs = set(self.runtime.list_dirs())
        for sandbox_id in sorted(dirs | set(known)):
            record_path = self.runtime.dir_of(sandbox_id) / RECORD
            sbx = None
            if record_path.exists() and sandbox_id in known:
                sbx = await self._adopt_one(sandbox_id, record_path)
            if sbx is None:
                log.info("removing orphaned sandbox %s", sandbox_id)
                await self.runtime.destroy(sandbox_id)
                continue
            await self._take_back(sbx)

    async def _take_back(self, sbx: LocalSandbox) -> None:
        """Run a sandbox whose processes outlived the agent's hold on them (an agent
        restart, a restored checkpoint): its start command and envd's processes are
        found again by their init metadata."""
        self._sandboxes[sbx.sandbox_id] = sbx
        self._watch(sbx)
        if sbx.service is not None:
            # Before envd's adoption: it would close the fds of a process not its own.
            sbx.service.start(await self._find_service(sbx))
        for listener in self._adopted_listeners:
            try:
                await listener(sbx)
            except Exception:  # the sandbox itself is adopted either way
                log.exception("adoption listener failed for %s", sbx.sandbox_id)

    async def _adopt_one(self, sandbox_id: str, record_path: Path) -> LocalSandbox | None:
        try:
            rec = json.loads(record_path.read_text())  # noqa: ASYNC240 (start-up, tiny file)
            container = await self.runtime.adopt(sandbox_id, rec.get("socket_name"))
            if container is None:
                return None
            try:
                spawner = await self._connect(container)
            except Exception:
                container.close()
                return None
            return _from_record(sandbox_id, rec, spawner, container)
        except (OSError, ValueError, KeyError, TypeError, SandboxGone):
            log.exception("could not adopt sandbox %s", sandbox_id)
            return None

    @staticmethod
    async def _find_service(sbx: LocalSandbox) -> object | None:
        """The start command a previous agent left running in ``sbx`` (None: start it again)."""
        spawner = sbx.spawner
        try:
            pids = await spawner.list_pids()  # type: ignore[attr-defined]
        except (SandboxGone, AttributeError):
            return None
        for pid in sorted(pids):
            try:
                handle = await spawner.adopt_process(pid)  # type: ignore[attr-defined]
            except (NotFound, Forbidden, InvalidStateTransition, InitTooOld, SandboxGone):
                continue
            except RuntimeFailure:
                log.exception("sandbox %s: could not look at pid %d", sbx.sandbox_id, pid)
                continue
            if handle.metadata == SERVICE_METADATA:
                return handle
        return None

    # -- pause, resume, snapshots -------------------------------------------------------

    def _checkpointer(self) -> Checkpointer:
        if self.checkpointer is None:
            raise RuntimeFailure(
                "this node cannot checkpoint memory (CRIU >= 4.1 missing: run scripts/setup)"
            )
        return self.checkpointer

    def _hold(self, sandbox_id: str) -> LocalSandbox:
        """A running sandbox to checkpoint, marked busy (until ``_unhold``)."""
        if sandbox_id in self._pausing or sandbox_id in self._killing:
            raise InvalidStateTransition(f"sandbox {sandbox_id} is being paused or killed")
        sbx = self.get(sandbox_id)
        if sbx is None:
            raise NotFound(f"sandbox {sandbox_id} is not running on this node")
        self._pausing[sandbox_id] = asyncio.Event()
        return sbx

    def _unhold(self, sandbox_id: str) -> None:
        event = self._pausing.pop(sandbox_id, None)
        if event is not None:
            event.set()

    async def pause(self, sandbox_id: str, *, memory: bool = True) -> CheckpointStatus:
        """Checkpoint a sandbox (with ``memory``: processes and memory, else the disk only)
        and release it. On failure the sandbox keeps running.

        From the start the data plane treats the sandbox as gone: requests in flight are
        aborted (as a paused VM cuts its connections) and new ones answer 502, so no
        host-side file operation writes into its disk while the disk is taken (an upload
        answered 200 after that would be lost on resume). A pause that fails undoes it."""
        sbx = self._hold(sandbox_id)
        self._leaving.add(sandbox_id)
        sbx.gone.set()
        try:
            checkpointer = self._checkpointer() if memory else None
            record = {**self._record(sbx), "memory": memory, "checkpoint_id": sandbox_id,
                      "created_at": datetime.now(UTC).isoformat()}
            dest = await asyncio.to_thread(self.paused.begin, sandbox_id)
            try:
                if checkpointer is not None:
                    await checkpointer.checkpoint(sbx.container, dest / IMAGE)
                else:
                    await self.runtime.destroy(sandbox_id, keep_disk=dest / DISK)
            except BaseException:
                await asyncio.to_thread(self.paused.remove, sandbox_id)
                if memory or self.runtime.dir_of(sandbox_id).exists():
                    raise
                self._leaving.discard(sandbox_id)
                await self._let_go(sbx)  # disk-only: the sandbox was stopped, then lost
                self._sandboxes.pop(sandbox_id, None)
                raise
            held = await asyncio.to_thread(self.paused.commit, sandbox_id, record)
            self._leaving.discard(sandbox_id)
            await self._let_go(sbx)
            self._sandboxes.pop(sandbox_id, None)
        except BaseException:
            if sandbox_id in self._leaving and self._sandboxes.get(sandbox_id) is sbx:
                sbx.gone.clear()  # it runs on: serve it again
            raise
        finally:
            self._leaving.discard(sandbox_id)
            self._unhold(sandbox_id)
        log.info("sandbox %s paused (%s)", sandbox_id, "memory" if memory else "disk only")
        return await asyncio.to_thread(held.status)

    async def resume(
        self, sandbox_id: str, *, memory: bool = True, access_token: str | None = None,
        env_vars: dict[str, str] | None = None,
    ) -> LocalSandbox:
        """Bring a paused sandbox back under its id. With its memory (when it was kept and
        ``memory``), exactly as it was; else booted from its disk. On failure the
        checkpoint stays for another try."""
        held = self.paused.get(sandbox_id)
        if held is None:
            raise NotFound(f"sandbox {sandbox_id} is not paused on this node")
        rec = held.record
        if held.memory and memory:
            # The disk is moved out of the image, not copied (the image goes anyway once
            # the sandbox runs; a failed restore moves it back).
            sbx = await self._restore(held, sandbox_id, rec, hostname=None, consume=True)
        else:
            req = CreateSandboxRequest(
                sandbox_id=sandbox_id, template_id=rec["template_id"],
                cpu_count=rec["cpu_count"], memory_mb=rec["memory_mb"], disk_mb=rec["disk_mb"],
                access_token=access_token or rec["access_token"],
                env_vars=env_vars if env_vars is not None else rec["env_vars"],
                hostname=rec.get("hostname"),
            )
            sbx = await self._create(
                req, disk_from=held.disk, started_at=datetime.fromisoformat(rec["started_at"])
            )
        aside = await asyncio.to_thread(self.paused.set_aside, sandbox_id)
        if aside is not None:  # hundreds of MiB: removed after the sandbox is answered for
            self._background(asyncio.to_thread(shutil.rmtree, aside, True))
        log.info("sandbox %s resumed", sandbox_id)
        return sbx

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _restore(
        self, held: Held, sandbox_id: str, rec: dict[str, Any], *, hostname: str | None,
        consume: bool = False,
    ) -> LocalSandbox:
        """Processes and memory back from ``held`` as sandbox ``sandbox_id``."""
        self._check_new(sandbox_id)
        checkpointer = self._checkpointer()
        self._starting.add(sandbox_id)
        container: Container | None = None
        try:
            rootfs = self._template_rootfs(rec["template_id"])
            container = await checkpointer.restore(
                held.image, sandbox_id, template_rootfs=rootfs, hostname=hostname,
                consume=consume,
            )
            spawner = await self._connect(container)
            sbx = _from_record(sandbox_id, rec, spawner, container)
            self._write_record(sbx)
        except BaseException:
            if container is not None:
                container.close()
            await self.runtime.destroy(sandbox_id)
            raise
        finally:
            self._starting.discard(sandbox_id)
        await self._take_back(sbx)
        return sbx

    def _template_rootfs(self, template_id: str) -> Path | None:
        """This node's build of the template (None: the one the checkpoint recorded)."""
        try:
            return self.templates.resolve(template_id).rootfs
        except NotFound:
            return None

    async def snapshot(
        self, sandbox_id: str, snapshot_id: str, *, memory: bool = True
    ) -> CheckpointStatus:
        """Checkpoint a sandbox that keeps running."""
        sbx = self._hold(sandbox_id)
        try:
            checkpointer = self._checkpointer() if memory else None
            record = {**self._record(sbx), "memory": memory, "checkpoint_id": snapshot_id,
                      "created_at": datetime.now(UTC).isoformat()}
            dest = await asyncio.to_thread(self.snapshots.begin, snapshot_id)
            try:
                if checkpointer is not None:
                    await checkpointer.checkpoint(sbx.container, dest / IMAGE, leave_running=True)
                else:
                    await asyncio.to_thread(
                        self.runtime.copy_disk, sandbox_id, dest / DISK
                    )
            except BaseException:
                await asyncio.to_thread(self.snapshots.remove, snapshot_id)
                raise
            held = await asyncio.to_thread(self.snapshots.commit, snapshot_id, record)
        finally:
            self._unhold(sandbox_id)
        return await asyncio.to_thread(held.status)

    async def _create_from_snapshot(self, req: CreateSandboxRequest) -> LocalSandbox:
        assert req.snapshot_id is not None
        held = self.snapshots.get(req.snapshot_id)
        if held is None:
            raise NotFound(f"snapshot {req.snapshot_id} not found on this node")
        rec = {
            **held.record,
            "access_token": req.access_token,
            "env_vars": req.env_vars or held.record["env_vars"],
            "started_at": datetime.now(UTC).isoformat(),
            "hostname": req.hostname or req.sandbox_id,
        }
        if held.memory:
            return await self._restore(
                held, req.sandbox_id, rec, hostname=req.hostname or req.sandbox_id
            )
        copy = req.model_copy(update={
            "template_id": rec["template_id"], "cpu_count": rec["cpu_count"],
            "memory_mb": rec["memory_mb"], "disk_mb": rec["disk_mb"], "env_vars": rec["env_vars"],
        })
        return await self._create(copy, disk_from=held.disk)

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        return await asyncio.to_thread(self.snapshots.remove, snapshot_id)

    def checkpoints(self) -> list[CheckpointStatus]:
        """Every paused sandbox and snapshot this node holds."""
        return [h.status() for d in (self.paused, self.snapshots) for h in d.all()]

    async def detach(self) -> None:
        """Agent shut-down: stop watching, keep every sandbox running for the next start;
        remove the warm pools."""
        await self.primed.close()
        await self.pool.close()
        for task in list(self._watchers):
            task.cancel()
        for sbx in list(self._sandboxes.values()):
            if sbx.service is not None:
                await sbx.service.close()
            with contextlib.suppress(Exception):
                await sbx.spawner.aclose()
            sbx.container.close()
        self._sandboxes.clear()

    async def kill_all(self) -> None:
        await asyncio.gather(*(self.kill(s) for s in list(self._sandboxes)), return_exceptions=True)


def _from_record(
    sandbox_id: str, rec: dict[str, Any], spawner: Any, container: Container
) -> LocalSandbox:
    """A sandbox the agent takes (back) from its record (``sandbox.json``, or a
    checkpoint's copy of it)."""
    sbx = LocalSandbox(
        sandbox_id=sandbox_id,
        template_id=rec["template_id"],
        access_token=rec["access_token"],
        default_user=rec["default_user"],
        default_workdir=rec["default_workdir"],
        env_vars=rec["env_vars"],
        spawner=spawner,
        container=container,
        started_at=datetime.fromisoformat(rec["started_at"]),
        cpu_count=rec["cpu_count"],
        memory_mb=rec["memory_mb"],
        disk_mb=rec["disk_mb"],
        hostname=rec.get("hostname"),
    )
    if rec.get("service"):
        sbx.service = SandboxService(sandbox_id, spawner, ServiceSpec.from_json(rec["service"]))
    return sbx


def service_for(
    template: Template,
    container: Container,
    spawner: object,
    env_vars: dict[str, str],
    sandbox_id: str,
) -> SandboxService:
    """The template's start command as the template's user, in its workdir, with the
    sandbox's variables (also handed over as JSON: envd's ``/envs`` is not reachable from
    inside the sandbox)."""
    user = lookup_user(container.fs, template.default_user)
    if user is None:
        raise RuntimeFailure(
            f"template {template.template_id}: user {template.default_user!r} not found"
        )
    env = {"PATH": SERVICE_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    spec = ServiceSpec(
        argv=["/bin/bash", "-c", template.start_cmd or ""],
        env=env,
        cwd=template.default_workdir or user.home,
        uid=user.uid,
        gid=user.gid,
        groups=list(user.groups),
        ready_port=template.ready_port,
    )
    return SandboxService(sandbox_id, spawner, with_sandbox_env(spec, env_vars))


__all__ = ["NotFound", "SandboxManager"]
