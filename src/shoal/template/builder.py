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
removed) → copy host packages and run provision scripts in a chroot, if the recipe has any
(pip/npm reach their default registries with the host's resolv.conf and CA bundle lent to
the tree meanwhile; caches removed again afterwards) → shift owners
(``ownership.shift_ids``) → write ``template.json`` → rename into place → switch
``current`` → prune (keep the new and the previous build, and any build still mounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import importlib.util
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
from shoal.template.recipe import PackageCopy, Provision, Recipe

BUILDER_VERSION = 1
"""Bump when the builder's output changes for an unchanged recipe: every template rebuilds."""

CURRENT = "current"
TEMPLATE_JSON = "template.json"

Bootstrap = Callable[[Recipe, Path, str, Path], Awaitable[None]]
"""``(recipe, empty rootfs dir, mirror URI, log file)``: install the recipe's packages."""

Provisioner = Callable[[Recipe, Provision, Path, Path], Awaitable[None]]
"""``(recipe, step, rootfs, log file)``: run one provision step inside the tree."""

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Lent to provision steps: the host may reach registries through a TLS-inspecting proxy
whose CA only the host trusts."""
_BUILD_CA = "tmp/.shoal-build-ca.crt"
_PASS_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


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


async def chroot_provision(recipe: Recipe, step: Provision, rootfs: Path, log: Path) -> None:
    """Run ``step.script`` with bash in ``rootfs`` (own mount and pid namespace, /proc)."""
    if step.user == "root":
        uid, gid, home = 0, 0, "/root"
    elif step.user == recipe.user:
        uid, gid, home = recipe.uid, recipe.gid, recipe.home
    else:
        raise RuntimeFailure(f"provision step {step.name!r}: unknown user {step.user!r}")
    env = {
        "HOME": home,
        "USER": step.user,
        "LOGNAME": step.user,
        "PATH": recipe.environment.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "DEBIAN_FRONTEND": "noninteractive",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": "120",
        "npm_config_update_notifier": "false",
    }
    if step.network:
        ca = "/" + _BUILD_CA
        env.update(
            PIP_CERT=ca,
            SSL_CERT_FILE=ca,
            REQUESTS_CA_BUNDLE=ca,
            NODE_EXTRA_CA_CERTS=ca,
            npm_config_cafile=ca,
        )
        env.update({k: v for k, v in os.environ.items() if k in _PASS_ENV})
    argv = [
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        f"--mount-proc={rootfs / 'proc'}",
        "chroot",
        *([f"--userspec={uid}:{gid}", "--groups="] if uid else []),
        str(rootfs),
        "/usr/bin/env",
        "-i",
        *(f"{k}={v}" for k, v in sorted(env.items())),
        "/bin/bash",
        "-euxo",
        "pipefail",
        "-c",
        step.script,
    ]
    with log.open("ab") as out:
        out.write(f"\n### provision: {step.name} (as {step.user})\n".encode())
        out.flush()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd="/"
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            proc.terminate()
            await asyncio.shield(proc.wait())
            raise
    if code != 0:
        raise RuntimeFailure(f"provision step {step.name!r} exited with {code}:\n{_tail(log)}")


def package_source(copy: PackageCopy) -> Path | None:
    """The host directory of ``copy.package``, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(copy.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_files(source: Path) -> list[Path]:
    return sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def copies_digest(recipe: Recipe) -> str:
    """sha256 over the content of every host package the recipe copies ("" if none)."""
    if not recipe.copies:
        return ""
    h = hashlib.sha256()
    for copy in recipe.copies:
        h.update(f"{copy.package}\0{copy.dest}\0".encode())
        source = package_source(copy)
        if source is None:
            h.update(b"missing\0")
            continue
        for path in _package_files(source):
            h.update(str(path.relative_to(source)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def copy_packages(rootfs: Path, recipe: Recipe) -> dict[str, bool]:
    """Copy each host package into the tree (root-owned, world-readable); name → copied."""
    copied: dict[str, bool] = {}
    for copy in recipe.copies:
        source = package_source(copy)
        if source is None:
            if copy.required:
                raise RuntimeFailure(f"package {copy.package} is not installed on the host")
            copied[copy.package] = False
            continue
        target = rootfs / copy.dest.lstrip("/") / Path(*copy.package.split("."))
        if target.exists():
            shutil.rmtree(target)
        for path in _package_files(source):
            dest = target / path.relative_to(source)
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            dest.chmod(0o644)
        for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        copied[copy.package] = True
    return copied


def _lend_network(rootfs: Path) -> None:
    _write(rootfs / "etc" / "resolv.conf", Path("/etc/resolv.conf").read_text(), 0o644)
    ca = rootfs / _BUILD_CA
    ca.parent.mkdir(exist_ok=True)
    _write(ca, HOST_CA_BUNDLE.read_text() if HOST_CA_BUNDLE.is_file() else "", 0o644)


def _take_back_network(rootfs: Path) -> None:
    _write(rootfs / "etc" / "resolv.conf", "", 0o644)
    (rootfs / _BUILD_CA).unlink(missing_ok=True)


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
        provisioner: Provisioner = chroot_provision,
    ) -> None:
        self.templates_path = templates_path
        self.uid_base = uid_base
        self._mirror = mirror
        self._bootstrap = bootstrap
        self._provisioner = provisioner

    def build_hash(self, recipe: Recipe) -> str:
        digest = recipe.digest(BUILDER_VERSION, self.uid_base)
        copies = copies_digest(recipe)
        if not copies:
            return digest
        return hashlib.sha256(f"{digest}:{copies}".encode()).hexdigest()

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
            copied = await asyncio.to_thread(copy_packages, rootfs, recipe)
            if recipe.provision:
                await self._provision(recipe, rootfs, log)
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
            if recipe.start_cmd:
                meta["start_cmd"] = recipe.start_cmd
            for key in ("ready_port", "cpu_count", "memory_mb"):
                if getattr(recipe, key) is not None:
                    meta[key] = getattr(recipe, key)
            if recipe.kernels:
                meta["kernels"] = sorted(set(recipe.kernels))
            if copied:
                meta["copied_packages"] = copied
            tmp = work / (TEMPLATE_JSON + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            tmp.rename(work / TEMPLATE_JSON)
            return work, stats.size_bytes
        except BaseException:
            # Synchronous on purpose: a cancelled build must still leave no half template.
            shutil.rmtree(work, ignore_errors=True)
            raise

    async def _provision(self, recipe: Recipe, rootfs: Path, log: Path) -> None:
        try:
            for step in recipe.provision:
                if step.network:
                    await asyncio.to_thread(_lend_network, rootfs)
                try:
                    await self._provisioner(recipe, step, rootfs, log)
                finally:
                    _take_back_network(rootfs)
        finally:
            clean(rootfs)
        if recipe.kernels:
            missing = [k for k in recipe.kernels if not _has_kernelspec(rootfs, k)]
            if missing:
                raise RuntimeFailure(f"kernelspecs not registered: {', '.join(missing)}")


def _has_kernelspec(rootfs: Path, name: str) -> bool:
    return any(
        (rootfs / prefix / "share/jupyter/kernels" / name / "kernel.json").is_file()
        for prefix in ("usr/local", "usr")
    )


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
    clean(rootfs)


def clean(rootfs: Path) -> None:
    """Remove caches, logs and temporary files that a build leaves behind."""
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
        "root/.cache",
        "root/.npm",
        "root/.config/pip",
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
