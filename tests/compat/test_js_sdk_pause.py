"""Pause, resume, snapshots and fork of the unmodified npm ``e2b@2.51.0`` SDK against a live
``shoal serve`` (``js/pause.mjs``; output format as in ``test_js_sdk.py``)."""

from __future__ import annotations

import pytest
from support.server import ShoalServer
from test_js_sdk import ScriptRun, run_script


@pytest.fixture(scope="module")
def run(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "pause.mjs")


def test_script_runs_to_the_end(run: ScriptRun) -> None:
    assert run.returncode == 0 and run.done, run.report()
    assert "__script__" not in run.steps, run.report()


def test_pause_and_connect_keep_the_sandbox(run: ScriptRun) -> None:
    assert run.value("pause") == {"paused": True, "running": False}
    assert run.value("second_pause") is False  # 409: already paused
    assert run.value("info_paused") == "paused"
    assert run.value("resume") == {
        "sameId": True,
        "running": True,
        "file": "kept across a pause",
        "sleeping": "1",
        "sameBootId": True,
        "oldHandleWorks": "still\n",
    }


def test_snapshot_copies_are_independent_and_deleted_once(run: ScriptRun) -> None:
    assert run.value("snapshot") == {"hasId": True}
    assert run.value("listed") is True
    assert run.value("copies") == {
        "a": "changed in a",
        "b": "kept across a pause",
        "distinct": True,
    }
    assert run.value("delete_snapshot") == [True, False]


def test_fork_and_a_killed_sandbox(run: ScriptRun) -> None:
    assert run.value("fork") == {"count": 2, "files": ["kept across a pause"] * 2}
    killed = run.value("killed_then_paused")
    assert killed["threw"] is True and killed["name"] == "SandboxNotFoundError", killed
