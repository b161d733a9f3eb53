"""Sandbox containers on one node: lay out, start, find again and tear down.

On disk, under ``<data_dir>/sandboxes/<sandbox_id>/``::

    disk.img          the sandbox's disk: a sparse ext4 image of ``disk_mb`` (runtime/quota.py)
    disk/             its mount point, holding
      upper/  work/   the writable overlay layer and overlayfs' work dir
    rootfs/           the overlay mount (template layer + upper), the container's root
    bundle/config.json
    boot_id           this sandbox's own /proc/sys/kernel/random/boot_id
    init.pid
    pool_id           only if it came from the warm pool: the id it was created under

Warm containers (``runtime/pool.py``) are laid out and ``crun create``d under an id
``pool-<hex>`` (directory, crun container, cgroups), their init not yet exec'd. Claiming
one renames all of that to the sandbox id (crun's state directory and status, the cgroup v1
directories, the sandbox directory with its mounts), sets the UTS hostname and
``/etc/hosts``, then lets init exec. cgroup v2 directories cannot be renamed: the unified
hierarchy (no controllers here) keeps the pool name, recorded in ``pool_id`` and removed
with the sandbox.

Teardown is idempotent and ordered so nothing leaks even when a step fails half way:
kill the container (its whole cgroup), delete it (crun removes the cgroups), unmount the
overlay, unmount the disk, remove the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import resource
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import RuntimeFailure
from shoal.runtime import oci, overlay, quota
from shoal.runtime.crun import ContainerState, Crun
from shoal.runtime.netns import _setns
from shoal.runtime.quota import SandboxDisks
from shoal.runtime.rootfs import RootFS


@dataclass(frozen=True)
class ContainerLimits:
    cpu_count: int
    memory_mb: int
    disk_mb: int
    pids: int = 4096


@dataclass
class Container:
    sandbox_id: str
    init_pid: int
    rootfs: Path
    socket_name: str
    uid_base: int
    netns_fd: int
    """An open fd of the sandbox's network namespace; stays valid however pids are reused."""

    @property
    def netns_path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    @functools.cached_property
    def fs(self) -> RootFS:
        """The sandbox's root filesystem, every path resolved inside it (opened on first use)."""
        return RootFS(str(self.rootfs), uid_base=self.uid_base)

    def close(self) -> None:
        if "fs" in self.__dict__:
            self.fs.close()
        if self.netns_fd >= 0:
            try:
                os.close(self.netns_fd)
            except OSError:
                pass
            self.netns_fd = -1


def raise_nofile_limit() -> None:
    """Sandboxes get RLIMIT_NOFILE 65536, which crun can only grant up to its own hard
    limit; and every sandbox process's stdio passes through the agent, so the agent needs
    far more than the default 1024 itself."""
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _check_searchable(path: Path) -> None:
    """crun sets up the root filesystem from inside the user namespace, as the sandbox's
    unprivileged root: every directory above the sandboxes must let "others" through."""
    for p in [path, *path.parents]:
        if not os.stat(p).st_mode & 0o001:
            raise RuntimeFailure(
                f"{p} is not searchable by other users (mode o+x); sandboxes under {path} "
                "could not start. Choose a data directory whose parents are all o+x."
            )


def socket_name_for(sandbox_id: str) -> str:
    return f"shoal-init-{sandbox_id}"


POOL_PREFIX = "pool-"
CLONE_NEWUTS = 0x04000000
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class WarmContainer:
    """A container laid out and created but not started (see runtime/pool.py)."""

    container_id: str
    pid: int


def _set_hostname(pid: int, hostname: str) -> None:
    """Set the UTS hostname of process ``pid``'s namespace. setns(2) moves only the
    calling thread, so the caller runs this on a thread that exits right after."""
    fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, CLONE_NEWUTS)
    finally:
        os.close(fd)
    socket.sethostname(hostname)


async def _on_own_thread(fn: functools.partial[None]) -> None:
    """Run ``fn`` on a fresh thread (it may change the thread's namespaces)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def deliver(exc: BaseException | None) -> None:
        if done.cancelled():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, exc)
        else:
            loop.call_soon_threadsafe(deliver, None)

    threading.Thread(target=body, name="shoal-claim", daemon=True).start()
    await done


def _write_hosts(upper: Path, hostname: str) -> None:
    """Name resolution of the sandbox's own hostname (sudo asks for it on every call)."""
    (upper / "etc" / "hosts").write_text(
        f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback {hostname}\n"
    )


