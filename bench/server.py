"""A live ``shoal serve`` for the benchmark: the test harness's ``ShoalServer`` (a child
process on ephemeral loopback ports), plus a clean-up that leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.server import ShoalServer, scratch_dir, sdk_env  # noqa: E402

from bench.baseline import remove_cgroup_parent  # noqa: E402
from shoal.runtime import overlay  # noqa: E402


@contextlib.contextmanager
def live_server(**settings: str) -> Iterator[ShoalServer]:
    """Start ``shoal serve`` (``settings``: extra ``SHOAL_*`` variables), point the SDK at
    it, and on the way out kill every sandbox, stop the server and remove its data
    directory, crun state, cgroups and mounts."""
    node_id = "nodebench" + secrets.token_hex(3)
    server = ShoalServer(
        scratch_dir("bench"),
        extra_env={"SHOAL_NODE_ID": node_id, **settings},
    )
    try:
        server.start()
        with sdk_env(server):
            yield server
    finally:
        try:
            kill_every_sandbox(server)
        finally:
            server.stop()
            leftovers = remove_node_traces(server.data_dir, node_id)
            if leftovers:
                print(
                    f"bench: cleaned up after the server: {', '.join(leftovers)}", file=sys.stderr
                )


def node_id_of(server: ShoalServer) -> str:
    return server.extra_env["SHOAL_NODE_ID"]


def kill_every_sandbox(server: ShoalServer) -> None:
    if server.proc is None or server.proc.poll() is not None:
        return
    with server.api() as api:
        for _ in range(100):
            r = api.get("/v2/sandboxes", params={"limit": 100})
            if r.status_code != 200 or not r.json():
                return
            for s in r.json():
                api.delete(f"/sandboxes/{s['sandboxID']}")


def remove_node_traces(data_dir: Path, node_id: str) -> list[str]:
    """Remove what a stopped server of ``node_id`` may have left; name what was found
    beyond the data directory itself (a non-empty list is a leak worth reporting)."""
    found: list[str] = []
    state_root = Path("/run/shoal") / node_id
    crun_root = state_root / "crun"
    if crun_root.is_dir():
        listed = subprocess.run(
            ["crun", "--root", str(crun_root), "list", "-q"], capture_output=True, text=True
        )
        for cid in listed.stdout.split():
            found.append(f"container {cid}")
            subprocess.run(
                ["crun", "--root", str(crun_root), "kill", "--all", cid, "KILL"],
                capture_output=True,
            )
            subprocess.run(
                ["crun", "--root", str(crun_root), "delete", "--force", cid], capture_output=True
            )
    real = os.path.realpath(data_dir)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" ")[4] for line in f]
    for mount in sorted((m for m in mounts if m.startswith(real + "/")), key=len, reverse=True):
        found.append(f"mount {mount}")
        with contextlib.suppress(OSError):
            overlay.unmount(mount)
    cgroup_dirs = [
        h / "shoal" / node_id
        for h in Path("/sys/fs/cgroup").iterdir()
        if (h / "shoal" / node_id).is_dir()
    ]
    for d in cgroup_dirs:
        children = [p.name for p in d.iterdir() if p.is_dir()]
        if children:
            found.append(f"cgroups {d}/{{{','.join(children[:3])}…}}")
    remove_cgroup_parent(f"shoal/{node_id}")
    shutil.rmtree(state_root, ignore_errors=True)
    for _ in range(20):
        shutil.rmtree(data_dir, ignore_errors=True)
        if not data_dir.exists():
            break
        time.sleep(0.1)
    else:
        found.append(f"directory {data_dir}")
    return found


__all__ = ["ShoalServer", "live_server", "node_id_of"]
