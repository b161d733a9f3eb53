"""What one ``shoal serve`` has left on the host, seen only from the host.

A :class:`HostState` is a snapshot of everything a sandbox of that server can leave behind:
its processes, mounts under the data directory, cgroups, sandbox directories, crun's
containers, network namespaces (held by processes or by the server's own fds) and the
server's open fds. Hygiene tests take one before and compare after. Everything is scoped to
the one server's node id and data directory, so other servers on the machine (other tests
running at the same time) do not disturb it.

The node's warm pool (containers ``pool-<hex>``, refilled in the background, see
``runtime/pool.py``) is not a sandbox and is left out: its directories, containers, mounts,
cgroups and processes, as long as that pool container exists. A pool-named cgroup without
its pool container (what a claimed sandbox leaves if its teardown forgot it) still counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

UID_BASE = 100000
UID_RANGE = 65536


def node_id_of(data_dir: Path) -> str:
    return (data_dir / "node-id").read_text().strip()


def crun_root(node_id: str) -> str:
    return f"/run/shoal/{node_id}/crun"


def crun_list(node_id: str) -> list[dict[str, object]]:
    r = subprocess.run(
        ["crun", "--root", crun_root(node_id), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or not r.stdout.strip():
        return []
    return list(json.loads(r.stdout) or [])


def crun_state(node_id: str, sandbox_id: str) -> dict[str, object] | None:
    r = subprocess.run(
        ["crun", "--root", crun_root(node_id), "state", sandbox_id],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        return None
    return dict(json.loads(r.stdout))


def init_pid_of(data_dir: Path, sandbox_id: str) -> int:
    """The host pid of a sandbox's pid 1, as crun knows it."""
    state = crun_state(node_id_of(data_dir), sandbox_id)
    assert state is not None, f"crun does not know sandbox {sandbox_id}"
    pid = state.get("pid")
    assert isinstance(pid, int) and pid > 0, state
    return pid


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def proc_uid(pid: int) -> int | None:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def proc_cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline")
    return [a for a in (raw or "").split("\0") if a]


def find_host_pids(predicate: Callable[[list[str]], bool]) -> list[int]:
    """Host pids whose command line matches ``predicate``."""
    return [pid for pid in _pids() if (cmd := proc_cmdline(pid)) and predicate(cmd)]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@dataclass(frozen=True)
class HostState:
    processes: frozenset[str]
    """``pid uid cmdline`` of processes in this node's cgroups, of processes in the sandbox id
    range whose cgroup names this node, and of every descendant of the server."""
    mounts: frozenset[str]
    cgroups: frozenset[str]
    sandbox_dirs: frozenset[str]
    containers: frozenset[str]
    netns: frozenset[str]
    """Network namespaces of this node's processes, and those the server holds open as fds."""
    server_sandbox_fds: frozenset[str]
    """The server's fds that point into a sandbox (its directory, or a namespace)."""
    server_fds: int
    fd_kinds: dict[str, int] = field(compare=False)

    def leaks_since(self, base: HostState, fd_slack: int = 8) -> list[str]:
        """What is here now that was not in ``base`` (empty: nothing leaked)."""
        problems = []
        for name in (
            "processes",
            "mounts",
            "cgroups",
            "sandbox_dirs",
            "containers",
            "netns",
            "server_sandbox_fds",
        ):
            extra = getattr(self, name) - getattr(base, name)
            if extra:
                problems.append(f"{name}: {sorted(extra)[:10]} ({len(extra)} new)")
        if self.server_fds > base.server_fds + fd_slack:
            problems.append(
                f"server fds: {base.server_fds} -> {self.server_fds} "
                f"({base.fd_kinds} -> {self.fd_kinds})"
            )
        return problems


def _fd_kind(target: str) -> str:
    if target.startswith("/"):
        return "file"
    return target.split(":", 1)[0]


POOL_PREFIX = "pool-"


