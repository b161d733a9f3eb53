"""The unmodified npm ``@e2b/code-interpreter@2.8.0`` SDK against a live ``shoal serve``.

``js/ci.mjs`` creates one sandbox of the SDK's default template (``code-interpreter-v1``) and
drives ``runCode`` (state, results, ``onStdout``/``onStderr``/``onResult``/``onError``, errors,
a matplotlib chart, ``language: 'js'``/``'javascript'``/``'typescript'``, ``envs``,
``timeoutMs``) and the contexts API. The script and its output format are those of
``test_js_sdk.py`` (see ``js/lib.mjs``).

The JS client is not a copy of the Python one: it aborts a ``timeoutMs`` run with an
``AbortController``, drops the body of an error answer other than 404/502, and checks
``context`` + ``language`` itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from support.server import ShoalServer
from test_js_sdk import JS_DIR, ScriptRun, run_script

CI_SDK_VERSION = "2.8.0"
PNG_MAGIC = base64.b16encode(b"\x89PNG\r\n\x1a\n").decode().lower()


@pytest.fixture(scope="module")
def ci(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "ci.mjs")


def test_the_pinned_code_interpreter_sdk_is_installed() -> None:
    manifest = json.loads((JS_DIR / "package.json").read_text())
    assert manifest["dependencies"]["@e2b/code-interpreter"] == CI_SDK_VERSION
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@e2b/code-interpreter"]["version"] == CI_SDK_VERSION
    installed = JS_DIR / "node_modules" / "@e2b" / "code-interpreter" / "package.json"
    assert installed.exists(), "run scripts/setup --test"
    assert json.loads(installed.read_text())["version"] == CI_SDK_VERSION


def test_script_runs_to_the_end(ci: ScriptRun) -> None:
    assert ci.returncode == 0 and ci.done, ci.report()
    assert "__script__" not in ci.steps, ci.report()


def test_create_uses_the_default_code_interpreter_template(ci: ScriptRun) -> None:
    assert ci.value("create")["templateId"] == "code-interpreter-v1"


def test_state_is_kept_and_the_main_result_is_the_text(ci: ScriptRun) -> None:
    state = ci.value("state")
    assert state["first"]["results"] == [] and state["first"]["error"] is None
    second = state["second"]
    assert second["text"] == "42"
    assert second["results"] == [
        {"isMainResult": True, "text": "42", "formats": [], "extra": {}}
    ]
    assert second["executionCount"] == state["first"]["executionCount"] + 1
    assert ci.value("text_result")["text"] == "abc"  # the repr's quotes stripped


def test_output_streams_to_the_callbacks_while_the_code_runs(ci: ScriptRun) -> None:
    seen = ci.value("callbacks")
    # "first" reached onStdout before the code went on: it waited for the callback's file
    assert seen["stdout"] == [
        {"line": "first\n", "error": False},
        {"line": "second\n", "error": False},
    ]
    assert seen["stderr"] == [{"line": "warned\n", "error": True}]
    assert seen["results"] == [{"text": "done", "isMainResult": True}]
    execution = seen["execution"]
    assert execution["stdout"] == ["first\n", "second\n"]
    assert execution["stderr"] == ["warned\n"]
    assert execution["text"] == "done"


def test_an_exception_is_the_execution_error(ci: ScriptRun) -> None:
    failed = ci.value("error")
    error = failed["execution"]["error"]
    assert error["name"] == "ZeroDivisionError"
    assert error["value"] == "division by zero"
    assert "boom()" in error["traceback"] and "ZeroDivisionError" in error["traceback"]
    assert failed["execution"]["results"] == []
    assert failed["onError"] == [error]


def test_matplotlib_chart_comes_back_as_png_and_chart(ci: ScriptRun) -> None:
    chart = ci.value("chart")
    assert chart["error"] is None
    assert chart["charts"] == [
        {
            "isMainResult": False,
            "pngHead": PNG_MAGIC,
            "chartType": "line",
            "chartTitle": "growth",
            "elements": [{"label": "squares", "points": [[1, 1], [2, 4], [3, 9]]}],
        }
    ]


def test_javascript_by_either_name_shares_one_context(ci: ScriptRun) -> None:
    js = ci.value("javascript")
    assert js["js"]["stdout"] == ["hi from js\n"]
    assert js["js"]["text"] == "42"
    assert js["js"]["error"] is None
    assert js["set"]["error"] is None
    assert js["read"]["text"] == "42"  # set through "js", read through "javascript"


def test_typescript(ci: ScriptRun) -> None:
    ts = ci.value("typescript")
    assert ts["error"] is None
    assert ts["stdout"] == ["answer=42\n"]
    assert ts["text"] == "42"


def _ids(contexts: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in contexts]


def test_contexts_create_list_restart_remove(ci: ScriptRun) -> None:
    c = ci.value("contexts")
    ctx = c["ctx"]
    assert (ctx["language"], ctx["cwd"]) == ("python", "/tmp")
    assert c["cwd"]["text"] == "/tmp"
    assert c["inContext"]["text"] == "7"
    assert c["inDefault"]["error"]["name"] == "NameError"  # contexts do not share state
    assert ctx in c["listed"]
    defaults = {(x["language"], x["cwd"]) for x in c["listed"] if x["id"] != ctx["id"]}
    assert {("python", "/home/user"), ("javascript", "/home/user")} <= defaults
    # restart wipes the state, keeps the context and its cwd
    assert c["afterRestart"]["error"]["name"] == "NameError"
    assert c["cwdAfterRestart"]["text"] == "/tmp"
    assert ctx["id"] not in _ids(c["listedAfterRemove"])
    assert (c["js"]["language"], c["js"]["cwd"]) == ("javascript", "/tmp")  # "js" normalised
    assert c["jsCwd"]["text"] == "/tmp"


def test_a_removed_context_is_not_found(ci: ScriptRun) -> None:
    c = ci.value("contexts")
    message = f"Context {c['ctx']['id']} not found"
    for call in ("runRemoved", "restartRemoved", "removeRemoved"):
        assert c[call]["ok"] is False, call
        assert c[call]["name"] == "NotFoundError", c[call]
        assert message in c[call]["message"]


def test_sandbox_and_per_run_env_vars(ci: ScriptRun) -> None:
    envs = ci.value("envs")
    for language in ("python", "javascript"):
        assert envs[language] == ["bar unset\n", "override yes\n", "bar unset\n"], language


def test_bad_arguments(ci: ScriptRun) -> None:
    bad = ci.value("bad_arguments")
    # checked by the SDK before any request
    assert bad["contextAndLanguage"]["name"] == "InvalidArgumentError"
    # the server's 500; this SDK keeps only the status line of it
    assert bad["unknownLanguage"]["name"] == "SandboxError"
    assert bad["unknownLanguage"]["message"].startswith("500")
    assert bad["unknownContext"]["name"] == "NotFoundError"
    assert "Context no-such-context not found" in bad["unknownContext"]["message"]


def test_timeout_interrupts_an_endless_loop(ci: ScriptRun) -> None:
    timeout = ci.value("timeout")
    assert timeout["loop"]["ok"] is False
    assert timeout["loop"]["name"] == "TimeoutError"
    assert "timeoutMs" in timeout["loop"]["message"]
    # the next call (with its own 20 s timeoutMs) found the kernel interrupted, state intact
    assert timeout["next"]["error"] is None
    assert timeout["next"]["text"] == "still here"
