"""The code interpreter measured the way a user sees it (``e2b_code_interpreter`` against a
live ``shoal serve``), beside a bare ``jupyter_client`` kernel on the host."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from e2b_code_interpreter import Sandbox

from bench.memory import MemoryCost, cgroup_cost, rss_of
from bench.stats import Latency

SANDBOX_TIMEOUT = 300
PRIMED = 2
"""``Settings.primed_pool``'s default, which the bench server runs with."""
REFILL_WAIT = 120.0


def primed_count(node_id: str) -> int:
    """Running pool containers of the node: the primed ones (warm ones are only created)."""
    out = subprocess.run(
        ["crun", "--root", f"/run/shoal/{node_id}/crun", "list", "--format", "json"],
        capture_output=True, text=True, check=False,
    ).stdout
    found = json.loads(out or "[]") or []
    return sum(1 for c in found if c["id"].startswith("pool-") and c["status"] == "running")


def wait_primed(node_id: str, count: int = PRIMED) -> None:
    deadline = time.monotonic() + REFILL_WAIT
    while primed_count(node_id) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the primed pool did not refill to {count} in {REFILL_WAIT:.0f} s")
        time.sleep(0.1)


def _create_and_run() -> tuple[float, float, Sandbox]:
    t0 = time.perf_counter()
    sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
    t1 = time.perf_counter()
    execution = sbx.run_code("1+1")
    t2 = time.perf_counter()
    if execution.text != "2":
        sbx.kill()
        raise RuntimeError(f"run_code('1+1') gave {execution!r}")
    return t2 - t0, t1 - t0, sbx


def create_to_first_result(node_id: str, runs: int) -> tuple[Latency, Latency]:
    """(create → first result, create alone), each from a full primed pool."""
    Sandbox.create(timeout=SANDBOX_TIMEOUT).kill()  # the shape's pools start
    total, create = [], []
    for _ in range(runs):
        wait_primed(node_id)
        elapsed, made, sbx = _create_and_run()
        sbx.kill()
        total.append(elapsed)
        create.append(made)
    return Latency.of(total), Latency.of(create)


def cold_first_result(runs: int) -> Latency:
    """create → first result on a server without a primed pool (``SHOAL_PRIMED_POOL=0``):
    every create starts the interpreter and its kernels."""
    from bench.server import live_server

    samples = []
    with live_server(SHOAL_PRIMED_POOL="0"):
        Sandbox.create(timeout=SANDBOX_TIMEOUT).kill()  # its warm pool of containers starts
        for _ in range(runs):
            elapsed, _, sbx = _create_and_run()
            sbx.kill()
            samples.append(elapsed)
    return Latency.of(samples)


def run_code_round_trip(node_id: str, runs: int, warmup: int = 10) -> Latency:
    """Steady state: measured once the primed pool has refilled behind the sandbox (on two
    CPUs, priming its successor takes a second of CPU from everything else)."""
    samples = []
    sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        wait_primed(node_id)
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            execution = sbx.run_code("1+1")
            elapsed = time.perf_counter() - t0
            if execution.text != "2":
                raise RuntimeError(f"run_code('1+1') gave {execution!r}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        sbx.kill()
    return Latency.of(samples)


def idle_memory(node_id: str, count: int) -> MemoryCost:
    """What an idle code-interpreter sandbox (one ``run_code`` done) holds in its cgroup."""
    made: list[Sandbox] = []
    try:
        for _ in range(count):
            sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
            made.append(sbx)
            sbx.run_code("1+1")
        time.sleep(2)
        return cgroup_cost([f"/shoal/{node_id}/{s.sandbox_id}" for s in made])
    finally:
        for s in made:
            s.kill()


@dataclass(frozen=True)
class BareKernel:
    round_trip: Latency
    start_to_first: float
    """``start_new_kernel`` → first result: what a cold kernel costs a first answer."""
    rss: int
    """The kernel process's resident set after the runs."""


def bare_kernel(runs: int, warmup: int = 10) -> BareKernel:
    """``execute("1+1")`` → result and idle on a plain ipykernel on the host, through
    ``jupyter_client``: what a Jupyter round trip costs without any sandbox or HTTP."""
    from jupyter_client.manager import start_new_kernel

    t_start = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        samples = []
        start_to_first = 0.0
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            msg_id = kc.execute("1+1")
            got = False
            while True:
                msg = kc.get_iopub_msg(timeout=10)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "execute_result":
                    got = msg["content"]["data"]["text/plain"] == "2"
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            elapsed = time.perf_counter() - t0
            if i == 0:
                start_to_first = time.perf_counter() - t_start
            if not got:
                raise RuntimeError("the bare kernel did not answer 2")
            if i >= warmup:
                samples.append(elapsed)
        pid = km.provisioner.pid if km.provisioner is not None else None  # type: ignore[attr-defined]
        rss = rss_of(int(pid)) if pid else 0
        return BareKernel(Latency.of(samples), start_to_first, rss)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def template_exists(template_dir: Path) -> bool:
    return (template_dir / "code-interpreter-v1" / "current" / "rootfs").is_dir()
