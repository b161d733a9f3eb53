"""Contexts and streaming callbacks of the official ``e2b-code-interpreter`` SDK, and the
answers to bad context arguments (e2b-compat.md §5.1-§5.2).

Upstream (``e2b-dev/code-interpreter``, ``template/server``): an unknown context id is a 404
``Context <id> not found`` (the SDK's ``NotFoundException``); a language without a kernel
fails the context creation with a 500 (``SandboxException``); ``context`` together with
``language`` is refused by the SDK itself (``InvalidArgumentException``) and, from other
clients, by the server with a 400.
"""

from __future__ import annotations

import os

import httpx
import pytest


@pytest.fixture(scope="module")
def ci(shoal_server, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One code-interpreter sandbox shared by the module."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=600, metadata={"test": request.module.__name__[-60:]})
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


def test_create_with_language_and_cwd(ci) -> None:  # type: ignore[no-untyped-def]
    ctx = ci.create_code_context(language="python", cwd="/tmp")
    try:
        assert (ctx.language, ctx.cwd) == ("python", "/tmp")
        assert ctx.id in [c.id for c in ci.list_code_contexts()]
        assert ci.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
        bash = ci.create_code_context(language="bash", cwd="/var")
        try:
            assert (bash.language, bash.cwd) == ("bash", "/var")
            assert ci.run_code("pwd", context=bash).logs.stdout == ["/var\n"]
        finally:
            ci.remove_code_context(bash)
    finally:
        ci.remove_code_context(ctx)


def test_list_includes_the_default_contexts(ci) -> None:  # type: ignore[no-untyped-def]
    listed = {(c.language, c.cwd) for c in ci.list_code_contexts()}
    assert {("python", "/home/user"), ("javascript", "/home/user")} <= listed


def test_restart_wipes_the_state_and_keeps_the_context(ci) -> None:  # type: ignore[no-untyped-def]
    ctx = ci.create_code_context(cwd="/tmp")
    try:
        ci.run_code("untouched = 5")  # in the default context
        ci.run_code("import os\nos.chdir('/')\nwiped = 1", context=ctx)
        ci.restart_code_context(ctx)
        after = ci.run_code("wiped", context=ctx)
        assert after.error is not None and after.error.name == "NameError"
        assert ci.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
        assert ci.run_code("untouched").text == "5"
        ci.restart_code_context(ctx.id)  # by id, as the SDK also allows
        assert ctx.id in [c.id for c in ci.list_code_contexts()]
    finally:
        ci.remove_code_context(ctx)


def test_removed_context_is_gone(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import NotFoundException

    ctx = ci.create_code_context()
    ci.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in ci.list_code_contexts()]
    message = f"Context {ctx.id} not found"
    with pytest.raises(NotFoundException, match=message):
        ci.run_code("1", context=ctx)
    with pytest.raises(NotFoundException, match=message):
        ci.restart_code_context(ctx)
    with pytest.raises(NotFoundException, match=message):
        ci.remove_code_context(ctx)


def test_unknown_context_id(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import NotFoundException
    from e2b_code_interpreter import Context

    stranger = Context(context_id="no-such-context", language="python", cwd="/home/user")
    with pytest.raises(NotFoundException, match="Context no-such-context not found"):
        ci.run_code("1", context=stranger)
    assert ci.run_code("'still answering'").text == "still answering"


def test_unknown_language(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import SandboxException

    with pytest.raises(SandboxException, match=r"^500 .*cobol"):
        ci.create_code_context(language="cobol")
    with pytest.raises(SandboxException, match=r"^500 .*cobol"):
        ci.run_code("DISPLAY 'HI'.", language="cobol")
    assert "cobol" not in [c.language for c in ci.list_code_contexts()]


def test_context_and_language_together(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import InvalidArgumentException

    ctx = next(c for c in ci.list_code_contexts() if c.language == "python")
    with pytest.raises(InvalidArgumentException):
        ci.run_code("1", context=ctx, language="python")
    # what the server answers a client that sends both anyway
    response = httpx.post(
        f"{os.environ['E2B_SANDBOX_URL']}/execute",
        headers={"E2b-Sandbox-Id": ci.sandbox_id, "E2b-Sandbox-Port": "49999"},
        json={"code": "1", "context_id": ctx.id, "language": "python", "env_vars": None},
        timeout=30,
        trust_env=False,
    )
    assert response.status_code == 400
    assert "context_id" in response.text and "language" in response.text


def test_on_stdout_streams_while_the_code_runs(ci) -> None:  # type: ignore[no-untyped-def]
    """The code waits for a file that only the ``on_stdout`` callback writes: a server that
    held output back until the end would never let it finish."""
    from e2b_code_interpreter import OutputMessage

    seen: list[OutputMessage] = []

    def on_stdout(message: OutputMessage) -> None:
        seen.append(message)
        if message.line == "waiting\n":
            ci.files.write("/tmp/py-ci-go", "go")

    execution = ci.run_code(
        "import os, time\n"
        "print('waiting', flush=True)\n"
        "while not os.path.exists('/tmp/py-ci-go'):\n"
        "    time.sleep(0.05)\n"
        "print('released', flush=True)",
        on_stdout=on_stdout,
        timeout=30,
    )
    assert execution.error is None
    assert [m.line for m in seen] == ["waiting\n", "released\n"]
    assert all(not m.error and m.timestamp for m in seen)


def test_on_result_streams_while_the_code_runs(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b_code_interpreter import Result

    seen: list[Result] = []

    def on_result(result: Result) -> None:
        seen.append(result)
        if result.markdown == "**step one**":
            ci.files.write("/tmp/py-ci-result-go", "go")

    execution = ci.run_code(
        "import os, time\n"
        "from IPython.display import Markdown, display\n"
        "display(Markdown('**step one**'))\n"
        "while not os.path.exists('/tmp/py-ci-result-go'):\n"
        "    time.sleep(0.05)\n"
        "{'done': True}",
        on_result=on_result,
        timeout=30,
    )
    assert execution.error is None
    assert [(r.markdown, r.is_main_result) for r in seen] == [
        ("**step one**", False),
        (None, True),
    ]
    assert seen[1].json == {"done": True}
    assert execution.results == seen


def test_on_stderr_and_on_error(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b_code_interpreter import ExecutionError, OutputMessage

    stderr: list[OutputMessage] = []
    errors: list[ExecutionError] = []
    execution = ci.run_code(
        "import sys\nprint('careful', file=sys.stderr, flush=True)\nraise ValueError('bad value')",
        on_stderr=stderr.append,
        on_error=errors.append,
    )
    assert [(m.line, m.error) for m in stderr] == [("careful\n", True)]
    assert [(e.name, e.value) for e in errors] == [("ValueError", "bad value")]
    assert execution.error is not None and execution.error.name == "ValueError"
