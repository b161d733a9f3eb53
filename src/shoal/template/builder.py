"""Building a template's root filesystem from its recipe, once, and switching to it atomically.

On disk (``templates_path`` is ``Settings.templates_path``)::

    <templates_path>/<name>/
        .lock                 serializes builders of this template (flock)
        current -> <hash>     switched with rename(2) after a build succeeded
        <hash>/template.json  what the store serves (see TemplateStore)
        <hash>/rootfs/        owners shifted by uid_base; read-only lower layer of sandboxes
        <hash>/build.log
        .build-<hash>-<pid>/  a build in progress; removed on failure or by the next builder

Pipeline: bootstrap (mmdebstrap, ``minbase`` plus the recipe's packages, from the host's own
Debian archive) → dress (user, sudoers, hostname, hosts, resolv.conf, machine-id, caches
removed) → shift owners (``ownership.shift_ids``) → write ``template.json`` → rename into
place → switch ``current`` → prune (keep the new and the previous build, and any build
still mounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import Forbidden, RuntimeFailure
from shoal.template.mirror import host_mirror
from shoal.template.ownership import shift_ids
from shoal.template.recipe import Recipe

BUILDER_VERSION = 1
"""Bump when the builder's output changes for an unchanged recipe: every template rebuilds."""

CURRENT = "current"
TEMPLATE_JSON = "template.json"

Bootstrap = Callable[[Recipe, Path, str, Path], Awaitable[None]]
"""``(recipe, empty rootfs dir, mirror URI, log file)``: install the recipe's packages."""


@dataclass(frozen=True)
class BuildResult:
    name: str
    build_hash: str
    path: Path
    """The build directory (``<templates_path>/<name>/<hash>``)."""
    cached: bool
    """True when an existing build already matched the recipe."""
    seconds: float
    size_bytes: int


