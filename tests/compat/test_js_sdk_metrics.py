"""``getMetrics`` of the unmodified npm ``e2b@2.51.0`` SDK against a live ``shoal serve``.

``js/metrics.mjs`` waits for two samples, then asks for time ranges the way the JS SDK
sends them (``Math.round`` of milliseconds to Unix seconds, where Python truncates) and for
unknown and killed sandboxes. The script and its output format are those of
``test_js_sdk.py`` (see ``js/lib.mjs``).
"""

from __future__ import annotations

import pytest
from support.server import ShoalServer
from test_js_sdk import ScriptRun, iso, run_script

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def metrics(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "metrics.mjs")


def test_script_runs_to_the_end(metrics: ScriptRun) -> None:
    assert metrics.returncode == 0 and metrics.done, metrics.report()
    assert "__script__" not in metrics.steps, metrics.report()


def test_samples_carry_every_field_and_the_sandbox_limits(metrics: ScriptRun) -> None:
    created = metrics.value("create")
    samples = metrics.value("two_samples")
    assert len(samples) >= 2
    for m in samples:
        assert set(m) == {
            "timestamp",
            "cpuUsedPct",
            "cpuCount",
            "memUsed",
            "memTotal",
            "memCache",
            "diskUsed",
            "diskTotal",
        }
        assert m["cpuCount"] == created["cpuCount"]
        assert m["memTotal"] == created["memoryMB"] * MIB
        assert 0 <= m["cpuUsedPct"] <= 100
        assert 0 < m["memUsed"] < m["memTotal"]
        assert 0 < m["diskUsed"] < m["diskTotal"] <= 1024 * MIB
    stamps = [iso(m["timestamp"]) for m in samples]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_start_and_end_filter_samples(metrics: ScriptRun) -> None:
    first, second = (m["timestamp"] for m in metrics.value("two_samples")[:2])
    later = [m["timestamp"] for m in metrics.value("from_second_sample")]
    assert second in later and first not in later
    earlier = [m["timestamp"] for m in metrics.value("up_to_first_sample")]
    assert first in earlier and second not in earlier
    assert metrics.value("past_range") == []
    assert [m["timestamp"] for m in metrics.value("static")] == [first, second]


def test_unknown_and_killed_sandboxes_throw_not_found(metrics: ScriptRun) -> None:
    for name in ("unknown", "killed"):
        outcome = metrics.value(name)
        assert outcome != "returned", name
        assert outcome["name"] == "SandboxNotFoundError", (name, outcome)
