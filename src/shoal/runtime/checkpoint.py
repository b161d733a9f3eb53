"""Checkpoint and restore of whole sandboxes with CRIU: processes, memory and disk.

    cp = Checkpointer(runtime, Path("/opt/shoal/criu/bin/criu"))
    image = await cp.checkpoint(container, Path("/var/lib/shoal/checkpoints/sbx1"))
    container = await cp.restore(image.path)              # same id, same or another node
    copy = await other_cp.restore(image.path, "sbx2", hostname="sbx2")   # a fork

**The image** is a directory that needs nothing from the node that made it::

    checkpoint.json   metadata: format, sandbox id, uid base, init socket name, boot id,
                      template layer, the container's OCI config, what was external
    criu/             CRIU's images of the process tree and its namespaces (memory pages,
                      files, sockets, /dev and /dev/shm tmpfs contents, cgroup limits)
    disk.img          the sandbox's disk (the writable layer, sparse; see quota.py)
    shoal-init        the init binary the processes run (a restore needs this very file)

It is written under a temporary name and renamed into place, so a directory with
``checkpoint.json`` is always complete. The template layer is not in the image: the restoring
node needs the same template build (``template_rootfs`` names the one used at checkpoint).

**How a restored container is managed.** Debian's crun 1.8.1 is built without CRIU, and
runc could only restore what runc checkpointed (its own state, descriptors and mount keys;
it cannot dump a crun container, and running two runtimes side by side doubles every
lifecycle path). So Shoal drives the ``criu`` binary itself, the way crun's own
``checkpoint``/``restore`` (libcrun's criu.c) and runc drive it, and then registers the
restored container in the node's crun state directory exactly as crun's restore does: a
``status`` with the new init's pid and start time, and the container's ``config.json``. From
then on crun sees an ordinary running container, so ``crun state``/``list``/``kill``/
``delete --force``, and with them :meth:`ContainerRuntime.adopt`, ``destroy`` and the
agent's orphan sweep, work unchanged. (The ``status`` format is crun's; restore checks
that ``crun state`` then reports the container running with that pid.)

The pieces CRIU needs told (all found from the container at checkpoint time):

* **mounts**: the overlay root is re-mounted by us and given as ``--root``. Bind mounts whose
  source is outside the container are declared external (``--external mnt[..]``) and mapped
  on restore: ``/.shoal/init`` to this node's copy of the same init binary (installed from
  the image when missing), the boot id file to the new sandbox's own file (same content),
  and device nodes (``/dev/null`` and friends, and masked ``/proc`` files) to the host's.
  proc, sysfs, tmpfs, devpts, mqueue and the cgroup mounts are CRIU's own business.
* **cgroups**: ``--manage-cgroups`` dumps the limits (memory, cpu, pids, devices) and
  ``--cgroup-root`` puts the restored tree under this runtime's ``/shoal/<node>/<id>``; CRIU
  creates those directories and applies the limits, and the cgroup namespace's root moves
  with them. The node's parent directories are made first (cpuset copied down: cgroup v1
  refuses cpus on a child whose parent has none).
* **init's stderr** (``init.log``, opened by crun on the host) is dumped as an external file
  and handed back to the restored init with ``--inherit-fd`` (the new sandbox's own log,
  owned by the sandbox's root: CRIU reopens it as that user).
* **connections to init from outside** (the agent's ``InitClient``): the agent side cannot be
  dumped. Each such socket is declared external at dump and replaced on restore by one end
  of a socket pair whose other end is already closed, so init sees the client leave. The
  agent connects again and ADOPTs processes, as after its own restart.
* **network**: the namespace (only ``lo``) is dumped whole, with TCP connections
  (``--tcp-established``; both ends of loopback connections are inside). A connection from
  the agent into the sandbox (a tunnel) is reset on restore.
* **pids**: the sandbox has its own pid namespace, so pids inside are restored as they
  were and never clash with the host's or another restored copy's.

**Disk consistency.** Memory and disk must be of the same instant. Checkpoint
(``leave_running=False``, pause): CRIU kills the tree after dumping it; the disk is then
synced, unmounted and its image moved into the checkpoint (copied instead if the old mount
lingers). Snapshot (``leave_running=True``): the container's freezer cgroup is frozen
first and CRIU (``--freeze-cgroup``) leaves it frozen after the dump; the disk's filesystem
is frozen (FIFREEZE, which also blocks host-side writers), its image copied, then both are
thawed.

**Failure behaviour.** A failed dump leaves the sandbox running (CRIU resumes the tasks; a
pre-freeze is undone); a dump that races a client connecting to init is planned and tried
again. Once a pause's dump has killed the tree, the image is never deleted, even if
finishing it fails. A failed restore removes everything it made (directory, mounts,
cgroups) and leaves the image as it was; with ``consume=True`` the disk image moved into the
sandbox is moved back.

**Limits.** CRIU 4.1.1 cannot dump TCP/UDP sockets on Linux >= 6.16 without
``scripts/criu-patches/sockopt-passcred.patch`` (``scripts/criu`` builds it so). CRIU
records inotify watches by path and cannot open overlayfs file handles, so it can only
dump a watch on the overlay whose path its irmap finds: a process watching many files
there (the ``tslab`` JS/TS kernel of ``code-interpreter-v1``) makes the dump fail, cleanly.
Pause is stop-and-copy: this kernel has no soft-dirty tracking for iterative pre-dumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import shutil
import socket
import stat
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.errors import AlreadyExists, InvalidArgument, NotFound, RuntimeFailure
from shoal.runtime import oci, overlay, quota
from shoal.runtime.container import Container, ContainerRuntime
from shoal.runtime.netns import run_in_netns

FORMAT = 1
META = "checkpoint.json"
MEMORY = "criu"
DISK = "disk.img"
INIT_COPY = "shoal-init"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
INIT_COOKIE = "shoal-init"
BOOT_ID_COOKIE = "boot-id"
CGROUP_ROOT = Path("/sys/fs/cgroup")

GHOST_LIMIT = "256M"
"""Deleted-but-open files up to this size are copied into the image (larger fail the dump)."""

DUMP_ATTEMPTS = 3
_RACES = ("in-flight", "External socket is used", "No such process")
"""CRIU errors of the sandbox moving under the dump, which planning again a moment later
gets past: a client connecting to init (a connection still in init's accept queue, or
accepted after the plan was made), or a process exiting just as CRIU takes hold of it (a
command finishing)."""



@dataclass(frozen=True)
class CheckpointImage:
    """A checkpoint on disk, as :meth:`Checkpointer.checkpoint` made it."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> CheckpointImage:
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError as exc:
            raise NotFound(f"no checkpoint at {path}") from exc
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"unreadable checkpoint at {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise InvalidArgument(
                f"checkpoint at {path} has format {meta.get('format')!r}, this Shoal reads {FORMAT}"
            )
        return cls(path, meta)

    @property
    def sandbox_id(self) -> str:
        return str(self.meta["sandbox_id"])

    @property
    def dump_seconds(self) -> float:
        return float(self.meta["dump_seconds"])

    def size_on_disk(self) -> int:
        """Bytes the image occupies (allocated blocks: the disk image is sparse)."""
        total = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total