async def mmdebstrap(recipe: Recipe, rootfs: Path, mirror: str, log: Path) -> None:
    """Bootstrap ``recipe.suite`` with mmdebstrap into the empty directory ``rootfs``."""
    if shutil.which("mmdebstrap") is None:
        raise RuntimeFailure("mmdebstrap is not installed: run scripts/setup")
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        "--include=" + ",".join(sorted(set(recipe.packages))),
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt=path-exclude={glob}" for glob in recipe.path_excludes),
        *(f"--dpkgopt=path-include={glob}" for glob in recipe.path_includes),
        recipe.suite,
        str(rootfs),
        mirror,
    ]
    with log.open("ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            # mmdebstrap mounts /proc etc. in the target; it unmounts them on SIGTERM.
            proc.terminate()
            await asyncio.shield(proc.wait())
            raise
    if code != 0:
        raise RuntimeFailure(f"mmdebstrap exited with {code}:\n{_tail(log)}")


class TemplateBuilder:
    """Builds templates under ``templates_path``; safe to call again and again.

    builder = TemplateBuilder(settings.templates_path, settings.uid_base)
    result = await builder.build(RECIPES["base"])   # no-op when already built
    """

    def __init__(
        self,
        templates_path: Path,
        uid_base: int,
        *,
        mirror: str | None = None,
        bootstrap: Bootstrap = mmdebstrap,
    ) -> None:
        self.templates_path = templates_path
        self.uid_base = uid_base
        self._mirror = mirror
        self._bootstrap = bootstrap

    def build_hash(self, recipe: Recipe) -> str:
        return recipe.digest(BUILDER_VERSION, self.uid_base)

    async def build(self, recipe: Recipe, *, force: bool = False) -> BuildResult:
        """Make ``current`` point at a complete build of ``recipe``; build it if needed."""
        if os.geteuid() != 0:
            raise Forbidden("building a template needs root (files are chowned)")
        started = time.monotonic()
        parent = self.templates_path / recipe.name
        parent.mkdir(parents=True, exist_ok=True)
        build_hash = self.build_hash(recipe)
        final = parent / build_hash
        lock_fd = os.open(parent / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Another set-up run may be building the same template: wait for it.
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            if not force and (final / TEMPLATE_JSON).is_file():
                previous = _switch(parent, build_hash)
                if previous is not None:
                    await asyncio.to_thread(_prune, parent, {build_hash, previous})
                meta = json.loads((final / TEMPLATE_JSON).read_text())
                return BuildResult(
                    recipe.name,
                    build_hash,
                    final,
                    True,
                    time.monotonic() - started,
                    int(meta.get("size_bytes", 0)),
                )
            await asyncio.to_thread(_remove_stale_builds, parent)
            work, size = await self._build_into(recipe, parent, build_hash, started)
            previous = _readlink(parent / CURRENT)
            if final.exists():
                # A forced rebuild of the same recipe: keep the old tree as "previous".
                aside = f"{build_hash}-{int(time.time())}"
                final.rename(parent / aside)
                previous = aside
            work.rename(final)
            _switch(parent, build_hash)
            await asyncio.to_thread(_prune, parent, {build_hash, previous or build_hash})
            return BuildResult(
                recipe.name, build_hash, final, False, time.monotonic() - started, size
            )
        finally:
            os.close(lock_fd)

    async def _build_into(
        self, recipe: Recipe, parent: Path, build_hash: str, started: float
    ) -> tuple[Path, int]:
        work = parent / f".build-{build_hash}-{os.getpid()}"
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        log = work / "build.log"
        try:
            mirror = self._mirror or host_mirror()
            await self._bootstrap(recipe, rootfs, mirror, log)
            await asyncio.to_thread(dress, rootfs, recipe)
            stats = await asyncio.to_thread(shift_ids, rootfs, self.uid_base)
            meta = {
                "name": recipe.name,
                "build_hash": build_hash,
                "builder_version": BUILDER_VERSION,
                "built_at": datetime.datetime.now(datetime.UTC).isoformat(),
                "build_seconds": round(time.monotonic() - started, 1),
                "size_bytes": stats.size_bytes,
                "entries": stats.entries,
                "suite": recipe.suite,
                "mirror": mirror,
                "default_user": recipe.user,
                "default_workdir": recipe.workdir,
                "hostname": recipe.hostname,
                "uid_base": self.uid_base,
                "env": recipe.environment,
                "recipe": recipe.canonical(),
            }
            tmp = work / (TEMPLATE_JSON + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            tmp.rename(work / TEMPLATE_JSON)
            return work, stats.size_bytes
        except BaseException:
            # Synchronous on purpose: a cancelled build must still leave no half template.
            shutil.rmtree(work, ignore_errors=True)
            raise


def dress(rootfs: Path, recipe: Recipe) -> None:
    """Make the bootstrapped tree a sandbox's root: user, sudo, names, no caches.

    Runs before the owner shift, so ids here are the ones seen inside the sandbox.
    """
    etc = rootfs / "etc"
    _add_user(rootfs, recipe)
    if recipe.sudo:
        sudoers = etc / "sudoers.d" / recipe.user
        sudoers.parent.mkdir(mode=0o755, exist_ok=True)
        _write(sudoers, f"{recipe.user} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    _write(etc / "hostname", recipe.hostname + "\n", 0o644)
    _write(
        etc / "hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )
    # The runtime provides DNS per sandbox; mmdebstrap leaves the host's file here.
    _write(etc / "resolv.conf", "", 0o644)
    # systemd-style tools expect the file; empty means "not yet initialised".
    _write(etc / "machine-id", "", 0o444)
    for pattern in (
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "var/log/*.log",
        "var/log/apt/*",
        "tmp/*",
        "var/tmp/*",
        "root/.bash_history",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _add_user(rootfs: Path, recipe: Recipe) -> None:
    etc = rootfs / "etc"
    name, uid, gid = recipe.user, recipe.uid, recipe.gid
    _append_entry(
        etc / "passwd", name, f"{name}:x:{uid}:{gid}::{recipe.home}:{recipe.shell}", 0o644
    )
    _append_entry(etc / "group", name, f"{name}:x:{gid}:", 0o644)
    _append_entry(etc / "shadow", name, f"{name}:!:19000:0:99999:7:::", 0o640)
    _append_entry(etc / "gshadow", name, f"{name}:!::", 0o640)
    home = rootfs / recipe.home.lstrip("/")
    if not home.exists():
        skel = etc / "skel"
        if skel.is_dir():
            shutil.copytree(skel, home, symlinks=True)
        else:
            home.mkdir(parents=True)
        home.chmod(0o755)
        for path in [home, *home.rglob("*")]:
            os.lchown(path, uid, gid)
    workdir = rootfs / recipe.workdir.lstrip("/")
    if not workdir.exists():
        workdir.mkdir(parents=True)
        os.chown(workdir, uid, gid)


def _append_entry(path: Path, name: str, line: str, mode: int) -> None:
    text = path.read_text() if path.exists() else ""
    if any(existing.split(":", 1)[0] == name for existing in text.splitlines()):
        return
    if text and not text.endswith("\n"):
        text += "\n"
    # shadow files are root:shadow on Debian; keep whatever group the package gave them.
    st = path.stat() if path.exists() else None
    _write(path, text + line + "\n", mode)
    if st is not None:
        os.chown(path, st.st_uid, st.st_gid)
        path.chmod(st.st_mode & 0o7777)


def _write(path: Path, text: str, mode: int) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _readlink(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


def _switch(parent: Path, build_hash: str) -> str | None:
    """Point ``current`` at ``build_hash``; return the old target if it changed."""
    old = _readlink(parent / CURRENT)
    if old == build_hash:
        return None
    tmp = parent / f".{CURRENT}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(build_hash, tmp)
    os.replace(tmp, parent / CURRENT)
    return old


def _mounted_paths() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""


def _prune(parent: Path, keep: set[str]) -> None:
    """Delete builds other than ``keep`` unless a sandbox still mounts their rootfs."""
    mounts = _mounted_paths()
    for path in parent.iterdir():
        if path.name.startswith(".") or path.name == CURRENT or path.name in keep:
            continue
        if not path.is_dir() or path.is_symlink():
            continue
        if str(path / "rootfs") in mounts:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_builds(parent: Path) -> None:
    """Remove what builders that died mid-way left; callers hold the lock."""
    for path in parent.glob(".build-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in parent.glob(f".{CURRENT}.*"):
        path.unlink(missing_ok=True)


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
