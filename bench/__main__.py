"""Run every measurement and print the table (``python -m bench``, as root)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

from bench import files, interpreter, pause, shoal
from bench.baseline import CrunBaseline
from bench.memory import MemoryCost
from bench.server import ShoalServer, live_server, node_id_of
from bench.stats import Latency, mb_s, mib, ms, ms_fine, per_gib, secs

TEMPLATE = (
    Path(os.environ.get("SHOAL_TEMPLATE_DIR", "/var/lib/shoal/templates")) / "base" / "current"
)
T = TypeVar("T")


@dataclass
class Results:
    shoal_first: shoal.CreateToFirstRun | None = None
    shoal_rt: Latency | None = None
    shoal_burst: shoal.Burst | None = None
    shoal_idle: shoal.IdleCost | None = None
    crun_true: Latency | None = None
    crun_bash: Latency | None = None
    exec_true: Latency | None = None
    exec_bash: Latency | None = None
    crun_burst: float | None = None
    crun_idle: MemoryCost | None = None
    crun_detach: Latency | None = None
    files: files.FilesResults | None = None
    ci_first: tuple[Latency, Latency] | None = None
    ci_cold: Latency | None = None
    ci_rt: Latency | None = None
    ci_idle: MemoryCost | None = None
    bare_kernel: interpreter.BareKernel | None = None
    pause_base: pause.PauseResume | None = None
    pause_ci: dict[int, pause.PauseResume] = field(default_factory=dict)
    fork20: float | None = None
    criu_idle: pause.RuntimeBaseline | None = None
    criu_held: pause.RuntimeBaseline | None = None
    criu_gib: pause.RuntimeBaseline | None = None
    failed: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@contextmanager
def phase(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log(f"{name} …")
    yield
    log(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def measure(results: Results, name: str, fn: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded (and fails the run) but the others go on."""
    try:
        with phase(name):
            return fn()
    except Exception as exc:  # a broken measurement must not stop clean-up or the table
        log(f"{name}: FAILED: {exc!r}")
        results.failed.append(f"{name}: {exc!r}")
        return None