class Checkpointer:
    """Checkpoints sandboxes of ``runtime`` and restores images into it."""

    def __init__(self, runtime: ContainerRuntime, criu: Path) -> None:
        if not os.access(criu, os.X_OK):
            raise RuntimeFailure(
                f"CRIU not found at {criu}: sandbox checkpoints need CRIU >= 4.1 "
                "(run scripts/setup, or set SHOAL_CRIU_PATH)"
            )
        self.runtime = runtime
        self.criu = str(criu)

    # -- checkpoint --------------------------------------------------------------------

    async def checkpoint(
        self, container: Container, image_dir: Path, *, leave_running: bool = False
    ) -> CheckpointImage:
        """Dump the sandbox's whole process tree and disk into ``image_dir`` (which must not
        exist). Without ``leave_running`` the sandbox is gone afterwards (its directory,
        mounts, cgroups and crun state removed) and ``container`` is closed; with it, the
        sandbox runs on (a snapshot). On failure the sandbox keeps running."""
        sid, pid = container.sandbox_id, container.init_pid
        d = self.runtime.dir_of(sid)
        tmp = await asyncio.to_thread(_new_image_dir, image_dir)
        try:
            for attempt in range(DUMP_ATTEMPTS):
                plan = await asyncio.to_thread(_plan_dump, pid, d)
                inodes = plan.socket_inodes
                plan.unix = await run_in_netns(
                    container.netns_path, functools.partial(_external_unix_sockets, inodes)
                )
                meta = await asyncio.to_thread(self._describe, container, d, plan)
                await asyncio.to_thread(_empty_dir, tmp / MEMORY)
                try:
                    if leave_running:
                        return await self._snapshot(container, d, plan, tmp, image_dir, meta)
                    return await self._dump_and_stop(container, d, plan, tmp, image_dir, meta)
                except _Race:
                    if attempt == DUMP_ATTEMPTS - 1:
                        raise
                # Init takes in (or drops) the connection, the process is gone: plan again.
                await asyncio.sleep(0.05 * (attempt + 1))
            raise AssertionError("unreachable")
        except _Stopped:
            raise
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise

    def _describe(self, container: Container, d: Path, plan: _DumpPlan) -> dict[str, Any]:
        config = json.loads((d / "bundle" / "config.json").read_text())
        return {
            "format": FORMAT,
            "sandbox_id": container.sandbox_id,
            "created_at": datetime.now(UTC).isoformat(),
            "uid_base": container.uid_base,
            "socket_name": container.socket_name,
            "boot_id": (d / "boot_id").read_text(),
            "template_rootfs": plan.lowerdir,
            "init_name": Path(plan.init_binary).name,
            "config": config,
            "mounts": plan.mounts,
            "files": plan.files,
            "unix": plan.unix,
        }

    def _dump_args(self, pid: int, images: Path, log: Path, plan: _DumpPlan) -> list[str]:
        args = [
            self.criu, "dump", "--tree", str(pid), "--images-dir", str(images),
            "--log-file", str(log), "-v4", "--manage-cgroups", "--freeze-cgroup", plan.freezer,
            "--tcp-established", "--skip-in-flight", "--file-locks",
            # The lock keeps peers from talking to sockets while they are dumped; here every
            # peer is inside the frozen tree's own namespace (an agent's tunnel is reset on
            # restore anyway), and skipping it saves ~15 ms and the need for nf_tables.
            "--network-lock", "skip", "--ghost-limit", GHOST_LIMIT,
        ]  # fmt: skip
        for m in plan.mounts:
            args += ["--external", f"mnt[{m['mountpoint']}]:{m['cookie']}"]
        for f in plan.files:
            args += ["--external", f["key"]]
        for u in plan.unix:
            args += ["--external", f"unix[{u['ino']}]"]
        return args

    async def _criu_dump(
        self, container: Container, tmp: Path, plan: _DumpPlan, leave_running: bool
    ) -> float:
        log = tmp / "dump.log"
        args = self._dump_args(container.init_pid, tmp / MEMORY, log, plan)
        if leave_running:
            args.append("--leave-running")
        started = time.perf_counter()
        # Frozen by us, the tree is seized at once: CRIU's own freezing polls the cgroup
        # every 100 ms. CRIU thaws it once the tasks are seized, and re-freezes it after a
        # --leave-running dump (it restores the state it found), which _snapshot relies on.
        await asyncio.to_thread(_freeze, plan.freezer, True)
        rc = await _run(args)
        elapsed = time.perf_counter() - started
        if rc != 0:
            await asyncio.to_thread(_freeze, plan.freezer, False)
            errors = _criu_errors(log)
            error = _Race if any(r in errors for r in _RACES) else RuntimeFailure
            raise error(
                f"checkpoint of sandbox {container.sandbox_id} failed (it keeps running): {errors}"
            )
        log.unlink()
        return elapsed

    async def _dump_and_stop(
        self,
        container: Container,
        d: Path,
        plan: _DumpPlan,
        tmp: Path,
        image_dir: Path,
        meta: dict[str, Any],
    ) -> CheckpointImage:
        meta["dump_seconds"] = await self._criu_dump(container, tmp, plan, leave_running=False)
        meta["leave_running"] = False
        # The tree is gone (CRIU killed it); nothing inside writes any more. From here on
        # the image is the sandbox's only copy: whatever fails, it is not deleted.
        try:
            container.close()
            await self.runtime.crun.delete(container.sandbox_id)
            await asyncio.to_thread(ContainerRuntime.release_disk, d, tmp / DISK)
            await self.runtime.destroy(container.sandbox_id)
            return await asyncio.to_thread(_finish_image, tmp, image_dir, plan, meta)
        except Exception as exc:
            raise _Stopped(
                f"sandbox {container.sandbox_id} was dumped and stopped, but finishing its "
                f"checkpoint failed: {exc}; what was written is kept in {tmp} "
                f"(disk image left in {d} if not there)"
            ) from exc

    async def _snapshot(
        self,
        container: Container,
        d: Path,
        plan: _DumpPlan,
        tmp: Path,
        image_dir: Path,
        meta: dict[str, Any],
    ) -> CheckpointImage:
        # The tree stays frozen after the dump (see _criu_dump), so the disk copy below is
        # of the same instant as the memory.
        try:
            meta["dump_seconds"] = await self._criu_dump(container, tmp, plan, leave_running=True)
            meta["leave_running"] = True
            await asyncio.to_thread(quota.copy_frozen, d / "disk", d / DISK, tmp / DISK)
        finally:
            await asyncio.to_thread(_freeze, plan.freezer, False)
        return await asyncio.to_thread(_finish_image, tmp, image_dir, plan, meta)

    # -- restore -----------------------------------------------------------------------

    async def restore(
        self,
        image_dir: Path,
        sandbox_id: str | None = None,
        *,
        template_rootfs: Path | None = None,
        hostname: str | None = None,
        consume: bool = False,
    ) -> Container:
        """Bring the checkpointed sandbox back as ``sandbox_id`` (default: its old id) in
        this runtime, processes and memory as they were. ``template_rootfs`` is this node's
        copy of the template layer (default: the path recorded at checkpoint);
        ``hostname`` gives the copy another hostname (default: kept). ``consume`` moves
        the disk out of the image instead of copying it and removes the image once the
        sandbox runs (resume after pause); otherwise the image can be restored again.

        On failure nothing of the new sandbox is left and the image is intact."""
        image = CheckpointImage.load(image_dir)
        meta = image.meta
        rt = self.runtime
        sid = sandbox_id or image.sandbox_id
        if meta["uid_base"] != rt.uid_base:
            raise InvalidArgument(
                f"checkpoint was made with uid base {meta['uid_base']}, this node uses "
                f"{rt.uid_base}: its files and user namespace would not match"
            )
        lower = Path(template_rootfs or meta["template_rootfs"])
        d = rt.dir_of(sid)
        if d.exists() or await rt.crun.state(sid) is not None:
            raise RuntimeFailure(f"sandbox {sid} already exists on this node")
        cgroup = rt.cgroup_path(sid)
        moved = False
        try:
            init_binary = await asyncio.to_thread(self._init_binary_for, image)
            moved = await asyncio.to_thread(
                _lay_out, d, image, lower, init_binary, cgroup, consume, hostname
            )
            pid = await self._criu_restore(image, d, init_binary, cgroup)
            # A snapshot was dumped from a frozen cgroup, and CRIU restores that state too.
            await asyncio.to_thread(_freeze, _freezer_of(pid), False)
            await asyncio.to_thread(_register_with_crun, rt, sid, pid, d)
            container = await rt.adopt(sid, meta["socket_name"])
            if container is None or container.init_pid != pid:
                raise RuntimeFailure(f"crun does not see restored sandbox {sid} running")
            if hostname is not None:
                await rt.set_hostname(sid, pid, hostname)
        except BaseException:
            await self._undo_restore(sid, d, image if moved else None)
            raise
        if consume:
            shutil.rmtree(image.path, ignore_errors=True)
        return container

    def _init_binary_for(self, image: CheckpointImage) -> Path:
        """This node's copy of the init binary the image's processes run (CRIU maps the
        very same file back): the runtime's own if it is that version, else installed next
        to it from the image, as initbin keeps versions side by side."""
        name = image.meta["init_name"]
        target = self.runtime.init_binary.parent / name
        if target.exists():
            return target
        tmp = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(image.path / INIT_COPY, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        return target

    async def _criu_restore(
        self, image: CheckpointImage, d: Path, init_binary: Path, cgroup: str
    ) -> int:
        meta = image.meta
        args = [
            self.criu, "restore", "--images-dir", str(image.path / MEMORY),
            "--work-dir", str(d), "--log-file", str(d / "restore.log"), "-v4",
            "--root", str(d / "rootfs"), "--restore-detached", "--pidfile", str(d / "init.pid"),
            "--manage-cgroups", "--cgroup-root", cgroup,
            "--tcp-established", "--file-locks",
        ]  # fmt: skip
        for m in meta["mounts"]:
            source = {INIT_COOKIE: str(init_binary), BOOT_ID_COOKIE: str(d / "boot_id")}.get(
                m["cookie"], m["cookie"]
            )
            args += ["--external", f"mnt[{m['cookie']}]:{source}"]
        fds: list[int] = []
        try:
            for f in meta["files"]:
                if f["kind"] == "log":
                    fd = os.open(d / "init.log", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                else:
                    fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
                fds.append(fd)
                args += ["--inherit-fd", f"fd[{fd}]:{f['key']}"]
            for u in meta["unix"]:
                # A client that was connected from outside: init gets a socket whose
                # peer is already gone, reads end of file and forgets the client.
                ours, theirs = socket.socketpair(socket.AF_UNIX, u["type"])
                theirs.close()
                fd = ours.detach()
                fds.append(fd)
                args += ["--inherit-fd", f"fd[{fd}]:socket:[{u['ino']}]"]
            rc = await _run(args, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        if rc != 0:
            raise RuntimeFailure(
                f"restore of sandbox {meta['sandbox_id']} failed (the checkpoint is kept): "
                f"{_criu_errors(d / 'restore.log')}"
            )
        return int((d / "init.pid").read_text().strip())

    async def _undo_restore(self, sid: str, d: Path, image: CheckpointImage | None) -> None:
        rt = self.runtime
        await rt.crun.delete(sid)  # only does something once registered
        await asyncio.to_thread(_remove_cgroups, rt.cgroup_path(sid))
        if image is not None:  # consumed: the disk goes back into the image
            await asyncio.to_thread(ContainerRuntime.release_disk, d, image.path / DISK)
        await rt.destroy(sid)


# -- what to tell CRIU --------------------------------------------------------------------


class _Race(RuntimeFailure):
    pass


class _Stopped(RuntimeFailure):
    """The tree was dumped and killed, then something after failed: keep the image."""


def _empty_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()


@dataclass
class _DumpPlan:
    lowerdir: str
    init_binary: str
    freezer: str
    mounts: list[dict[str, str]]
    files: list[dict[str, str]]
    socket_inodes: set[int]
    unix: list[dict[str, int]]


@dataclass(frozen=True)
class _Mount:
    mount_id: int
    dev: str
    root: str
    mountpoint: str
    fstype: str
    options: str


def _mountinfo(path: str) -> list[_Mount]:
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            out.append(
                _Mount(
                    mount_id=int(fields[0]),
                    dev=fields[2],
                    root=_unescape(fields[3]),
                    mountpoint=_unescape(fields[4]),
                    fstype=rest[0],
                    options=rest[2] if len(rest) > 2 else "",
                )
            )
    return out


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _host_path(dev: str, root: str, host: list[_Mount]) -> str | None:
    """Where the file ``root`` of filesystem ``dev`` is visible on the host."""
    best: _Mount | None = None
    for m in host:
        if m.dev != dev:
            continue
        prefix = m.root.rstrip("/")
        if (root == m.root or root.startswith(prefix + "/")) and (
            best is None or len(m.root) > len(best.root)
        ):
            best = m
    if best is None:
        return None
    rest = root[len(best.root.rstrip("/")) :]
    return best.mountpoint.rstrip("/") + rest if rest else best.mountpoint


def _plan_dump(pid: int, d: Path) -> _DumpPlan:
    mounts = _mountinfo(f"/proc/{pid}/mountinfo")
    host = _mountinfo("/proc/self/mountinfo")
    root = next((m for m in mounts if m.mountpoint == "/"), None)
    if root is None or root.fstype != "overlay":
        raise RuntimeFailure(f"sandbox init {pid} has no overlay root")
    opts = dict(o.partition("=")[::2] for o in root.options.split(","))
    # A filesystem some mount of the container shows from its root is the container's own
    # (proc, tmpfs, devpts, the overlay...); binds of anything else came from the host.
    own = {m.dev for m in mounts if m.root == "/"}
    external: dict[str, dict[str, str]] = {}
    init_binary = ""
    for m in mounts:
        if m.dev in own or m.fstype in ("cgroup", "cgroup2") or m.mountpoint in external:
            continue
        source = _host_path(m.dev, m.root, host)
        if m.mountpoint == oci.INIT_PATH:
            if source is None:
                raise RuntimeFailure(f"cannot find the host file behind {oci.INIT_PATH}")
            init_binary = source
            external[m.mountpoint] = {"mountpoint": m.mountpoint, "cookie": INIT_COOKIE}
        elif m.mountpoint == BOOT_ID_PATH:
            external[m.mountpoint] = {"mountpoint": m.mountpoint, "cookie": BOOT_ID_COOKIE}
        elif source is not None and source.startswith("/dev/") and _is_char_device(source):
            # Device nodes (and /dev/null over masked /proc files) are the same on every
            # host: the cookie is the host path, mapped back to itself on restore.
            external[m.mountpoint] = {"mountpoint": m.mountpoint, "cookie": source}
        else:
            raise RuntimeFailure(
                f"sandbox has a bind mount at {m.mountpoint} from the host ({source or m.root}) "
                "that a checkpoint cannot carry"
            )
    if not init_binary:
        raise RuntimeFailure(f"sandbox init {pid} has no {oci.INIT_PATH} mount")
    pids = _tree_pids(pid)
    files, inodes = _foreign_files(pids, {m.mount_id for m in mounts}, d / "init.log")
    return _DumpPlan(
        lowerdir=opts.get("lowerdir", ""),
        init_binary=init_binary,
        freezer=_freezer_of(pid),
        mounts=list(external.values()),
        files=files,
        socket_inodes=inodes,
        unix=[],
    )


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _cgroups_of(pid: int) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller: path}; the unified hierarchy is ``""``."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c.removeprefix("name=")] = path
    return out


def _unified_root() -> Path:
    hybrid = CGROUP_ROOT / "unified"
    return hybrid if (hybrid / "cgroup.procs").exists() else CGROUP_ROOT


def _freezer_of(pid: int) -> str:
    cgroups = _cgroups_of(pid)
    if "freezer" in cgroups:
        return str(CGROUP_ROOT / "freezer" / cgroups["freezer"].lstrip("/"))
    return str(_unified_root() / cgroups[""].lstrip("/"))


def _tree_pids(pid: int) -> list[int]:
    procs = Path(_freezer_of(pid)) / "cgroup.procs"
    return [int(p) for p in procs.read_text().split()]


def _foreign_files(
    pids: list[int], own_mounts: set[int], init_log: Path
) -> tuple[list[dict[str, str]], set[int]]:
    """Files the tree holds open from outside the container's mounts (init's stdio, opened
    by crun on the host), as CRIU keys; and every socket inode the tree holds."""
    files: dict[str, dict[str, str]] = {}
    sockets: set[int] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
                if link.startswith("socket:["):
                    sockets.add(int(link[8:-1]))
                    continue
                if not link.startswith("/") or link.startswith("/memfd:"):
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    mnt_id = next(
                        int(line.split()[1]) for line in info if line.startswith("mnt_id:")
                    )
            except (OSError, StopIteration, ValueError):
                continue
            if mnt_id in own_mounts or not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
                continue
            key = f"file[{mnt_id:x}:{st.st_ino:x}]"
            files[key] = {"key": key, "kind": "log" if link == str(init_log) else "null"}
    return list(files.values()), sockets


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_PEER = 0x4
_UNIX_DIAG_PEER = 2


def _external_unix_sockets(tree: set[int]) -> list[dict[str, int]]:
    """Unix sockets of the tree whose peer is not in the tree: init's connections from the
    agent. Runs in the sandbox's network namespace (sock_diag lists that namespace's)."""
    peers: dict[int, tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        req = struct.pack(
            "=BBHIIIII",
            socket.AF_UNIX,
            0,
            0,
            0xFFFFFFFF,
            0,
            _UDIAG_SHOW_PEER,
            0xFFFFFFFF,
            0xFFFFFFFF,
        )
        nl.send(
            struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0)
            + req
        )
        done = False
        while not done:
            data = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
                _, sk_type, _, _, ino = struct.unpack_from("=BBBBI", data, off + 16)
                peer, a = 0, off + 16 + 16
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if atype == _UNIX_DIAG_PEER:
                        (peer,) = struct.unpack_from("=I", data, a + 4)
                    a += (alen + 3) & ~3
                peers[ino] = (sk_type, peer)
                off += (length + 3) & ~3
    return [
        {"ino": ino, "type": peers[ino][0]}
        for ino in sorted(tree)
        if ino in peers and peers[ino][1] and peers[ino][1] not in tree
    ]


# -- disk ----------------------------------------------------------------------------------


def _freeze(freezer: str, frozen: bool) -> None:
    """Freeze or thaw a cgroup (v1 freezer or v2 cgroup.freeze) and wait until it is."""
    path = Path(freezer)
    v1 = (path / "freezer.state").exists()
    if v1:
        (path / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
    else:
        (path / "cgroup.freeze").write_text("1" if frozen else "0")
    want = "FROZEN" if frozen else "THAWED"
    for attempt in range(500):
        if v1:
            if (path / "freezer.state").read_text().strip() == want:
                return
        elif f"frozen {int(frozen)}" in (path / "cgroup.events").read_text():
            return
        time.sleep(0.001 * min(attempt + 1, 10))
    raise RuntimeFailure(f"cgroup {freezer} did not become {want.lower()}")


def _new_image_dir(image_dir: Path) -> Path:
    """A temporary sibling of ``image_dir`` to write the image into (renamed when done)."""
    if os.path.lexists(image_dir):
        raise AlreadyExists(f"{image_dir} already exists")
    tmp = image_dir.with_name(f".{image_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def _finish_image(tmp: Path, final: Path, plan: _DumpPlan, meta: dict[str, Any]) -> CheckpointImage:
    shutil.copyfile(plan.init_binary, tmp / INIT_COPY)
    meta["criu_bytes"] = sum(p.stat().st_size for p in (tmp / MEMORY).iterdir())
    meta["disk_bytes"] = (tmp / DISK).stat().st_blocks * 512
    (tmp / META).write_text(json.dumps(meta, indent=1))
    os.rename(tmp, final)
    return CheckpointImage(final, meta)


# -- restore helpers -------------------------------------------------------------------------


def _lay_out(
    d: Path,
    image: CheckpointImage,
    lower: Path,
    init_binary: Path,
    cgroup: str,
    consume: bool,
    hostname: str | None,
) -> bool:
    """The new sandbox's directory, disk, overlay and bundle, as ``ContainerRuntime.start``
    lays them out, but with the checkpoint's disk. Returns whether the disk was moved out
    of the image (``consume``)."""
    meta, uid_base = image.meta, image.meta["uid_base"]
    if not lower.is_dir():
        raise NotFound(f"template layer {lower} of the checkpoint is not on this node")
    d.mkdir(parents=True)
    for p in ("disk", "rootfs", "bundle"):
        (d / p).mkdir()
    moved = False
    if consume:
        try:
            os.rename(image.path / DISK, d / DISK)
            moved = True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    if not moved:
        quota.copy_sparse(image.path / DISK, d / DISK)
    quota.mount_image(d / DISK, d / "disk")
    (d / "boot_id").write_text(meta["boot_id"])
    # CRIU reopens init's stderr through /proc as the sandbox's root: let that user.
    fd = os.open(d / "init.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    os.chown(d / "init.log", uid_base, uid_base)
    overlay.mount_overlay(
        str(lower), str(d / "disk/upper"), str(d / "disk/work"), str(d / "rootfs")
    )
    config = meta["config"]
    config["root"]["path"] = str(d / "rootfs")
    for m in config["mounts"]:
        if m["destination"] == oci.INIT_PATH:
            m["source"] = str(init_binary)
        elif m["destination"] == BOOT_ID_PATH:
            m["source"] = str(d / "boot_id")
    config["linux"]["cgroupsPath"] = cgroup
    if hostname is not None:
        config["hostname"] = hostname
    (d / "bundle" / "config.json").write_text(json.dumps(config))
    _make_cgroup_parents(cgroup)
    return moved


def _cgroup_mounts() -> list[Path]:
    return [
        Path(m.mountpoint)
        for m in _mountinfo("/proc/self/mountinfo")
        if m.fstype in ("cgroup", "cgroup2") and m.mountpoint.startswith(str(CGROUP_ROOT))
    ]


def _make_cgroup_parents(cgroup: str) -> None:
    """Make this node's parent cgroups (CRIU makes the sandbox's own and sets its limits);
    a leftover cgroup of the same name would keep its old limits, so it must be gone."""
    parts = cgroup.strip("/").split("/")
    for hierarchy in _cgroup_mounts():
        leaf = hierarchy.joinpath(*parts)
        if leaf.exists():
            try:
                os.rmdir(leaf)
            except OSError as exc:
                raise RuntimeFailure(f"cgroup {leaf} exists and is in use") from exc
        parent = hierarchy
        for part in parts[:-1]:
            child = parent / part
            if not child.is_dir():
                with contextlib.suppress(FileExistsError):
                    child.mkdir()
                for name in ("cpuset.cpus", "cpuset.mems"):  # v1: empty until copied down
                    if (child / name).exists() and not (child / name).read_text().strip():
                        (child / name).write_text((parent / name).read_text())
            parent = child


def _remove_cgroups(cgroup: str) -> None:
    """Kill whatever a failed restore left in the sandbox's cgroups and remove them."""
    parts = cgroup.strip("/").split("/")
    for hierarchy in _cgroup_mounts():
        leaf = hierarchy.joinpath(*parts)
        for attempt in range(50):
            try:
                for p in (leaf / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(p), 9)
                os.rmdir(leaf)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY until the killed processes are gone
                time.sleep(0.01 * (attempt + 1))


def _register_with_crun(rt: ContainerRuntime, sid: str, pid: int, d: Path) -> None:
    """Record the restored container in crun's state directory as ``crun restore`` does,
    so crun (and so ContainerRuntime) manages it like any container it started.

    Coupling: this is crun 1.x's ``status`` format (libcrun/status.c); ``process-start-time``
    lets crun tell the pid from a reused one."""
    state = Path(rt.crun.state_root) / sid
    state.mkdir(mode=0o700)
    stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = {
        "pid": pid,
        "process-start-time": int(stat_fields[19]),
        "cgroup-path": rt.cgroup_path(sid),
        "scope": "",
        "rootfs": str(d / "rootfs"),
        "systemd-cgroup": False,
        "bundle": str(d / "bundle"),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "owner": "root",
        "detached": True,
        "external_descriptors": json.dumps(["/dev/null", "/dev/null", str(d / "init.log")]),
    }
    shutil.copyfile(d / "bundle" / "config.json", state / "config.json")
    tmp = state / "status.tmp"
    tmp.write_text(json.dumps(status, indent=4))
    os.replace(tmp, state / "status")


# -- running criu ----------------------------------------------------------------------------


async def _run(args: list[str], pass_fds: list[int] | None = None) -> int:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        pass_fds=pass_fds or (),
    )
    return await proc.wait()


def _criu_errors(log: Path, limit: int = 6) -> str:
    """The error lines of a CRIU log (its noise about iptables binaries and rlimits left
    out), for the exception message."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"no CRIU log at {log}"
    noise = ("iptables", "ip6tables", "RLIMIT_NOFILE", "already assigned", "cgroupd: recv")
    errors = [ln.strip() for ln in lines if "Error" in ln and not any(n in ln for n in noise)]
    return "; ".join(errors[-limit:]) or (lines[-1] if lines else "CRIU failed without a log")


__all__ = ["CheckpointImage", "Checkpointer"]
