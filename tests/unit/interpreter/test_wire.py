"""The interpreter's pure pieces: MIME mapping, NDJSON lines, env-var snippets."""

from __future__ import annotations

import json
import subprocess

import pytest

from shoal.interpreter import envs, events
from shoal.interpreter.kernels import normalise
from shoal.interpreter.mime import bundle_to_fields, strip_quotes


@pytest.mark.parametrize(("raw", "text"), [
    ("'abc'", "abc"), ('"abc"', "abc"), ("''abc''", "'abc'"), ("'", "'"), ("a'b", "a'b"),
    ("42", "42"),
])
def test_strip_one_level_of_quotes(raw: str, text: str) -> None:
    assert strip_quotes(raw) == text


def test_bundle_fields_and_extra() -> None:
    fields = bundle_to_fields({
        "text/plain": "'x'", "image/png": "iVBO", "application/json": [1, 2],
        "e2b/data": '{"a": [1]}', "text/html": ["<b>", "x</b>"], "application/x-custom": {"k": 1},
    })
    assert fields == {
        "text": "x", "png": "iVBO", "json": [1, 2], "data": {"a": [1]}, "html": "<b>x</b>",
        "extra": {"application/x-custom": {"k": 1}},
    }


def test_lines_are_single_terminated_json() -> None:
    line = events.encode(events.output("stdout", "a\nb\n", "2024-01-01T00:00:00Z"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"type": "stdout", "text": "a\nb\n",
                                "timestamp": "2024-01-01T00:00:00Z"}
    assert json.loads(events.encode(events.error("E", "v", ["l1", "l2"])))["traceback"] == "l1\nl2"


@pytest.mark.parametrize(("given", "language"), [
    (None, "python"), (" JS ", "javascript"), ("ts", "typescript"), ("Bash", "bash"), ("r", "r"),
])
def test_language_names(given: str | None, language: str) -> None:
    assert normalise(given) == language


def test_bash_snippets_quote_and_reset() -> None:
    values = {"A": "it's $HOME `x`", "B": "2"}
    setter = envs.set_snippet("bash", values)
    assert setter is not None
    reset = envs.reset_snippets("bash", values, {"B": "sandbox"})
    script = f"{setter}; echo \"$A|$B\"; {'; '.join(reset)}; echo \"${{A-unset}}|$B\""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["it's $HOME `x`|2", "unset|sandbox"]


def test_python_snippets_round_trip() -> None:
    values = {"A": "x'\"\\y"}
    env: dict[str, str] = {}
    exec(envs.set_snippet("python", values) or "", {"__import__": _fake_import(env)})
    assert env == values
    exec(envs.unset_snippet("python", ["A"]) or "", {"__import__": _fake_import(env)})
    assert env == {}


def _fake_import(env: dict[str, str]):  # type: ignore[no-untyped-def]
    class _Os:
        environ = env

    return lambda name: _Os
