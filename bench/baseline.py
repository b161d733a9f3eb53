"""The floor Shoal's numbers sit beside: bare ``crun`` containers of the same rootfs.

Every container gets a throwaway overlay over the ``base`` template's rootfs and a bundle
whose ``config.json`` is ``crun spec``'s default plus what Shoal adds for isolation: a user
namespace with Shoal's id mapping (root inside = the template's ``uid_base`` outside), a
cgroup namespace, and cpu/memory/pids limits (which make crun create the cgroups we read
memory from). No seccomp filter, crun's default (smaller) capability set, no init binary.
Everything lives in a temporary directory with its own crun state root and its own cgroup
parent, all removed by :meth:`CrunBaseline.close`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.memory import MemoryCost, cgroup_cost, host_delta, settled_mem_available
from bench.stats import Latency
from shoal.runtime import overlay

CGROUP_PARENT = "shoal-bench"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ID_RANGE = 65536


@dataclass
class _Box:
    """One baseline container's on-disk layout."""

    cid: str
    dir: Path
    mounted: bool = False

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def cgroup_path(self) -> str:
        return f"/{CGROUP_PARENT}/{self.cid}"


class CrunBaseline:
    def __init__(self, template_rootfs: Path, uid_base: int) -> None:
        self.crun = shutil.which("crun") or "/usr/bin/crun"
        self.lower = template_rootfs
        self.uid_base = uid_base
        # Not under a 0700 directory: crun sets the rootfs up as the namespaced root,
        # which must be able to reach it.
        self.work = Path(tempfile.mkdtemp(prefix="shoal-bench-crun-", dir="/var/tmp"))
        self.work.chmod(0o755)
        self.state = self.work / "state"
        self.state.mkdir()
        self._boxes: dict[str, _Box] = {}
        self._seq = 0
        self._base_config = self._crun_spec()

    # -- layout ---------------------------------------------------------------------------

    def _crun_spec(self) -> dict[str, Any]:
        d = self.work / "spec"
        d.mkdir()
        subprocess.run([self.crun, "spec"], cwd=d, check=True, capture_output=True)
        config: dict[str, Any] = json.loads((d / "config.json").read_text())
        shutil.rmtree(d)
        return config

    def _config(self, box: _Box, args: Sequence[str]) -> dict[str, Any]:
        config = copy.deepcopy(self._base_config)
        config["process"]["terminal"] = False
        config["process"]["args"] = list(args)
        config["root"] = {"path": str(box.rootfs), "readonly": False}
        linux = config["linux"]
        mapping = [{"containerID": 0, "hostID": self.uid_base, "size": ID_RANGE}]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = copy.deepcopy(mapping)
        have = {ns["type"] for ns in linux["namespaces"]}
        for ns in ("pid", "network", "ipc", "uts", "mount", "user", "cgroup"):
            if ns not in have:
                linux["namespaces"].append({"type": ns})
        linux["cgroupsPath"] = box.cgroup_path
        mem = 512 * 2**20
        linux.setdefault("resources", {}).update(
            {
                "memory": {"limit": mem, "swap": mem},
                "cpu": {"quota": 200_000, "period": 100_000, "shares": 1024},
                "pids": {"limit": 4096},
            }
        )
        return config

    def _prepare(self, args: Sequence[str]) -> _Box:
        self._seq += 1
        cid = f"shoal-bench-{os.getpid()}-{self._seq}"
        box = _Box(cid, self.work / cid)
        self._boxes[cid] = box
        upper, workdir = box.dir / "upper", box.dir / "work"
        for p in (box.dir, upper, workdir, box.rootfs):
            p.mkdir()
        os.chown(upper, self.uid_base, self.uid_base)
        upper.chmod(0o755)
        (box.dir / "config.json").write_text(json.dumps(self._config(box, args)))
        overlay.mount_overlay(str(self.lower), str(upper), str(workdir), str(box.rootfs))
        box.mounted = True
        return box

    def _dispose(self, box: _Box) -> None:
        self._crun("kill", "--all", box.cid, "KILL")
        self._crun("delete", "--force", box.cid)
        if box.mounted:
            overlay.unmount(str(box.rootfs))
            box.mounted = False
        shutil.rmtree(box.dir, ignore_errors=True)
        self._boxes.pop(box.cid, None)

    @contextlib.contextmanager
    def _box(self, args: Sequence[str]) -> Iterator[_Box]:
        box = self._prepare(args)
        try:
            yield box
        finally:
            self._dispose(box)

    def _crun(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.crun, "--root", str(self.state), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )

    def _run_cmd(self, box: _Box) -> list[str]:
        return [self.crun, "--root", str(self.state), "run", "--bundle", str(box.dir), box.cid]

    def _start_detached(self, box: _Box) -> None:
        with open(box.dir / "crun.log", "ab") as log:
            rc = subprocess.call(
                [*self._run_cmd(box)[:3], "run", "--detach", "--bundle", str(box.dir), box.cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        if rc != 0:
            raise RuntimeError(f"crun run --detach failed: {(box.dir / 'crun.log').read_text()}")

    # -- measurements -------------------------------------------------------------------

    def run_latency(self, args: Sequence[str], runs: int, warmup: int = 3) -> Latency:
        """``crun run`` of ``args`` to completion (the container is deleted on exit)."""
        samples = []
        for i in range(warmup + runs):
            with self._box(args) as box:
                t0 = time.perf_counter()
                proc = subprocess.run(
                    self._run_cmd(box),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
                elapsed = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"crun run {args} failed: {proc.stderr.decode().strip()}")
            if i >= warmup:
                samples.append(elapsed)
        return Latency.of(samples)

    def exec_latency(self, args: Sequence[str], runs: int, warmup: int = 5) -> Latency:
        """``crun exec`` of ``args`` into one running container."""
        samples = []
        with self._box(["/bin/sleep", "infinity"]) as box:
            self._start_detached(box)
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                proc = self._crun("exec", box.cid, *args)
                elapsed = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"crun exec {args} failed: {proc.stderr.decode().strip()}")
                if i >= warmup:
                    samples.append(elapsed)
        return Latency.of(samples)

    def concurrent_run(self, count: int) -> float:
        """Wall time of ``count`` ``crun run /bin/true`` started at once (bundles and
        overlays prepared beforehand, not timed)."""
        boxes = [self._prepare(["/bin/true"]) for _ in range(count)]
        try:
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(
                    self._run_cmd(box),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for box in boxes
            ]
            failures = []
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    failures.append(err.decode().strip())
            wall = time.perf_counter() - t0
            if failures:
                raise RuntimeError(f"{len(failures)} of {count} crun runs failed: {failures[0]}")
            return wall
        finally:
            for box in boxes:
                self._dispose(box)

    def idle_memory(self, count: int) -> tuple[MemoryCost, Latency]:
        """Memory of ``count`` detached containers running ``sleep``, and how long each
        ``crun run --detach`` took (the floor under Shoal's create)."""
        before = settled_mem_available()
        boxes: list[_Box] = []
        starts = []
        try:
            for _ in range(count):
                box = self._prepare(["/bin/sleep", "infinity"])
                boxes.append(box)
                t0 = time.perf_counter()
                self._start_detached(box)
                starts.append(time.perf_counter() - t0)
            during = settled_mem_available()
            cost = cgroup_cost([b.cgroup_path for b in boxes])
        finally:
            for box in boxes:
                self._dispose(box)
        after = settled_mem_available()
        host_each = host_delta(before, during, after) / count
        return dataclasses.replace(
            cost, host_each=host_each, host_drift=after - before
        ), Latency.of(starts)

    # -- clean-up -------------------------------------------------------------------------

    def close(self) -> None:
        for box in list(self._boxes.values()):
            with contextlib.suppress(Exception):
                self._dispose(box)
        listed = self._crun("list", "--format", "json")
        if listed.returncode == 0 and listed.stdout.strip():
            for item in json.loads(listed.stdout) or []:
                self._crun("kill", "--all", item["id"], "KILL")
                self._crun("delete", "--force", item["id"])
        remove_cgroup_parent(CGROUP_PARENT)
        shutil.rmtree(self.work, ignore_errors=True)


def remove_cgroup_parent(name: str) -> None:
    """rmdir ``/<name>`` (and any empty children left) in every v1 hierarchy and v2."""
    for hierarchy in [*CGROUP_ROOT.iterdir(), CGROUP_ROOT / "unified"]:
        top = hierarchy / name
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda e: -len(e[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