def run_baseline(args: argparse.Namespace, results: Results) -> None:
    meta = json.loads((TEMPLATE / "template.json").read_text())
    crun = CrunBaseline((TEMPLATE / "rootfs").resolve(), int(meta.get("uid_base", 0)))
    try:
        results.crun_true = measure(
            results, "crun run /bin/true", lambda: crun.run_latency(["/bin/true"], args.runs)
        )
        results.crun_bash = measure(
            results,
            "crun run bash -l -c true",
            lambda: crun.run_latency(["/bin/bash", "-l", "-c", "true"], args.runs),
        )
        results.exec_true = measure(
            results, "crun exec /bin/true", lambda: crun.exec_latency(["/bin/true"], args.rt_runs)
        )
        results.exec_bash = measure(
            results,
            "crun exec bash -l -c true",
            lambda: crun.exec_latency(["/bin/bash", "-l", "-c", "true"], args.rt_runs // 2),
        )
        results.crun_burst = measure(
            results, f"{args.burst} concurrent crun run", lambda: crun.concurrent_run(args.burst)
        )
        idle = measure(
            results, f"{args.idle} idle crun containers", lambda: crun.idle_memory(args.idle)
        )
        if idle:
            results.crun_idle, results.crun_detach = idle
    finally:
        crun.close()


def run_shoal(args: argparse.Namespace, results: Results) -> None:
    with phase("shoal, through the e2b SDK against a live `shoal serve`"), live_server() as server:
        assert server.proc is not None
        if not args.files_only:
            run_shoal_sandboxes(args, results, server)
            if not args.skip_ci:
                run_interpreter(args, results, server)
            if not args.skip_pause:
                run_pause(args, results, server)
        if not args.skip_files:
            results.files = files.measure_files(
                server.data_dir.parent,
                args.files_runs,
                lambda name, fn: measure(results, name, fn),
            )
    if not args.files_only and not args.skip_ci:
        run_interpreter_cold(args, results)


def run_shoal_sandboxes(args: argparse.Namespace, results: Results, server: ShoalServer) -> None:
    assert server.proc is not None
    results.shoal_first = measure(
        results, "shoal create → first run", lambda: shoal.create_to_first_run(args.runs)
    )
    results.shoal_rt = measure(
        results, "shoal commands.run round trip", lambda: shoal.run_round_trip(args.rt_runs)
    )
    results.shoal_burst = measure(
        results,
        f"shoal {args.burst} concurrent create+run+kill",
        lambda: shoal.concurrent_create_run_kill(args.burst),
    )
    pid, node = server.proc.pid, node_id_of(server)
    results.shoal_idle = measure(
        results,
        f"shoal {args.idle} idle sandboxes",
        lambda: shoal.idle_memory(args.idle, pid, node),
    )


def run_interpreter(args: argparse.Namespace, results: Results, server: ShoalServer) -> None:
    if not interpreter.template_exists(TEMPLATE.parent.parent):
        log("template code-interpreter-v1 not built; code-interpreter rows skipped")
        results.failed.append("code interpreter: template code-interpreter-v1 not built")
        return
    node = node_id_of(server)
    results.bare_kernel = measure(
        results, "bare jupyter_client kernel", lambda: interpreter.bare_kernel(args.rt_runs)
    )
    results.ci_first = measure(
        results,
        "shoal code interpreter create → first result",
        lambda: interpreter.create_to_first_result(node, args.ci_runs),
    )
    results.ci_rt = measure(
        results,
        "shoal run_code round trip",
        lambda: interpreter.run_code_round_trip(node, args.rt_runs),
    )
    results.ci_idle = measure(
        results,
        f"shoal {args.ci_idle} idle code-interpreter sandboxes",
        lambda: interpreter.idle_memory(node, args.ci_idle),
    )


def run_pause(args: argparse.Namespace, results: Results, server: ShoalServer) -> None:
    if not pause.criu_available():
        results.failed.append("pause: CRIU is not installed (scripts/setup)")
        return
    runs = args.pause_runs
    results.criu_idle = measure(
        results, "runtime checkpoint/restore, idle", lambda: pause.runtime_baseline(runs, 0)
    )
    results.criu_held = measure(
        results, "runtime checkpoint/restore, python 100 MiB",
        lambda: pause.runtime_baseline(runs, 100),
    )
    results.criu_gib = measure(
        results, "runtime checkpoint/restore, python 1 GiB",
        lambda: pause.runtime_baseline(max(1, runs // 2), 1024),
    )
    results.pause_base = measure(
        results, "shoal pause/resume, idle base", lambda: pause.base_idle(server.data_dir, runs)
    )
    for mib_, n in ((100, runs), (1024, max(1, runs // 2))):
        got = measure(
            results, f"shoal pause/resume, code interpreter holding {mib_} MiB",
            lambda m=mib_, k=n: pause.interpreter_holding(server.data_dir, m, k),  # type: ignore[misc]
        )
        if got is not None:
            results.pause_ci[mib_] = got
    results.fork20 = measure(results, "shoal fork(20)", lambda: pause.fork_wall(20))


def run_interpreter_cold(args: argparse.Namespace, results: Results) -> None:
    if interpreter.template_exists(TEMPLATE.parent.parent):
        results.ci_cold = measure(
            results,
            "shoal code interpreter create → first result, no primed pool",
            lambda: interpreter.cold_first_result(args.ci_cold_runs),
        )


# -- the table -------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return " ✓" if ok else " ✗"


def density(cost: MemoryCost, attr: str, *, goal: bool) -> str:
    each = float(getattr(cost, attr))
    if attr == "host_each" and abs(cost.host_drift) > abs(each * cost.count) / 2:
        # The rest of the machine moved more than what we measure: no figure to trust.
        return f"noisy ({mib(each)} each; machine moved {cost.host_drift / 2**20:+.0f} MiB)"
    cell = f"{per_gib(each)} ({mib(each)} each)"
    if goal:
        cell += mark(each > 0 and 2**30 / each >= 500)
    return cell


def table(args: argparse.Namespace, r: Results) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    na = "—"
    if args.files_only:
        if r.files:
            files_rows(r.files, rows, notes)
        return rows, notes

    first, ct, cb = r.shoal_first, r.crun_true, r.crun_bash
    for q in ("p50", "p90"):
        shoal_cell = na
        if first:
            v = getattr(first.total, q)
            shoal_cell = ms(v) + mark(v <= 0.030)
        base = " · ".join(
            f"{ms(getattr(lat, q))} {what}"
            for lat, what in ((ct, "`crun run /bin/true`"), (cb, "`crun run bash -l -c true`"))
            if lat
        )
        rows.append(
            [f'create → first `commands.run("true")`, {q}', shoal_cell, base or na, "≤ 30 ms"]
        )
    if first:
        notes.append(
            f"create → first run (n={first.total.n}): `Sandbox.create` p50 {ms(first.create.p50)} "
            f"+ first `commands.run` p50 {ms(first.first_run.p50)}; kill not timed"
            + (f"; bare `crun run --detach` p50 {ms(r.crun_detach.p50)}" if r.crun_detach else "")
        )

    rt = r.shoal_rt
    base = " · ".join(
        f"{ms(lat.p50)} {what}"
        for lat, what in (
            (r.exec_true, "`crun exec /bin/true`"),
            (r.exec_bash, "`crun exec bash -l -c true`"),
        )
        if lat
    )
    rows.append(
        [
            '`commands.run("true")` round trip, p50',
            ms(rt.p50) + mark(rt.p50 <= 0.005) if rt else na,
            base or na,
            "≤ 5 ms",
        ]
    )
    if rt:
        notes.append(
            f"round trip (n={rt.n}, one sandbox): p90 {ms(rt.p90)}; Shoal runs `bash -l -c true` "
            "as `user`, like E2B's envd"
        )

    b = r.shoal_burst
    shoal_cell = na
    if b:
        shoal_cell = secs(b.wall) + mark(b.wall <= 1.0 and not b.failures)
        if b.failures:
            shoal_cell += f" ({b.failures} failed)"
            notes.append(f"burst: {b.failures} of {args.burst} failed, first: {b.first_error}")
    rows.append(
        [
            f"{args.burst} concurrent create+run+kill (async SDK), wall",
            shoal_cell,
            f"{secs(r.crun_burst)} {args.burst} x `crun run /bin/true`" if r.crun_burst else na,
            "≤ 1 s",
        ]
    )

    idle, cidle = r.shoal_idle, r.crun_idle
    for label, attr in (
        ("cgroup memory.usage_in_bytes", "cgroup_usage_each"),
        ("host MemAvailable Δ", "host_each"),
    ):
        shoal_cell = na
        if idle:
            shoal_cell = density(idle.memory, attr, goal=True)
        base = na
        if cidle:
            base = density(cidle, attr, goal=False) + " `sleep`"
        rows.append([f"idle `base` sandboxes per GiB, {label}", shoal_cell, base, "≥ 500 /GiB"])
    if idle:
        rows.append(
            [
                "server RSS growth per idle sandbox",
                f"{idle.server_rss_each / 1024:.0f} KiB",
                na,
                na,
            ]
        )
        m = idle.memory
        notes.append(
            f"idle (n={m.count}, created 8 at a time in {secs(idle.create_wall)}): per sandbox "
            f"rss+cache {mib(m.cgroup_rss_cache_each)}, kmem {mib(m.cgroup_kmem_each)} "
            "(usage_in_bytes includes kmem); host Δ = mean(before, after removal) - during, "
            f"MemAvailable moved {m.host_drift / 2**20:+.0f} MiB before→after"
        )
    if cidle:
        notes.append(
            f"bare crun idle (n={cidle.count}): rss+cache {mib(cidle.cgroup_rss_cache_each)}, "
            f"kmem {mib(cidle.cgroup_kmem_each)} each; "
            f"MemAvailable moved {cidle.host_drift / 2**20:+.0f} MiB before→after"
        )
    notes.append(
        "baseline: `crun spec` + Shoal's user-namespace mapping, cgroup ns and limits, "
        "a fresh overlay on the same rootfs per container; no seccomp, no init"
    )
    interpreter_rows(r, rows, notes)
    pause_rows(r, rows, notes)
    if r.files:
        files_rows(r.files, rows, notes)
    return rows, notes


def interpreter_rows(r: Results, rows: list[list[str]], notes: list[str]) -> None:
    na = "—"
    first, cold, bare = r.ci_first, r.ci_cold, r.bare_kernel
    if first is None and cold is None and r.ci_rt is None and r.ci_idle is None:
        return
    rows.append(
        [
            'code interpreter create → first `run_code("1+1")`, p50',
            ms(first[0].p50) + mark(first[0].p50 <= 0.300) if first else na,
            f"{ms(bare.start_to_first)} bare kernel start + first execute" if bare else na,
            "≤ 300 ms",
        ]
    )
    rows.append(
        [
            "the same without a primed pool (`SHOAL_PRIMED_POOL=0`), p50",
            ms(cold.p50) if cold else na,
            na,
            na,
        ]
    )
    if first:
        notes.append(
            f"code interpreter first result (n={first[0].n}, each from a full primed pool of "
            f"{interpreter.PRIMED}): p90 {ms(first[0].p90)}, `Sandbox.create` alone p50 "
            f"{ms(first[1].p50)}"
            + (f"; without the pool (n={cold.n}) p90 {ms(cold.p90)}" if cold else "")
        )
    rt = r.ci_rt
    rows.append(
        [
            '`run_code("1+1")` round trip, p50',
            ms(rt.p50) + mark(rt.p50 <= 0.005) if rt else na,
            f"{ms(bare.round_trip.p50)} bare `jupyter_client` execute" if bare else na,
            "≤ 5 ms",
        ]
    )
    if rt:
        notes.append(
            f"run_code round trip (n={rt.n}, after the primed pool refilled): p90 {ms(rt.p90)}"
            + (f"; bare kernel p90 {ms(bare.round_trip.p90)}" if bare else "")
        )
    idle = r.ci_idle
    rows.append(
        [
            "memory per idle code-interpreter sandbox (cgroup usage)",
            mib(idle.cgroup_usage_each) if idle else na,
            f"{mib(bare.rss)} RSS of one bare ipykernel" if bare else na,
            na,
        ]
    )
    if idle:
        notes.append(
            f"idle code interpreter (n={idle.count}, one `run_code` each: the server and "
            "its Python kernel; JavaScript starts at first use): rss+cache "
            f"{mib(idle.cgroup_rss_cache_each)}, kmem {mib(idle.cgroup_kmem_each)} each"
        )


def pause_rows(r: Results, rows: list[list[str]], notes: list[str]) -> None:
    na = "—"
    if r.pause_base is None and not r.pause_ci and r.fork20 is None:
        return
    base, ci, ri, rh = r.pause_base, r.pause_ci, r.criu_idle, r.criu_held
    rows.append([
        "pause, idle `base` sandbox (`pause()`), p50",
        ms(base.pause.p50) if base else na,
        f"{ms(ri.dump.p50)} `criu dump` (runtime, no API)" if ri else na,
        na,
    ])
    rows.append([
        "resume, idle `base` sandbox (`connect()`), p50",
        ms(base.resume.p50) if base else na,
        f"{ms(ri.restore.p50)} restore (runtime, no API)" if ri else na,
        na,
    ])
    for mib_ in (100, 1024):
        got = ci.get(mib_)
        size = f"{mib_} MiB" if mib_ < 1024 else "1 GiB"
        pause_goal = 0.400 * mib_ / 1024 if mib_ >= 1024 else None
        cell = na
        if got:
            cell = ms(got.pause.p50)
            if pause_goal is not None:
                cell += mark(got.pause.p50 <= pause_goal)
        held = rh if mib_ == 100 else r.criu_gib
        rows.append([
            f"pause, code interpreter holding {size}, p50",
            cell,
            f"{ms(held.dump.p50)} `criu dump`, python holding {size}" if held else na,
            "≤ 400 ms per GiB" if pause_goal is not None else na,
        ])
        cell = na
        if got:
            cell = ms(got.resume.p50)
            if mib_ == 100:
                cell += mark(got.resume.p50 <= 0.150)
        rows.append([
            f"resume, code interpreter holding {size}, p50",
            cell,
            f"{ms(held.restore.p50)} restore, python holding {size}" if held else na,
            "≤ 150 ms" if mib_ == 100 else na,
        ])
        if got:
            rows.append([f"checkpoint on disk, code interpreter holding {size}",
                         mib(got.size), na, na])
    rows.append(["`fork(count=20)` of a `base` sandbox, wall",
                 secs(r.fork20) if r.fork20 is not None else na, na, na])
    if base:
        notes.append(
            f"pause/resume (n={base.pause.n} idle, checkpoint {mib(base.size)}): pause p90 "
            f"{ms(base.pause.p90)}, resume p90 {ms(base.resume.p90)}; a background `sleep` is "
            "checked alive after each resume; code-interpreter state checked by a sha256 of "
            "the held bytes; runtime baselines are `runtime/checkpoint.py` alone on a bare "
            "sandbox (criu dump = its freeze + dump)"
        )


def files_rows(f: files.FilesResults, rows: list[list[str]], notes: list[str]) -> None:
    na = "—"
    goal = 300.0

    def rate(t: files.Throughput | None, *, goal_mb_s: float | None = None) -> str:
        if t is None:
            return na
        cell = mb_s(t.mb_s)
        if goal_mb_s is not None:
            cell += mark(t.mb_s >= goal_mb_s)
        return cell

    def cp(t: files.Throughput | None, what: str) -> str:
        return f"{mb_s(t.mb_s)} `cp` {what}" if t else na

    small_up = cp(f.cp_small_up, "100 files, tmpfs → data-dir fs")
    small_down = cp(f.cp_small_down, "100 files, data-dir fs → tmpfs")
    rows += [
        ["upload 100 x 1 MiB, one `files.write_files`", rate(f.small_write_files), small_up, na],
        ["upload 100 x 1 MiB, 100 `files.write`", rate(f.small_write_seq), small_up, na],
        [
            'download 100 x 1 MiB, 100 `files.read(format="bytes")`',
            rate(f.small_read),
            small_down,
            na,
        ],
        [
            "upload 200 MiB, `files.write` of a file object",
            rate(f.large_write, goal_mb_s=goal),
            cp(f.cp_large_up, "tmpfs → data-dir fs"),
            f"≥ {goal:.0f} MB/s",
        ],
        [
            'download 200 MiB, `files.read(format="stream")`',
            rate(f.large_read, goal_mb_s=goal),
            cp(f.cp_large_down, "data-dir fs → tmpfs"),
            f"≥ {goal:.0f} MB/s",
        ],
        [
            "watch event latency, p50 (write in sandbox → async `watch_dir` event)",
            ms_fine(f.watch.p50) if f.watch else na,
            f"{ms_fine(f.inotify.p50)} bare inotify, host write" if f.inotify else na,
            na,
        ],
    ]
    runs = next((t for t in (f.large_write, f.small_read, f.cp_large_up) if t is not None), None)
    if runs:
        spread = ", ".join(
            f"{name} {'/'.join(f'{t.nbytes / s / 1e6:,.0f}' for s in t.seconds)}"
            for name, t in (
                ("200 MiB up", f.large_write),
                ("200 MiB down", f.large_read),
                ("write_files", f.small_write_files),
            )
            if t
        )
        notes.append(
            f"files: MB = 10^6 bytes; median of {len(runs.seconds)} runs after a warm-up, "
            f"random data, no fsync on either side; client and server share the CPUs; "
            f"each run in MB/s: {spread}"
        )
    if f.watch:
        note = (
            f"watch (n={f.watch.n}): bash `printf x > fN` then `$EPOCHREALTIME`, in the "
            "sandbox vs on the host; event arrival (CLOCK_REALTIME) minus that stamp, which "
            "follows the write's close (so a watcher can beat it: < 0); "
            f"p90 {ms_fine(f.watch.p90)}"
        )
        if f.inotify:
            note += f" (inotify p90 {ms_fine(f.inotify.p90)})"
        if f.watch_after_write:
            w = f.watch_after_write
            note += (
                f"; from `files.write` returning to its WRITE event: p50 {ms_fine(w.p50)}, "
                f"p90 {ms_fine(w.p90)} (negative: the event reached the SDK before the "
                "upload's HTTP response)"
            )
        notes.append(note)


def render(rows: list[list[str]]) -> str:
    header = ["measurement", "shoal", "baseline", "goal"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def machine_line() -> str:
    crun = subprocess.run(["crun", "--version"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, kernel {platform.release()}, {crun}, "
        f"e2b {version('e2b')}, load average {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="create→first-run samples (30)")
    parser.add_argument("--rt-runs", type=int, default=200, help="round-trip samples (200)")
    parser.add_argument("--burst", type=int, default=100, help="concurrent creates (100)")
    parser.add_argument("--idle", type=int, default=200, help="idle sandboxes (200)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-shoal", action="store_true")
    parser.add_argument("--skip-files", action="store_true", help="no files measurements")
    parser.add_argument(
        "--files-only", action="store_true", help="only the files measurements (and baselines)"
    )
    parser.add_argument("--files-runs", type=int, default=5, help="files throughput runs (5)")
    parser.add_argument("--skip-ci", action="store_true", help="no code-interpreter rows")
    parser.add_argument("--ci-runs", type=int, default=10, help="code-interpreter firsts (10)")
    parser.add_argument(
        "--ci-cold-runs", type=int, default=5, help="firsts without a primed pool (5)"
    )
    parser.add_argument("--ci-idle", type=int, default=5, help="idle code interpreters (5)")
    parser.add_argument("--skip-pause", action="store_true", help="no pause/resume rows")
    parser.add_argument("--pause-runs", type=int, default=4, help="pause/resume cycles (4)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        log("needs root (crun, cgroups, mounts); run `make bench` as root")
        return 2
    if not (TEMPLATE / "rootfs").is_dir():
        log(f"template `base` not found at {TEMPLATE}; run `make setup` first")
        return 2

    started = time.perf_counter()
    machine = machine_line()
    results = Results()
    try:
        if not args.skip_baseline and not args.files_only:
            run_baseline(args, results)
        if not args.skip_shoal:
            run_shoal(args, results)
    except Exception as exc:
        results.failed.append(repr(exc))
        log(f"FAILED: {exc!r}")

    rows, notes = table(args, results)
    print()
    print(machine)
    print()
    print(render(rows))
    print()
    for note in notes:
        print(f"- {note}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"- total bench time {time.perf_counter() - started:.0f} s; load average at the end "
        f"{load}; ✓/✗: goal met or missed"
    )
    if results.failed:
        print()
        for failure in results.failed:
            print(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