class ContainerRuntime:
    def __init__(self, data_dir: Path, node_id: str, init_binary: Path, uid_base: int) -> None:
        raise_nofile_limit()
        self.root = data_dir / "sandboxes"
        self.root.mkdir(parents=True, exist_ok=True)
        _check_searchable(self.root)
        self.disks = SandboxDisks(data_dir / "disks")
        self.state_root = Path("/run/shoal") / node_id / "crun"
        self.state_root.mkdir(parents=True, exist_ok=True)
        self.crun = Crun(str(self.state_root))
        self.node_id = node_id
        self.init_binary = init_binary
        self.uid_base = uid_base

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (in every hierarchy) that holds this node's sandboxes."""
        return f"/shoal/{self.node_id}"

    def cgroup_path(self, sandbox_id: str) -> str:
        return f"{self.cgroup_parent}/{sandbox_id}"

    def dir_of(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    async def start(
        self,
        sandbox_id: str,
        template_rootfs: Path,
        limits: ContainerLimits,
        hostname: str,
        *,
        disk_from: Path | None = None,
    ) -> Container:
        """Lay out and start the container; on any failure leave nothing behind.
        ``disk_from``: boot from a copy of this disk image (a sandbox paused without its
        memory, or a disk-only snapshot) instead of an empty disk."""
        if self.dir_of(sandbox_id).exists():
            raise RuntimeFailure(f"sandbox {sandbox_id} already exists on this node")
        try:
            return await self._start(sandbox_id, template_rootfs, limits, hostname, disk_from)
        except BaseException:
            await self.destroy(sandbox_id)
            raise

    async def _start(
        self,
        sandbox_id: str,
        template_rootfs: Path,
        limits: ContainerLimits,
        hostname: str,
        disk_from: Path | None = None,
    ) -> Container:
        d = self.dir_of(sandbox_id)
        await asyncio.to_thread(
            self._prepare, d, template_rootfs, hostname, limits.disk_mb, disk_from
        )
        self._write_config(sandbox_id, limits, hostname)
        pid = await self.crun.run_detached(
            sandbox_id, str(d / "bundle"), str(d / "init.pid"), str(d / "init.log")
        )
        return self._attach(sandbox_id, pid)

    def _write_config(self, sandbox_id: str, limits: ContainerLimits, hostname: str) -> None:
        d = self.dir_of(sandbox_id)
        spec = oci.SandboxSpec(
            sandbox_id=sandbox_id,
            rootfs=str(d / "rootfs"),
            init_binary=str(self.init_binary),
            socket_name=socket_name_for(sandbox_id),
            cgroup_path=self.cgroup_path(sandbox_id),
            cpu_count=limits.cpu_count,
            memory_mb=limits.memory_mb,
            uid_base=self.uid_base,
            hostname=hostname,
            pids_limit=limits.pids,
            boot_id_file=str(d / "boot_id"),
            nofile=min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        )
        config = oci.build_config(spec)
        (d / "bundle" / "config.json").write_text(json.dumps(config))

    # -- the warm pool -----------------------------------------------------------------

    async def create_warm(self, template_rootfs: Path, limits: ContainerLimits) -> WarmContainer:
        """Lay out and ``crun create`` a container of this shape under a fresh pool id;
        on any failure leave nothing behind."""
        cid = POOL_PREFIX + uuid.uuid4().hex[:12]
        d = self.dir_of(cid)
        try:
            await asyncio.to_thread(self._prepare, d, template_rootfs, cid, limits.disk_mb)
            self._write_config(cid, limits, cid)
            pid = await self.crun.create(
                cid, str(d / "bundle"), str(d / "init.pid"), str(d / "init.log")
            )
        except BaseException:
            await self.destroy(cid)
            raise
        return WarmContainer(container_id=cid, pid=pid)

    def start_warm(self, warm: WarmContainer) -> Container:
        """Let a warm container's init exec under its pool id (for pools whose containers
        run something before they are claimed); claim it later with ``started=True``."""
        self.crun.start_now(warm.container_id)
        return self._attach(warm.container_id, warm.pid)

    async def claim(
        self, warm: WarmContainer, sandbox_id: str, hostname: str, *, started: bool = False
    ) -> Container:
        """Turn a warm container into sandbox ``sandbox_id`` and (unless ``started`` by
        :meth:`start_warm`) let its init exec. On failure the caller destroys both ids."""
        if self.dir_of(sandbox_id).exists():
            raise RuntimeFailure(f"sandbox {sandbox_id} already exists on this node")
        await _on_own_thread(
            functools.partial(self._claim, warm, sandbox_id, hostname, started=started)
        )
        container = self._attach(sandbox_id, warm.pid)
        container.socket_name = socket_name_for(warm.container_id)
        return container

    def _claim(
        self, warm: WarmContainer, sandbox_id: str, hostname: str, *, started: bool = False
    ) -> None:
        old, new = warm.container_id, sandbox_id
        d = self.dir_of(new)
        self.dir_of(old).rename(d)
        (d / "pool_id").write_text(old)
        self.crun.rename(
            old,
            new,
            cgroup_path=self.cgroup_path(new),
            bundle=str(d / "bundle"),
            rootfs=str(d / "rootfs"),
        )
        for controller in CGROUP_ROOT.iterdir():
            src = controller / self.cgroup_path(old).lstrip("/")
            if src.is_dir() and not (src / "cgroup.controllers").exists():  # v1 only
                src.rename(controller / self.cgroup_path(new).lstrip("/"))
        _write_hosts(d / "disk" / "upper", hostname)
        _set_hostname(warm.pid, hostname)
        if not started:
            self.crun.start_now(new)

    def _prepare(
        self,
        d: Path,
        template_rootfs: Path,
        hostname: str,
        disk_mb: int,
        disk_from: Path | None = None,
    ) -> None:
        disk = d / "disk"
        upper, work, rootfs = disk / "upper", disk / "work", d / "rootfs"
        d.mkdir(parents=True)
        for p in (disk, rootfs, d / "bundle"):
            p.mkdir()
        # Everything the sandbox can write lives on its own disk of disk_mb; work/ too, since
        # overlayfs renames from it into upper/.
        if disk_from is None:
            self.disks.create(d / "disk.img", disk, disk_mb)
        else:
            quota.copy_sparse(disk_from, d / "disk.img")
            quota.mount_image(d / "disk.img", disk)
        for p in (upper, work):
            p.mkdir(exist_ok=True)
        # The init binary's mount point lives in the writable layer, owned by the
        # sandbox's root, so templates need no Shoal-specific files.
        shoal_dir = upper / ".shoal"
        shoal_dir.mkdir(exist_ok=True)
        (shoal_dir / "init").touch()
        for p in (upper, shoal_dir, shoal_dir / "init"):
            os.chown(p, self.uid_base, self.uid_base)
        os.chmod(upper, 0o755)
        # Name resolution of the sandbox's own hostname (sudo asks for it on every call).
        etc = upper / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        hosts = etc / "hosts"
        _write_hosts(upper, hostname)
        os.chmod(etc, 0o755)
        os.chmod(hosts, 0o644)
        os.chown(etc, self.uid_base, self.uid_base)
        os.chown(hosts, self.uid_base, self.uid_base)
        (d / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        overlay.mount_overlay(str(template_rootfs), str(upper), str(work), str(rootfs))

    def _attach(self, sandbox_id: str, pid: int) -> Container:
        try:
            netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id} init (pid {pid}) is gone") from exc
        return Container(
            sandbox_id=sandbox_id,
            init_pid=pid,
            rootfs=self.dir_of(sandbox_id) / "rootfs",
            socket_name=socket_name_for(sandbox_id),
            uid_base=self.uid_base,
            netns_fd=netns_fd,
        )

    async def adopt(self, sandbox_id: str, socket_name: str | None = None) -> Container | None:
        """Find a sandbox this node started before a restart; None if it is not running."""
        state = await self.crun.state(sandbox_id)
        if state is None or state.status != "running" or not state.pid:
            return None
        container = self._attach(sandbox_id, state.pid)
        if socket_name:
            container.socket_name = socket_name
        return container

    async def set_hostname(self, sandbox_id: str, pid: int, hostname: str) -> None:
        """Rename a running sandbox's host (UTS namespace of ``pid`` and ``/etc/hosts``), as
        a claim does: a copy restored from another sandbox's checkpoint gets its own."""
        _write_hosts(self.dir_of(sandbox_id) / "disk" / "upper", hostname)
        await _on_own_thread(functools.partial(_set_hostname, pid, hostname))

    async def list_containers(self) -> list[ContainerState]:
        return await self.crun.list()

    def list_dirs(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir()]

    async def release_node(self) -> bool:
        """At shut-down with no sandbox left: remove this node's (empty) cgroup parents and
        crun state directory, so a node that goes away leaves nothing on the machine.

        Does nothing, and returns False, while any sandbox directory or container exists:
        those are adopted by the next start and need both.
        """
        if self.list_dirs() or await self.crun.list():
            return False
        await asyncio.to_thread(self._remove_node_dirs)
        return True

    def _remove_node_dirs(self) -> None:
        cgroup_root = Path("/sys/fs/cgroup")
        node_cgroup = self.cgroup_parent.lstrip("/")
        candidates = [cgroup_root / node_cgroup]
        if cgroup_root.is_dir():
            candidates += [c / node_cgroup for c in cgroup_root.iterdir() if c.is_dir()]
        # rmdir only ever removes an empty cgroup (EBUSY otherwise); the shared "shoal"
        # parent stays, another node on this machine may be creating its own below it.
        for d in [*candidates, self.state_root, self.state_root.parent]:
            with contextlib.suppress(OSError):
                os.rmdir(d)

    async def destroy(self, sandbox_id: str, *, keep_disk: Path | None = None) -> None:
        """Kill and remove everything of the sandbox. Idempotent.

        ``crun delete --force`` SIGKILLs every process of the container and removes its
        cgroups; the sandbox's pid 1 dying takes its whole pid namespace with it.
        ``keep_disk``: move the sandbox's disk image there first, complete and unmounted
        (a sandbox paused without its memory)."""
        await self.crun.delete(sandbox_id)
        d = self.dir_of(sandbox_id)
        await asyncio.to_thread(self._remove_pool_cgroups, d)
        if keep_disk is not None:
            await asyncio.to_thread(self.release_disk, d, keep_disk)
        await asyncio.to_thread(self._remove_dir, d)

    def copy_disk(self, sandbox_id: str, dest: Path) -> None:
        """A consistent copy of a running sandbox's disk image (blocking: run on a thread)."""
        d = self.dir_of(sandbox_id)
        quota.copy_frozen(d / "disk", d / "disk.img", dest)

    @staticmethod
    def release_disk(d: Path, dest: Path) -> None:
        """Unmount sandbox directory ``d``'s overlay and disk (none of its processes are
        left) and move its disk image to ``dest``, complete (``quota.release_image``)."""
        if not (d / "disk.img").exists():
            raise RuntimeFailure(f"{d.name} has no disk to keep")
        for attempt in range(50):
            try:
                overlay.unmount(str(d / "rootfs"))
                break
            except OSError:
                time.sleep(0.01 * (attempt + 1))
        quota.release_image(d / "disk", d / "disk.img", dest)

    def _remove_pool_cgroups(self, d: Path) -> None:
        """A sandbox claimed from the pool keeps its pool-named cgroup v2 directory."""
        try:
            pool_id = (d / "pool_id").read_text().strip()
        except OSError:
            return
        if not pool_id.startswith(POOL_PREFIX) or "/" in pool_id:
            return
        rel = self.cgroup_path(pool_id).lstrip("/")
        for controller in CGROUP_ROOT.iterdir():
            cg = controller / rel
            for attempt in range(50):
                try:
                    os.rmdir(cg)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY until the killed processes are gone
                    time.sleep(0.01 * (attempt + 1))

    @staticmethod
    def _remove_dir(d: Path) -> None:
        rootfs = d / "rootfs"
        for attempt in range(50):
            try:
                overlay.unmount(str(rootfs))
                break
            except OSError:
                time.sleep(0.01 * (attempt + 1))
        # Lazily: the overlay may still be held for a moment; the loop device detaches and
        # the image's blocks are freed once the filesystem is released.
        with contextlib.suppress(OSError):  # then rmtree fails and says so below
            quota.unmount(d / "disk")
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            raise RuntimeFailure(f"could not remove {d}")
