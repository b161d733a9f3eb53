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


class _FakeKC:
    """Replays one execution's iopub messages and its reply, as a kernel client would."""

    def __init__(self, iopub: list[tuple[str, dict]], reply: dict) -> None:  # type: ignore[type-arg]
        self._iopub = iopub
        self._reply = reply

    def execute(self, code: str, **_: object) -> str:
        return "m1"

    async def get_iopub_msg(self, **_: object) -> dict:  # type: ignore[type-arg]
        kind, content = self._iopub.pop(0)
        return {"msg_type": kind, "content": content, "header": {"date": None},
                "parent_header": {"msg_id": "m1"}}

    async def get_shell_msg(self, **_: object) -> dict:  # type: ignore[type-arg]
        return {"content": self._reply, "parent_header": {"msg_id": "m1"}}


class _FakeKernel:
    def __init__(self, kc: _FakeKC) -> None:
        self.kc = kc

    async def is_alive(self) -> bool:
        return True


def _run(iopub: list[tuple[str, dict]], reply: dict) -> list[events.Event]:  # type: ignore[type-arg]
    import asyncio

    from shoal.interpreter.execute import Control, execute

    seen: list[events.Event] = []

    async def emit(event: events.Event) -> None:
        seen.append(event)

    async def main() -> None:
        kernel = _FakeKernel(_FakeKC([*iopub, ("status", {"execution_state": "idle"})], reply))
        await execute(kernel, "x", emit, Control(None, 1.0))  # type: ignore[arg-type]

    asyncio.run(main())
    return seen


def test_tslab_markers_become_main_result_and_error() -> None:
    from shoal.interpreter.formatters import TSLAB_ERROR, TSLAB_MAIN_RESULT

    seen = _run([("display_data", {"data": {"text/plain": "42", TSLAB_MAIN_RESULT: True}})],
                {"status": "ok"})
    assert seen == [{"type": "result", "text": "42", "is_main_result": True, "extra": {}}]
    error = {"name": "TypeError", "value": "boom", "traceback": "TypeError: boom\n    at x"}
    seen = _run([("display_data", {"data": {TSLAB_ERROR: error}})], {"status": "error"})
    assert seen == [{"type": "error", **error}]  # once, though the reply also says error
    plain = _run([("display_data", {"data": {"text/plain": "shown"}})], {"status": "ok"})
    assert [e["is_main_result"] for e in plain] == [False]
