"""Small statistics and formatting helpers for the benchmark table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    """Latency samples in seconds."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(tuple(samples))

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def n(self) -> int:
        return len(self.samples)


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def ms_fine(seconds: float) -> str:
    """Milliseconds with two decimals, for latencies well under a millisecond."""
    return f"{seconds * 1000:.2f} ms"


def mb_s(rate: float) -> str:
    """A rate in MB/s (10^6 bytes per second)."""
    return f"{rate:,.0f} MB/s"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def per_gib(bytes_each: float) -> str:
    if bytes_each <= 0:
        return "n/a"
    return f"{2**30 / bytes_each:,.0f} /GiB"