def _pool_ids(sandboxes: Path, node_id: str) -> set[str]:
    dirs = {p.name for p in sandboxes.iterdir()} if sandboxes.is_dir() else set()
    ids = {d for d in dirs if d.startswith(POOL_PREFIX)}
    ids |= {str(c["id"]) for c in crun_list(node_id) if str(c["id"]).startswith(POOL_PREFIX)}
    return ids


def _in_pool(cgroup: str, marker: str, pool: set[str]) -> bool:
    """Every cgroup of the process under this node is one of the pool's containers."""
    names = [
        line.split(marker, 1)[1].split("/", 1)[0] for line in cgroup.splitlines() if marker in line
    ]
    return bool(names) and all(n in pool for n in names)


def snapshot(data_dir: Path, server_pid: int) -> HostState:
    node_id = node_id_of(data_dir)
    marker = f"/shoal/{node_id}/"
    sandboxes = data_dir / "sandboxes"
    pool = _pool_ids(sandboxes, node_id)
    procs: set[str] = set()
    netns: set[str] = set()
    pool_netns: set[str] = set()  # primed pool members run processes and have fds held
    server_tree = descendants(server_pid)
    for pid in _pids():
        cgroup = _read(f"/proc/{pid}/cgroup") or ""
        uid = proc_uid(pid)
        in_node = marker in cgroup
        if not in_node and pid not in server_tree:
            continue
        if in_node and _in_pool(cgroup, marker, pool):
            with contextlib.suppress(OSError):
                pool_netns.add(os.readlink(f"/proc/{pid}/ns/net"))
            continue
        if in_node or (uid is not None and UID_BASE <= uid < UID_BASE + UID_RANGE):
            try:
                netns.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                pass
        procs.add(f"{pid} uid={uid} {' '.join(proc_cmdline(pid))[:80]}")
    kinds: dict[str, int] = {}
    sandbox_fds: set[str] = set()
    fd_dir = f"/proc/{server_pid}/fd"
    fds = os.listdir(fd_dir)
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        kind = _fd_kind(target)
        kinds[kind] = kinds.get(kind, 0) + 1
        if target in pool_netns or any(target.startswith(f"{sandboxes}/{p}/") for p in pool):
            continue
        if target.startswith("net:"):
            netns.add(target)
        if target.startswith((f"{sandboxes}/", "net:", "pid:", "mnt:", "user:")):
            sandbox_fds.add(f"{fd} -> {target}")
    prefix = str(data_dir).rstrip("/") + "/"
    mounts: set[str] = set()
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(prefix):
            rel = (
                Path(mount_point).relative_to(sandboxes)
                if mount_point.startswith(f"{sandboxes}/")
                else None
            )
            if rel is not None and rel.parts and rel.parts[0] in pool:
                continue
            mounts.add(mount_point)
    cgroups: set[str] = set()
    for controller in Path("/sys/fs/cgroup").iterdir():
        node_dir = controller / "shoal" / node_id
        if node_dir.is_dir():
            cgroups.update(str(p) for p in node_dir.iterdir() if p.is_dir() and p.name not in pool)
    dirs = {p.name for p in sandboxes.iterdir()} if sandboxes.is_dir() else set()
    dirs -= pool
    containers = {
        f"{c['id']} {c['status']}" for c in crun_list(node_id) if str(c["id"]) not in pool
    }
    return HostState(
        processes=frozenset(procs),
        mounts=frozenset(mounts),
        cgroups=frozenset(cgroups),
        sandbox_dirs=frozenset(dirs),
        containers=frozenset(containers),
        netns=frozenset(netns),
        server_sandbox_fds=frozenset(sandbox_fds),
        server_fds=len(fds),
        fd_kinds=kinds,
    )


def wait_until_clean(
    data_dir: Path, server_pid: int, base: HostState, timeout: float = 20.0, fd_slack: int = 8
) -> list[str]:
    """Poll until nothing has leaked since ``base`` (teardown of a lost sandbox is
    asynchronous); return what is still left when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        leaks = snapshot(data_dir, server_pid).leaks_since(base, fd_slack)
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.2)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
