"""Files through the official ``e2b`` SDK against the live server, beside host baselines.

Throughput: 100 files of 1 MiB and one file of 200 MiB, uploaded and downloaded, each
measured ``runs`` times (the median is reported), beside a ``cp`` of the same data on the
host in the same run: from a tmpfs source into a directory on the filesystem that holds the
server's data directory (upload), and back into tmpfs (download). Neither side syncs: like
an upload, a ``cp`` is over when the kernel has the bytes in its page cache. The data is
random (``os.urandom``), so no layer can flatter itself by compressing it.

Watch latency: the same writer, a bash loop doing ``printf x > fN`` and then printing
``$EPOCHREALTIME`` (a bash builtin: no fork between the write and the timestamp), runs once
inside a sandbox watched through the async SDK's ``watch_dir`` stream and once on the host
watched by a bare ``inotify_simple`` reader; latency is the CLOCK_REALTIME of the WRITE
event's arrival minus the writer's timestamp (the sandbox shares the host's clock).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from e2b import AsyncSandbox, Sandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEvent, FilesystemEventType
from inotify_simple import INotify
from inotify_simple import flags as iflags

from bench.stats import Latency

SANDBOX_TIMEOUT = 300
SMALL_COUNT = 100
SMALL_SIZE = 1 << 20
LARGE_SIZE = 200 << 20
WATCH_EVENTS = 50
WATCH_GAP = 0.02
"""Seconds between two watched writes."""
SHM = Path("/dev/shm")

WRITER = (
    'for i in $(seq 1 {n}); do printf x > "{dir}/f$i"; echo "$i $EPOCHREALTIME"; sleep {gap}; done'
)


@dataclass(frozen=True)
class Throughput:
    """Bytes moved per run and each run's wall time; the median run is the figure."""

    nbytes: int
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mb_s(self) -> float:
        """MB/s (10^6 bytes per second) of the median run."""
        return self.nbytes / self.median / 1e6


@dataclass
class FilesResults:
    small_write_files: Throughput | None = None
    small_write_seq: Throughput | None = None
    small_read: Throughput | None = None
    large_write: Throughput | None = None
    large_read: Throughput | None = None
    cp_small_up: Throughput | None = None
    cp_small_down: Throughput | None = None
    cp_large_up: Throughput | None = None
    cp_large_down: Throughput | None = None
    watch: Latency | None = None
    watch_after_write: Latency | None = None
    """``files.write`` returning → its WRITE event at the SDK (may be < 0: the event can
    beat the HTTP response)."""
    inotify: Latency | None = None


# -- data ------------------------------------------------------------------------------------


@dataclass
class Data:
    """The random payload: 100 x 1 MiB in memory and in a tmpfs directory, 200 MiB in a
    tmpfs file (the SDK streams a file object; ``cp`` reads the same file)."""

    small: list[bytes]
    small_dir: Path
    large_file: Path
    large_sha256: str

    @property
    def small_bytes(self) -> int:
        return len(self.small) * SMALL_SIZE


