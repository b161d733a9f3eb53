"""The unmodified npm ``e2b@2.51.0`` SDK against a live ``shoal serve``.

Each script in ``tests/compat/js`` drives the SDK through a sequence of named steps and prints
one JSON line per step (see ``js/lib.mjs``); the tests here assert on what the SDK returned or
threw, so a failure shows the actual values. Each script runs once per module and its steps
are shared by the tests that check them. ``scripts/setup --test`` installs the pinned SDK
(``npm ci`` in ``tests/compat/js``).

The JS client is stricter than the Python one (e2b-compat.md §4.1): connect-es needs the
end-stream envelope on every stream and derives error codes from the HTTP status on
non-200 streaming answers, so these tests are not a duplicate of the Python ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.server import ShoalServer

JS_DIR = Path(__file__).resolve().parent / "js"
SDK_VERSION = "2.51.0"
ENVD_VERSION = "0.6.13"
SCRIPT_TIMEOUT = 100.0  # below pytest's per-test timeout, so a hang reports the steps done so far
KILLED_MESSAGE = "killed or reached its end of life"


@dataclass
class ScriptRun:
    """The outcome of one ``node <script>`` run: its steps by name, and how it ended."""

    script: str
    returncode: int | None
    stdout: str
    stderr: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: bool = False

    def report(self) -> str:
        return (
            f"node {self.script}: exit {self.returncode}, done={self.done}\n"
            f"--- stdout:\n{self.stdout[-6000:]}\n--- stderr:\n{self.stderr[-4000:]}"
        )

    def _step(self, name: str) -> dict[str, Any]:
        step = self.steps.get(name)
        assert step is not None, f"step {name!r} never finished\n{self.report()}"
        return step

    def value(self, name: str) -> Any:
        """The step's value; fails with the SDK's error if the step threw."""
        step = self._step(name)
        assert step["ok"], f"step {name!r} threw {step['error']}"
        return step["value"]

    def error(self, name: str) -> dict[str, Any]:
        """The error the step threw; fails if it returned normally."""
        step = self._step(name)
        assert not step["ok"], f"step {name!r} returned {step['value']!r}, expected an error"
        error: dict[str, Any] = step["error"]
        return error


def run_script(server: ShoalServer, script: str) -> ScriptRun:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: run scripts/setup --test")
    installed = JS_DIR / "node_modules" / "e2b" / "package.json"
    if not installed.exists():
        pytest.fail(f"{installed} is missing: run scripts/setup --test (npm ci in {JS_DIR})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(server.client_env())
    try:
        proc = subprocess.run(
            [node, script],
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
        run = ScriptRun(script, proc.returncode, proc.stdout, proc.stderr)
    except subprocess.TimeoutExpired as exc:
        # Output captured before the timeout is bytes, whatever `text=` says.
        out, err = (
            b.decode(errors="replace") if isinstance(b, bytes) else b or ""
            for b in (exc.stdout, exc.stderr)
        )
        run = ScriptRun(script, None, out, err + f"\n(killed after {SCRIPT_TIMEOUT} s)")
    for line in run.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("done"):
            run.done = True
        elif "step" in record:
            run.steps[record["step"]] = record
    return run


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def commands(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "commands.mjs")


@pytest.fixture(scope="module")
def pty(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "pty.mjs")


@pytest.fixture(scope="module")
def lifecycle(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "lifecycle.mjs")


@pytest.fixture(scope="module")
def killed(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "killed.mjs")


def test_the_pinned_sdk_is_installed() -> None:
    manifest = json.loads((JS_DIR / "package.json").read_text())
    assert manifest["dependencies"]["e2b"] == SDK_VERSION
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/e2b"]["version"] == SDK_VERSION
    installed = JS_DIR / "node_modules" / "e2b" / "package.json"
    assert installed.exists(), "run scripts/setup --test"
    assert json.loads(installed.read_text())["version"] == SDK_VERSION


@pytest.mark.parametrize("script", ["commands", "pty", "lifecycle", "killed"])
def test_script_runs_to_the_end(script: str, request: pytest.FixtureRequest) -> None:
    run: ScriptRun = request.getfixturevalue(script)
    assert run.returncode == 0 and run.done, run.report()
    assert "__script__" not in run.steps, run.report()


# --- commands ------------------------------------------------------------------------------


def test_create_returns_an_id_and_a_usable_envd_version(commands: ScriptRun) -> None:
    created = commands.value("create")
    assert re.fullmatch(r"[a-z0-9]+", created["sandboxId"]), created
    assert created["envdVersion"] == ENVD_VERSION
    assert created["hasAccessToken"] is True


def test_run_returns_stdout_stderr_and_exit_code(commands: ScriptRun) -> None:
    assert commands.value("run_output") == {
        "stdout": "out\nout2\n",
        "stderr": "err\n",
        "exitCode": 0,
        "error": None,
    }
    assert commands.value("run_utf8") == "h\u00e9llo \u2713\n"
    assert commands.value("run_large") == {
        "length": 1_288_895,
        "lines": 200_000,
        "first": "1",
        "last": "200000",
    }


def test_nonzero_exit_raises_command_exit_error(commands: ScriptRun) -> None:
    error = commands.error("run_exit_error")
    assert error["name"] == "CommandExitError"
    assert error["exitCode"] == 3
    assert error["stdout"] == "partial\n"
    assert error["stderr"] == "bad\n"
    assert error["error"] == "exit status 3"


def test_sandbox_and_command_env_vars(commands: ScriptRun) -> None:
    env = commands.value("run_env")
    assert env == {
        "id": commands.value("create")["sandboxId"],
        "sbx": "true",
        "tpl": "base",
        "level": "from-command",  # the command's envs win over the sandbox's
        "keep": "kept",
        "cmd": "per command",
        "home": "/home/user",
        "user": "user",
    }
    assert commands.value("run_env_not_persisted") == "cmd=unset level=from-create\n"


def test_cwd_and_users(commands: ScriptRun) -> None:
    assert commands.value("run_cwd") == "/tmp\n"
    assert commands.value("run_default_cwd_user") == "/home/user\nuser\n"
    assert commands.value("run_as_root") == "root\n0\n"
    assert commands.value("sudo") == "root\n"


def test_unknown_user_and_missing_cwd_are_rejected(commands: ScriptRun) -> None:
    assert commands.error("run_unknown_user")["name"] == "AuthenticationError"
    error = commands.error("run_missing_cwd")
    assert error["name"] == "InvalidArgumentError"
    assert "/does/not/exist" in error["message"]


def test_output_streams_while_the_command_runs(commands: ScriptRun) -> None:
    live = commands.value("live_output")
    assert live["running"] is True
    assert live["text"] == "first\n"
    assert live["killed"] is True
    assert live["waited"] == {"name": "CommandExitError", "exitCode": -1, "error": "signal: killed"}


def test_background_command_list_and_kill(commands: ScriptRun) -> None:
    bg = commands.value("background")
    assert bg["listed"] == {
        "pid": bg["pid"],
        "cmd": "/bin/bash",
        "args": ["-l", "-c", "sleep 91"],
        "envs": {"BG": "1"},
        "cwd": "/tmp",
    }
    # The pid is a real one inside the sandbox, visible to other commands.
    assert bg["probe"] == "alive\nsleep 91 "
    assert bg["killed"] is True
    assert bg["waited"] == {"name": "CommandExitError", "exitCode": -1, "error": "signal: killed"}
    assert bg["gone"] is True
    assert bg["killedAgain"] is False
    assert commands.value("kill_unknown_pid") is False


def test_stdin_send_and_close(commands: ScriptRun) -> None:
    stdin = commands.value("stdin")
    assert stdin["stdout"] == "hello\nworld\n"
    assert stdin["exitCode"] == 0
    # Each line came back on its own, before stdin was closed.
    assert stdin["chunks"] == ["hello\n", "world\n"]


def test_stdin_is_refused_when_not_enabled(commands: ScriptRun) -> None:
    error = commands.error("stdin_disabled")
    assert "stdin" in error["message"], error


def test_connect_reattaches_to_a_running_command(commands: ScriptRun) -> None:
    assert commands.value("connect") == {
        "samePid": True,
        "stdout": "got:ping\n",
        "exitCode": 0,
        "seen": "got:ping\n",
    }


def test_connect_to_an_unknown_pid_is_not_found(commands: ScriptRun) -> None:
    # connect-es reads a non-200 streaming answer's code from the HTTP status only; not_found
    # arrives intact only as an end-stream error (e2b-compat.md §4.1).
    error = commands.error("connect_unknown_pid")
    assert error["name"] == "NotFoundError", error


def test_command_timeout_kills_the_process(commands: ScriptRun) -> None:
    result = commands.value("command_timeout")
    assert result["err"] is not None and result["err"]["name"] == "TimeoutError", result
    assert result["killedInSandbox"] is True


def test_concurrent_commands_on_one_sandbox(commands: ScriptRun) -> None:
    assert commands.value("concurrent") == [[f"n{i}\n", f"m{i}\n"] for i in range(8)]


def test_static_kill_of_a_running_sandbox(commands: ScriptRun) -> None:
    assert commands.value("is_running") is True
    assert commands.value("static_kill") is True


# --- pty -----------------------------------------------------------------------------------


def test_pty_create_is_listed(pty: ScriptRun) -> None:
    created = pty.value("pty_create")
    assert created["listed"] is not None
    assert created["listed"]["pid"] == created["pid"]
    assert created["listed"]["cmd"] == "/bin/bash"
    assert created["listed"]["args"] == ["-i", "-l"]
    assert created["listed"]["cwd"] == "/tmp"


def test_pty_size_env_cwd_and_user(pty: ScriptRun) -> None:
    assert pty.value("pty_initial") == {"cols": 80, "lines": 24, "isTty": "yes"}
    assert pty.value("pty_env") == {
        "TERM": "xterm-256color",
        "PTY_VAR": "pv",
        "SBX_LEVEL": "from-create",
        "cwd": "/tmp",
        "user": "user",
    }


def test_pty_resize_is_seen_by_tput(pty: ScriptRun) -> None:
    assert pty.value("pty_resize") == {"cols": 123, "lines": 41, "stty": "41x123"}


def test_pty_control_c_interrupts_the_foreground_job(pty: ScriptRun) -> None:
    assert pty.value("pty_control_c") == {"started": True, "answer": "42", "sleepLeft": False}


def test_pty_reconnect(pty: ScriptRun) -> None:
    again = pty.value("pty_reconnect")
    assert again["samePid"] is True
    assert again["answer"] == "7"
    assert again["oldHandleGotMore"] is False


def test_pty_exit_codes_and_kill(pty: ScriptRun) -> None:
    assert pty.value("pty_exit_code") == {
        "name": "CommandExitError",
        "exitCode": 3,
        "error": "exit status 3",
    }
    assert pty.value("pty_exit_zero")["exitCode"] == 0
    assert pty.value("pty_kill") == {
        "killed": True,
        "waited": {"name": "CommandExitError", "exitCode": -1, "error": "signal: killed"},
        "killedAgain": False,
    }


def test_pty_calls_on_an_unknown_pid_are_not_found(pty: ScriptRun) -> None:
    assert pty.value("pty_unknown_pid") == {
        "sendInput": "NotFoundError",
        "resize": "NotFoundError",
        "connect": "NotFoundError",
    }


# --- lifecycle -----------------------------------------------------------------------------


def test_get_info(lifecycle: ScriptRun) -> None:
    ids = lifecycle.value("create")
    for step, role in (("get_info", "a"), ("static_get_info", "b")):
        info = lifecycle.value(step)
        assert info["sandboxId"] == ids[role]
        assert info["templateId"] == "base"
        assert info["metadata"]["role"] == role
        assert info["envdVersion"] == ENVD_VERSION
        assert info["state"] == "running"
        assert info["cpuCount"] >= 1 and info["memoryMB"] >= 128
        lifetime = iso(info["endAt"]) - iso(info["startedAt"])
        assert abs(lifetime - timedelta(seconds=120)) <= timedelta(seconds=2), info


def test_list_filters_by_metadata_and_pages(lifecycle: ScriptRun) -> None:
    listed = lifecycle.value("list_paged")
    ids = listed["ids"]
    pages = listed["pages"]
    assert [len(p["ids"]) for p in pages] == [2, 1], pages
    assert [p["hasNextAfter"] for p in pages] == [True, False]
    seen = [i for p in pages for i in p["ids"]]
    assert sorted(seen) == sorted([ids["a"], ids["b"], ids["c"]])
    assert lifecycle.value("list_two_keys") == [
        {
            "sandboxId": ids["b"],
            "metadata": {"suite": lifecycle.value("get_info")["metadata"]["suite"], "role": "b"},
            "state": "running",
        }
    ]
    assert lifecycle.value("list_state_running") == sorted([ids["a"], ids["b"], ids["c"]])


def test_list_items_carry_the_sandbox_fields(lifecycle: ScriptRun) -> None:
    ids = lifecycle.value("create")
    (item,) = lifecycle.value("list_item")
    assert item["sandboxId"] == ids["other"]
    assert item["templateId"] == "base"
    assert item["metadata"]["role"] == "a"
    assert item["metadata"]["suite"].endswith("-other")
    assert item["state"] == "running"
    assert item["envdVersion"] == ENVD_VERSION
    assert item["hasStartedAt"] is True
    assert iso(item["endAt"]) > iso(item["startedAt"])


def test_set_timeout_extends_and_connect_does_not_shorten(lifecycle: ScriptRun) -> None:
    ids = lifecycle.value("create")
    t = lifecycle.value("set_timeout")
    started, before, after = iso(t["startedAt"]), iso(t["endBefore"]), iso(t["endAfter"])
    assert after > before
    # 600 s from the moment of the call, which came after the start.
    assert after - started >= timedelta(seconds=600)
    assert iso(t["endAfterConnect"]) >= after
    assert t["connectedId"] == ids["a"]
    assert t["run"] == f"via-connect\n{ids['a']}\n"


def test_unknown_sandbox_is_not_found(lifecycle: ScriptRun) -> None:
    assert lifecycle.value("connect_unknown")["name"] == "SandboxNotFoundError"
    assert lifecycle.value("get_info_unknown")["name"] == "SandboxNotFoundError"


def test_set_timeout_zero_ends_the_sandbox(lifecycle: ScriptRun) -> None:
    result = lifecycle.value("timeout_zero")
    assert result["stopped"] is True
    assert result["listed"] == []
    assert isinstance(result["run"], dict), result  # the command fails: there is no sandbox


def test_the_server_expires_a_sandbox_at_its_timeout(lifecycle: ScriptRun) -> None:
    assert lifecycle.value("create_timeout_expires") == {"first": True, "stopped": True}


def test_kill(lifecycle: ScriptRun) -> None:
    ids = lifecycle.value("create")
    k = lifecycle.value("kill")
    assert k["killed"] is True
    assert k["running"] is False
    assert k["killedAgain"] is False
    assert isinstance(k["run"], dict), k
    assert k["getInfo"]["name"] == "SandboxNotFoundError"
    assert k["connect"]["name"] == "SandboxNotFoundError"
    # b was ended by set_timeout(0) and c by kill: only a is left.
    assert k["listedIds"] == [ids["a"]]


def test_unknown_template_is_refused(lifecycle: ScriptRun) -> None:
    result = lifecycle.value("create_unknown_template")
    assert result != "created"
    assert "no-such-template-xyz" in result["message"]


def test_wrong_api_key_is_an_authentication_error(lifecycle: ScriptRun) -> None:
    assert lifecycle.value("wrong_api_key")["name"] == "AuthenticationError"
    assert lifecycle.value("create_with_wrong_api_key")["name"] == "AuthenticationError"


# --- a sandbox that dies under running streams -------------------------------------------


@pytest.mark.parametrize("how", ["killed_mid_stream", "expired_mid_stream"])
def test_streams_of_a_dead_sandbox_error_out(killed: ScriptRun, how: str) -> None:
    result = killed.value(how)
    for stream in ("foreground", "background", "pty"):
        outcome = result[stream]
        # Not a clean end (which the SDK would report as an exit or "exited without a result").
        assert outcome["settled"] == "rejected", (stream, outcome)
        assert outcome["name"] == "TimeoutError", (stream, outcome)
        assert KILLED_MESSAGE in outcome["message"], (stream, outcome)
    assert result["running"] is False


def test_calls_after_a_kill_fail(killed: ScriptRun) -> None:
    result = killed.value("killed_mid_stream")
    assert result["killed"] is True
    assert result["after"]["name"] == "SandboxNotFoundError", result
    assert result["listAfter"]["name"] == "TimeoutError", result
    assert "was not found" in result["listAfter"]["message"], result
