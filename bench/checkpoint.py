"""Checkpoint / restore latency of sandboxes at the runtime level (runtime/checkpoint.py).

    .venv/bin/python -m bench.checkpoint [--runs 10]     (as root, after scripts/setup)

For an idle ``base`` sandbox (just init) and one running a Python process that holds
100 MiB: pause (checkpoint, sandbox removed) and resume (restore, consuming the image)
cycles on one sandbox, then snapshots (checkpoint leaving it running) and copies restored
from one snapshot. ``criu`` is the part spent in ``criu dump`` itself (freeze included);
sizes are of the memory image and of the disk image's allocated blocks. Not part of
``python -m bench`` yet: the API's pause/resume benchmark will wrap these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import Latency, mib, ms
from shoal.config import Settings
from shoal.runtime.checkpoint import Checkpointer
from shoal.runtime.container import Container, ContainerLimits, ContainerRuntime
from shoal.runtime.initbin import ensure_built
from shoal.runtime.initclient import InitClient, connect_init
from shoal.runtime.process import SpawnRequest
from shoal.template.store import TemplateStore

SHAPE = ContainerLimits(cpu_count=1, memory_mb=512, disk_mb=256)
HOLD_100MIB = (
    "import os, time\n"
    "blob = bytearray(os.urandom(1 << 20)) * 100\n"
    "open('/tmp/ready', 'w').close()\n"
    "while True: time.sleep(1)\n"
)


@dataclass
class Numbers:
    pause: list[float] = field(default_factory=list)
    pause_criu: list[float] = field(default_factory=list)
    resume: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    copy: list[float] = field(default_factory=list)
    memory_bytes: int = 0
    disk_bytes: int = 0


async def connect(container: Container) -> InitClient:
    for _ in range(500):
        try:
            return await connect_init(container.socket_name, container.netns_path)
        except ConnectionRefusedError:
            await asyncio.sleep(0.01)
    raise RuntimeError("init does not answer")


async def scenario(
    rt: ContainerRuntime, cp: Checkpointer, rootfs: Path, work: Path, runs: int, hold: bool
) -> Numbers:
    sid = "bench" + secrets.token_hex(4)
    container = await rt.start(sid, rootfs, SHAPE, sid)
    client = await connect(container)
    if hold:
        proc = await client.spawn(
            SpawnRequest(argv=["python3", "-c", HOLD_100MIB], env={}, cwd="/", uid=0, gid=0)
        )
        proc.close_fds()
        ready = container.rootfs / "tmp" / "ready"
        while not ready.exists():  # noqa: ASYNC110 (a bench, polling a file)
            await asyncio.sleep(0.02)
    await client.aclose()
    n = Numbers()
    try:
        for i in range(runs):
            t0 = time.perf_counter()
            image = await cp.checkpoint(container, work / f"{sid}-pause{i}")
            n.pause.append(time.perf_counter() - t0)
            n.pause_criu.append(image.dump_seconds)
            n.memory_bytes = image.meta["criu_bytes"]
            n.disk_bytes = image.meta["disk_bytes"]
            t0 = time.perf_counter()
            container = await cp.restore(image.path, consume=True)
            n.resume.append(time.perf_counter() - t0)
        for i in range(runs):
            t0 = time.perf_counter()
            snap = await cp.checkpoint(container, work / f"{sid}-snap{i}", leave_running=True)
            n.snapshot.append(time.perf_counter() - t0)
            copy_id = f"{sid}c{i}"
            t0 = time.perf_counter()
            copy = await cp.restore(snap.path, copy_id, hostname=copy_id)
            n.copy.append(time.perf_counter() - t0)
            copy.close()
            await rt.destroy(copy_id)
            shutil.rmtree(snap.path)
    finally:
        container.close()
        await rt.destroy(sid)
    return n


def report(name: str, n: Numbers) -> None:
    def row(what: str, samples: list[float]) -> None:
        lat = Latency.of(samples)
        print(f"  {what:<34} p50 {ms(lat.p50):>9}   p90 {ms(lat.p90):>9}   (n={lat.n})")

    print(name)
    row("pause (checkpoint, sandbox removed)", n.pause)
    row("  of which criu dump", n.pause_criu)
    row("resume (restore, image consumed)", n.resume)
    row("snapshot (checkpoint, leave running)", n.snapshot)
    row("copy from snapshot (restore)", n.copy)
    print(f"  image: memory {mib(n.memory_bytes)}, disk {mib(n.disk_bytes)}")


def make_runtime(settings: Settings) -> tuple[ContainerRuntime, Path]:
    data = Path(tempfile.mkdtemp(prefix="shoal-bench-checkpoint-", dir="/var/tmp"))
    data.chmod(0o755)  # the sandboxes' root must get through to their rootfs
    (data / "images").mkdir()
    node_id = "benchck" + secrets.token_hex(4)
    return ContainerRuntime(data, node_id, ensure_built(data / "bin"), settings.uid_base), data


async def main(runs: int) -> None:
    settings = Settings.from_env()
    rootfs = TemplateStore(settings.templates_path).resolve("base").rootfs
    rt, data = make_runtime(settings)
    cp = Checkpointer(rt, settings.criu_path)
    work = data / "images"
    try:
        report("idle base sandbox", await scenario(rt, cp, rootfs, work, runs, hold=False))
        report("python holding 100 MiB", await scenario(rt, cp, rootfs, work, runs, hold=True))
    finally:
        await rt.release_node()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.checkpoint: run as root")
    asyncio.run(main(args.runs))
