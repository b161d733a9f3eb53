"""Pause, resume and fork as a user sees them (the official SDKs against a live
``shoal serve``), beside the runtime's own checkpoint/restore of the same kind of sandbox
(no API, no agent) measured in the same run."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from e2b import Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox

from bench.stats import Latency

SANDBOX_TIMEOUT = 300


@dataclass(frozen=True)
class PauseResume:
    pause: Latency
    resume: Latency
    """``connect()`` of the paused sandbox until it answers (201)."""
    size: int
    """Bytes the checkpoint occupies on the node."""


def _checkpoint_size(data_dir: Path, sandbox_id: str) -> int:
    out = subprocess.run(
        ["du", "-sb", "--apparent-size", str(data_dir / "paused" / sandbox_id)],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    allocated = subprocess.run(
        ["du", "-sB1", str(data_dir / "paused" / sandbox_id)],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    return int(allocated[0]) if allocated else (int(out[0]) if out else 0)


def _cycle(sbx: Sandbox, data_dir: Path, runs: int, check: object) -> PauseResume:
    pauses, resumes, size = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        if not sbx.pause():
            raise RuntimeError("pause answered False")
        pauses.append(time.perf_counter() - t0)
        size = _checkpoint_size(data_dir, sbx.sandbox_id)
        t0 = time.perf_counter()
        sbx.connect(timeout=SANDBOX_TIMEOUT)
        resumes.append(time.perf_counter() - t0)
        if callable(check):
            check()
    return PauseResume(Latency.of(pauses), Latency.of(resumes), size)


def base_idle(data_dir: Path, runs: int) -> PauseResume:
    sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        sbx.commands.run("sleep 100000", background=True)

        def alive() -> None:
            if sbx.commands.run("pgrep -c sleep").stdout.strip() != "1":
                raise RuntimeError("the sleep did not survive the pause")

        return _cycle(sbx, data_dir, runs, alive)
    finally:
        sbx.kill()


def interpreter_holding(data_dir: Path, mib: int, runs: int) -> PauseResume:
    """A code-interpreter sandbox whose Python kernel holds ``mib`` MiB of random data."""
    sbx = CodeSandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        made = sbx.run_code(
            f"import os, hashlib\nblob = bytearray(os.urandom(1 << 20)) * {mib}\n"
            "digest = hashlib.sha256(blob).hexdigest()\nlen(blob)",
            timeout=120,
        )
        if made.error is not None:
            raise RuntimeError(f"could not allocate {mib} MiB: {made.error}")

        def same() -> None:
            got = sbx.run_code("hashlib.sha256(blob).hexdigest() == digest", timeout=60)
            if got.text != "True":
                raise RuntimeError(f"the kernel's state did not survive: {got}")

        return _cycle(sbx, data_dir, runs, same)
    finally:
        sbx.kill()


def fork_wall(count: int) -> float:
    source = Sandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        source.files.write("/home/user/state", "forked")
        t0 = time.perf_counter()
        forks = source.fork(count=count, timeout=SANDBOX_TIMEOUT)
        wall = time.perf_counter() - t0
        try:
            for f in forks:
                if f.files.read("/home/user/state") != "forked":
                    raise RuntimeError("a fork lacks the source's file")
        finally:
            for f in forks:
                f.kill()
        return wall
    finally:
        source.kill()


@dataclass(frozen=True)
class RuntimeBaseline:
    dump: Latency
    """``criu dump`` alone (freeze included), as the runtime drives it."""
    restore: Latency
    """``Checkpointer.restore`` (criu restore and registering with crun)."""


def runtime_baseline(runs: int, hold_mib: int) -> RuntimeBaseline:
    """The runtime's checkpoint/restore of a bare sandbox running python holding
    ``hold_mib`` MiB (0: idle), without API, proxy or agent."""
    from shoal.config import Settings
    from shoal.runtime.checkpoint import Checkpointer
    from shoal.runtime.container import ContainerLimits, ContainerRuntime
    from shoal.runtime.initbin import ensure_built
    from shoal.runtime.initclient import connect_init
    from shoal.runtime.process import SpawnRequest
    from shoal.template.store import TemplateStore

    async def main() -> RuntimeBaseline:
        settings = Settings.from_env()
        rootfs = TemplateStore(settings.templates_path).resolve("base").rootfs
        data = Path("/var/tmp") / f"shoal-bench-criu-{secrets.token_hex(4)}"
        data.mkdir(mode=0o755)
        rt = ContainerRuntime(
            data, "benchcr" + secrets.token_hex(3), ensure_built(data / "bin"), settings.uid_base
        )
        cp = Checkpointer(rt, settings.criu_path)
        sid = "bench" + secrets.token_hex(4)
        dumps, restores = [], []
        try:
            container = await rt.start(
                sid, rootfs, ContainerLimits(cpu_count=1, memory_mb=2048, disk_mb=256), sid
            )
            for _ in range(200):
                try:
                    client = await connect_init(container.socket_name, container.netns_path)
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.01)
            if hold_mib:
                code = (
                    f"import os, time\nb = bytearray(os.urandom(1 << 20)) * {hold_mib}\n"
                    "open('/tmp/ready', 'w').close()\nwhile True: time.sleep(1)\n"
                )
                proc = await client.spawn(
                    SpawnRequest(["python3", "-c", code], {}, "/", 0, 0)
                )
                proc.close_fds()
                while not (container.rootfs / "tmp" / "ready").exists():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await client.aclose()
            for i in range(runs):
                image = await cp.checkpoint(container, data / f"img{i}")
                dumps.append(image.dump_seconds)
                t0 = time.perf_counter()
                container = await cp.restore(image.path, consume=True)
                restores.append(time.perf_counter() - t0)
            container.close()
        finally:
            await rt.destroy(sid)
            await rt.release_node()
            shutil.rmtree(data, ignore_errors=True)
        return RuntimeBaseline(Latency.of(dumps), Latency.of(restores))

    return asyncio.run(main())


def criu_available() -> bool:
    from shoal.config import Settings

    return os.access(Settings.from_env().criu_path, os.X_OK)