@contextmanager
def payload() -> Iterator[Data]:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-files-", dir=SHM))
    try:
        small_dir = root / "small"
        small_dir.mkdir()
        small = [os.urandom(SMALL_SIZE) for _ in range(SMALL_COUNT)]
        for i, blob in enumerate(small):
            (small_dir / f"f{i:03}").write_bytes(blob)
        large_file = root / "large.bin"
        digest = hashlib.sha256()
        with large_file.open("wb") as f:
            for _ in range(LARGE_SIZE // (8 << 20)):
                block = os.urandom(8 << 20)
                digest.update(block)
                f.write(block)
        yield Data(small, small_dir, large_file, digest.hexdigest())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def timed(
    runs: int,
    nbytes: int,
    one: Callable[[], None],
    before: Callable[[], None] | None = None,
) -> Throughput:
    """Time ``one()`` ``runs`` times, after one untimed warm-up run; ``before()`` (untimed)
    precedes every run, e.g. to remove what the previous one wrote."""
    samples = []
    for run in range(-1, runs):
        if before:
            before()
        t0 = time.perf_counter()
        one()
        elapsed = time.perf_counter() - t0
        if run >= 0:
            samples.append(elapsed)
    return Throughput(nbytes, tuple(samples))


# -- the SDK ---------------------------------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(what)


def sdk_small(sbx: Sandbox, data: Data, runs: int, results: FilesResults) -> None:
    base = "/home/user/small"
    paths = [f"{base}/f{i:03}" for i in range(len(data.small))]

    def clear() -> None:
        sbx.files.remove(base)

    def write_files() -> None:
        entries = sbx.files.write_files(
            [{"path": p, "data": blob} for p, blob in zip(paths, data.small, strict=True)]
        )
        _check(len(entries) == len(paths), f"write_files wrote {len(entries)} files")

    def write_seq() -> None:
        for p, blob in zip(paths, data.small, strict=True):
            sbx.files.write(p, blob)

    def read() -> None:
        for p, blob in zip(paths, data.small, strict=True):
            got = sbx.files.read(p, format="bytes")
            _check(got == blob, f"{p} came back different")

    results.small_write_files = timed(runs, data.small_bytes, write_files, clear)
    results.small_write_seq = timed(runs, data.small_bytes, write_seq, clear)
    results.small_read = timed(runs, data.small_bytes, read)
    clear()


def sdk_large(sbx: Sandbox, data: Data, runs: int, results: FilesResults) -> None:
    path = "/home/user/large.bin"

    def remove() -> None:
        sbx.files.remove(path)

    def write() -> None:
        with data.large_file.open("rb") as f:  # a file object: streamed as octet-stream
            info = sbx.files.write(path, f)
        _check(info.path == path, f"wrote {info.path}")

    results.large_write = timed(runs, LARGE_SIZE, write, remove)
    size = sbx.files.get_info(path).size
    _check(size == LARGE_SIZE, f"uploaded {size} bytes of {LARGE_SIZE}")

    received: list[bytes] = []

    def read() -> None:
        received.clear()
        for chunk in sbx.files.read(path, format="stream"):
            received.append(chunk)

    results.large_read = timed(runs, LARGE_SIZE, read)
    got = hashlib.sha256(b"".join(received)).hexdigest()
    received.clear()
    _check(got == data.large_sha256, "the 200 MiB download came back different")
    sbx.files.remove(path)


async def sdk_watch(events: int) -> tuple[Latency, Latency]:
    """(writer in the sandbox → event, ``files.write`` returning → event), async SDK."""
    sbx = await AsyncSandbox.create(timeout=SANDBOX_TIMEOUT)
    try:
        watched = "/home/user/watched"
        await sbx.files.make_dir(watched)
        arrived: dict[str, float] = {}
        done = asyncio.Event()
        want: set[str] = set()

        def on_event(event: FilesystemEvent) -> None:
            if event.type == FilesystemEventType.WRITE and event.name not in arrived:
                arrived[event.name] = time.time()
                if want and want <= arrived.keys():
                    done.set()

        handle = await sbx.files.watch_dir(watched, on_event=on_event, timeout=0)
        try:
            # 1. A writer inside the sandbox stamps each write with $EPOCHREALTIME.
            want.update(f"f{i}" for i in range(1, events + 1))
            result = await sbx.commands.run(WRITER.format(n=events, dir=watched, gap=WATCH_GAP))
            written = _stamps(result.stdout)
            await asyncio.wait_for(done.wait(), 10)
            in_sandbox = Latency.of([arrived[f"f{i}"] - t for i, t in written.items()])

            # 2. files.write, from its return to the event (events may beat the response).
            done.clear()
            arrived.clear()
            want.clear()
            want.update(f"u{i}" for i in range(events))
            returned: dict[str, float] = {}
            for i in range(events):
                await sbx.files.write(f"{watched}/u{i}", b"x")
                returned[f"u{i}"] = time.time()
                await asyncio.sleep(WATCH_GAP)
            await asyncio.wait_for(done.wait(), 10)
            after_write = Latency.of([arrived[n] - t for n, t in returned.items()])
        finally:
            await handle.stop()
    finally:
        with suppress(Exception):
            await sbx.kill()
    return in_sandbox, after_write


def _stamps(stdout: str) -> dict[int, float]:
    out = {}
    for line in stdout.splitlines():
        i, t = line.split()
        out[int(i)] = float(t)
    return out


# -- host baselines --------------------------------------------------------------------------


def cp_baselines(data: Data, near: Path, runs: int, results: FilesResults) -> None:
    """``cp`` tmpfs → a directory on ``near``'s filesystem (upload), and back (download)."""
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-cp-", dir=near))
    back = Path(tempfile.mkdtemp(prefix="shoal-bench-cp-back-", dir=SHM))
    try:
        small_src = [str(p) for p in sorted(data.small_dir.iterdir())]

        def cp(*args: str) -> None:
            subprocess.run(["cp", *args], check=True)

        def fresh(d: Path) -> Callable[[], None]:
            def go() -> None:
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()

            return go

        up, down = work / "small", back / "small"
        up_dst = [str(up / Path(p).name) for p in small_src]
        large_up, large_down = work / "large.bin", back / "large.bin"

        results.cp_small_up = timed(
            runs, data.small_bytes, lambda: cp(*small_src, str(up)), fresh(up)
        )
        results.cp_small_down = timed(
            runs, data.small_bytes, lambda: cp(*up_dst, str(down)), fresh(down)
        )
        results.cp_large_up = timed(
            runs,
            LARGE_SIZE,
            lambda: cp(str(data.large_file), str(large_up)),
            lambda: large_up.unlink(missing_ok=True),
        )
        results.cp_large_down = timed(
            runs,
            LARGE_SIZE,
            lambda: cp(str(large_up), str(large_down)),
            lambda: large_down.unlink(missing_ok=True),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(back, ignore_errors=True)


def inotify_baseline(near: Path, events: int) -> Latency:
    """The same bash writer on the host, watched by a bare inotify reader."""
    watched = Path(tempfile.mkdtemp(prefix="shoal-bench-inotify-", dir=near))
    arrived: dict[str, float] = {}
    try:
        with INotify() as ino:
            ino.add_watch(watched, iflags.MODIFY)
            stop = threading.Event()

            def reader() -> None:
                while not stop.is_set() and len(arrived) < events:
                    for ev in ino.read(timeout=100):
                        arrived.setdefault(ev.name, time.time())

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            out = subprocess.run(
                ["bash", "-c", WRITER.format(n=events, dir=watched, gap=WATCH_GAP)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            thread.join(10)
            stop.set()
        written = _stamps(out)
        return Latency.of([arrived[f"f{i}"] - t for i, t in written.items()])
    finally:
        shutil.rmtree(watched, ignore_errors=True)


# -- everything ------------------------------------------------------------------------------


def measure_files(
    near: Path, runs: int, step: Callable[[str, Callable[[], None]], object]
) -> FilesResults:
    """Every files measurement; ``step(name, fn)`` runs (and logs, and records failures
    of) one. ``near``: a directory on the filesystem of the server's data directory."""
    results = FilesResults()
    with payload() as data:

        def sdk(fn: Callable[[Sandbox, Data, int, FilesResults], None]) -> Callable[[], None]:
            def go() -> None:
                sbx = Sandbox.create(timeout=SANDBOX_TIMEOUT)
                try:
                    fn(sbx, data, runs, results)
                finally:
                    sbx.kill()

            return go

        step(f"files: SDK {SMALL_COUNT} x 1 MiB up and down", sdk(sdk_small))
        step("files: SDK 200 MiB up and down", sdk(sdk_large))
        step("files: `cp` baselines", lambda: cp_baselines(data, near, runs, results))

    def watch() -> None:
        results.watch, results.watch_after_write = asyncio.run(sdk_watch(WATCH_EVENTS))

    def inotify() -> None:
        results.inotify = inotify_baseline(near, WATCH_EVENTS)

    step(f"files: SDK watch_dir latency ({WATCH_EVENTS} events)", watch)
    step("files: bare inotify latency", inotify)
    return results


__all__ = ["FilesResults", "Throughput", "measure_files"]
