"""The interpreter server with real kernels, driven by the official e2b-code-interpreter client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import ACCESS_TOKEN, SANDBOX_ENVS, Interpreter, LocalSandbox
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Context, OutputMessage
from e2b_code_interpreter.models import Execution, parse_output


@pytest.fixture
def ctx(sbx: LocalSandbox) -> Iterator[Context]:
    """A fresh python context, removed afterwards."""
    context = sbx.create_code_context()
    yield context
    sbx.remove_code_context(context)


# --- results, logs, errors, counts --------------------------------------------------------


def test_result_stdout_and_cwd(sbx: LocalSandbox, interpreter: Interpreter) -> None:
    execution = sbx.run_code("import os\nprint('hello')\nos.getcwd()")
    assert execution.error is None
    assert execution.logs.stdout == ["hello\n"]
    assert execution.text == str(interpreter.cwd)  # quotes of the str repr stripped
    assert execution.results[0].is_main_result


def test_stderr_and_error(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code(
        "import sys\nprint('oops', file=sys.stderr)\nundefined_name", context=ctx
    )
    assert "oops\n" in "".join(execution.logs.stderr)
    assert execution.error is not None
    assert execution.error.name == "NameError"
    assert execution.error.value == "name 'undefined_name' is not defined"
    assert "undefined_name" in execution.error.traceback
    assert execution.results == []


def test_statefulness_and_execution_count(sbx: LocalSandbox, ctx: Context) -> None:
    first = sbx.run_code("x = 41", context=ctx)
    second = sbx.run_code("x + 1", context=ctx)
    assert (first.execution_count, second.execution_count) == (1, 2)
    assert second.text == "42"


def test_streaming_callbacks(sbx: LocalSandbox, ctx: Context) -> None:
    seen: list[OutputMessage] = []
    sbx.run_code("for i in range(3): print(i, flush=True)", context=ctx, on_stdout=seen.append)
    assert "".join(m.line for m in seen) == "0\n1\n2\n"
    assert all(m.timestamp and not m.error for m in seen)


def test_json_and_display_data(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code(
        "from IPython.display import display, HTML, Markdown\n"
        "display(HTML('<b>hi</b>'))\ndisplay(Markdown('# t'))\n{'a': [1, 2]}",
        context=ctx,
    )
    html, markdown, main = execution.results
    assert html.html == "<b>hi</b>" and not html.is_main_result
    assert markdown.markdown == "# t"
    assert main.is_main_result and main.json == {"a": [1, 2]}


# --- contexts -----------------------------------------------------------------------------


def test_default_context_listed(sbx: LocalSandbox, interpreter: Interpreter) -> None:
    contexts = sbx.list_code_contexts()
    python = [c for c in contexts if c.language == "python"]
    assert python and python[0].cwd == str(interpreter.cwd)


def test_context_lifecycle(sbx: LocalSandbox, interpreter: Interpreter) -> None:
    other = interpreter.cwd.parent / "elsewhere"
    other.mkdir(exist_ok=True)
    context = sbx.create_code_context(cwd=str(other))
    assert (context.language, context.cwd) == ("python", str(other))
    assert context.id in {c.id for c in sbx.list_code_contexts()}
    assert sbx.run_code("import os; os.getcwd()", context=context).text == str(other)

    sbx.run_code("y = 5", context=context)
    sbx.restart_code_context(context)
    after = sbx.run_code("y", context=context)
    assert after.error is not None and after.error.name == "NameError"
    assert sbx.run_code("import os; os.getcwd()", context=context).text == str(other)

    sbx.remove_code_context(context)
    assert context.id not in {c.id for c in sbx.list_code_contexts()}
    with pytest.raises(NotFoundException, match=f"Context {context.id} not found"):
        sbx.run_code("1", context=context)
    with pytest.raises(NotFoundException):
        sbx.restart_code_context(context)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(context)


def test_unknown_language_and_bad_arguments(sbx: LocalSandbox, interpreter: Interpreter) -> None:
    with pytest.raises(SandboxException, match="500"):
        sbx.create_code_context(language="cobol")
    response = httpx.post(
        f"{interpreter.url}/execute",
        json={"code": "1", "context_id": "abc", "language": "python", "env_vars": None},
    )
    assert response.status_code == 400 and response.text


def test_bash(sbx: LocalSandbox, interpreter: Interpreter) -> None:
    context = sbx.create_code_context(language="bash")
    try:
        assert context.language == "bash"
        sbx.run_code("export GREETING=hi", context=context)
        execution = sbx.run_code("echo $GREETING; pwd", context=context)
        assert "".join(execution.logs.stdout) == f"hi\n{interpreter.cwd}\n"
        by_language = sbx.run_code("echo by-language", language="bash")
        assert by_language.logs.stdout == ["by-language\n"]
    finally:
        sbx.remove_code_context(context)


# --- env vars -----------------------------------------------------------------------------


def test_sandbox_env_vars_with_forwarded_token(sbx: LocalSandbox, ctx: Context,
                                               interpreter: Interpreter) -> None:
    execution = sbx.run_code("import os; os.environ['SBX_VAR'], os.environ['SBX_OTHER']",
                             context=ctx)
    assert execution.text == repr(("sandbox-value", SANDBOX_ENVS["SBX_OTHER"]))
    assert ACCESS_TOKEN in interpreter.envd.tokens
    bash = sbx.run_code('echo "$SBX_OTHER"', language="bash")
    assert bash.logs.stdout == [SANDBOX_ENVS["SBX_OTHER"] + "\n"]


def test_per_execution_env_vars_are_reset(sbx: LocalSandbox, ctx: Context) -> None:
    code = "import os; (os.getenv('FOO', 'default'), os.getenv('SBX_VAR'))"
    during = sbx.run_code(code, context=ctx, envs={"FOO": "bar", "SBX_VAR": "override"})
    assert during.text == repr(("bar", "override"))
    after = sbx.run_code(code, context=ctx)
    assert after.text == repr(("default", "sandbox-value"))
    bash = sbx.run_code('echo "${FOO:-unset}"', language="bash", envs={"FOO": "b a r"})
    assert bash.logs.stdout == ["b a r\n"]
    assert sbx.run_code('echo "${FOO:-unset}"', language="bash").logs.stdout == ["unset\n"]


# --- rich results -------------------------------------------------------------------------


def test_matplotlib_chart(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='sq')\n"
        "plt.title('squares'); plt.xlabel('x'); plt.ylabel('y')\n"
        "plt.show()",
        context=ctx,
    )
    assert execution.error is None, execution.error
    charts = [r for r in execution.results if r.png]
    assert len(charts) == 1
    result = charts[0]
    assert not result.is_main_result and result.extra == {}
    assert result.text and "Figure" in result.text
    assert result.chart is not None
    assert result.chart.type == "line" and result.chart.title == "squares"
    assert result.chart.x_label == "x" and result.chart.y_label == "y"
    (element,) = result.chart.elements
    assert element.label == "sq"
    assert [tuple(map(float, p)) for p in element.points] == [(1, 1), (2, 4), (3, 9)]


def test_dataframe_data(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code(
        "import pandas as pd\n"
        "pd.DataFrame({'a': [1, 2], 't': pd.to_datetime(['2024-01-01', '2024-01-02'])})",
        context=ctx,
    )
    main = execution.results[0]
    assert main.html and "<table" in main.html
    assert main.data == {"a": [1, 2], "t": ["2024-01-01T00:00:00", "2024-01-02T00:00:00"]}


# --- interrupts, deaths, bad input --------------------------------------------------------


def test_timeout_interrupts_kernel(sbx: LocalSandbox, ctx: Context) -> None:
    sbx.run_code("z = 7", context=ctx)
    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(300)", context=ctx, timeout=3)
    # the deadline makes a kernel still sleeping fail this call instead of waiting
    execution = sbx.run_code("1 + 1", context=ctx, timeout=10)
    assert execution.text == "2"
    assert sbx.run_code("z", context=ctx).text == "7"  # interrupted, not restarted


def test_kernel_exit_is_restarted_with_clear_error(sbx: LocalSandbox, ctx: Context) -> None:
    sbx.run_code("w = 1", context=ctx)
    died = sbx.run_code("import os; os._exit(3)", context=ctx, timeout=60)
    assert died.error is not None and died.error.name == "ContextRestarting"
    after = sbx.run_code("w", context=ctx, timeout=60)
    assert after.error is not None and after.error.name == "NameError"
    assert sbx.run_code("2 * 21", context=ctx).text == "42"


def test_kernel_killed_from_outside(sbx: LocalSandbox, ctx: Context) -> None:
    def kill(message: OutputMessage) -> None:
        os.kill(int(message.line.strip()), signal.SIGKILL)

    died = sbx.run_code(
        "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)",
        context=ctx, on_stdout=kill, timeout=60,
    )
    assert died.error is not None and died.error.name == "ContextRestarting"
    assert "-9" in died.error.value
    assert sbx.run_code("3 + 4", context=ctx, timeout=60).text == "7"


def test_stdin_and_exit(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code("input('name? ')", context=ctx)
    assert execution.error is not None
    assert execution.error.name == "StdinNotImplementedError"
    sbx.run_code("before_exit = 1", context=ctx)
    exited = sbx.run_code("exit()", context=ctx, timeout=60)
    assert exited.error is not None and exited.error.name == "ContextRestarting"
    assert "exit()" in exited.error.value
    gone = sbx.run_code("before_exit", context=ctx, timeout=60)
    assert gone.error is not None and gone.error.name == "NameError"
    assert sbx.run_code("5 + 5", context=ctx, timeout=60).text == "10"


def test_large_output_and_display_flood(sbx: LocalSandbox, ctx: Context) -> None:
    size = 100 * 1024 * 1024
    big = sbx.run_code(f"import sys\nsys.stdout.write('x' * {size})", context=ctx, timeout=120)
    assert sum(len(s) for s in big.logs.stdout) == size
    assert set("".join(big.logs.stdout)) == {"x"}
    flood = sbx.run_code(
        "from IPython.display import display\nfor i in range(500): display(i)", context=ctx
    )
    assert [r.text for r in flood.results] == [str(i) for i in range(500)]
    assert sbx.run_code("1 + 2").text == "3"  # the default context still answers


def test_fork_does_not_break_server(sbx: LocalSandbox, ctx: Context) -> None:
    execution = sbx.run_code(
        "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n"
        "os.waitpid(pid, 0)[1]",
        context=ctx,
    )
    assert execution.text == "0"
    assert sbx.run_code("'still here'", context=ctx).text == "still here"


# --- wire format --------------------------------------------------------------------------


def test_stream_format_with_keepalives(interpreter: Interpreter) -> None:
    lines = interpreter.execute_lines(
        {"code": "import time\nprint('a', flush=True)\ntime.sleep(2)\n'b'",
         "context_id": None, "language": None, "env_vars": None},
    )
    objects = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(line.strip() for line in lines)
    types = [o["type"] for o in objects]
    assert types[0] == "number_of_executions"
    assert types[-1] == "end_of_execution"
    assert "keepalive" in types
    # 'a' was flushed as produced: it came before the keepalives of the sleep
    assert types.index("stdout") < types.index("keepalive") < types.index("result")
    execution = Execution()
    for line in lines:
        parse_output(execution, line.decode())
    assert execution.logs.stdout == ["a\n"] and execution.text == "b"


def test_disconnect_interrupts_kernel(interpreter: Interpreter, sbx: LocalSandbox,
                                      ctx: Context) -> None:
    body = {"code": "import time; time.sleep(300)", "context_id": ctx.id,
            "language": None, "env_vars": None}
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{interpreter.url}/execute", json=body
    ) as response:
        first = next(response.iter_lines())
        assert json.loads(first)["type"] == "number_of_executions"
    # connection closed mid-execution
    assert sbx.run_code("'next'", context=ctx, timeout=10).text == "next"


def test_server_module_runs_standalone() -> None:
    """The package must not need the rest of Shoal (it is copied into the template)."""
    code = (
        "import sys, shoal.interpreter.app\n"
        "bad = sorted(m for m in sys.modules if m.startswith('shoal.')"
        " and not m.startswith('shoal.interpreter'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kernel_killed_while_idle(sbx: LocalSandbox, ctx: Context) -> None:
    pid = int(sbx.run_code("v = 1\nimport os; os.getpid()", context=ctx).text or "0")
    os.kill(pid, signal.SIGKILL)
    first = sbx.run_code("v", context=ctx, timeout=60)
    if first.error is not None and first.error.name == "ContextRestarting":
        first = sbx.run_code("v", context=ctx, timeout=60)  # death noticed mid-request
    assert first.error is not None and first.error.name == "NameError"
    assert sbx.run_code("6 * 7", context=ctx).text == "42"


def test_abandoned_queued_request_leaves_running_one_alone(
    interpreter: Interpreter, sbx: LocalSandbox, ctx: Context
) -> None:
    results: list[Execution] = []
    worker = threading.Thread(target=lambda: results.append(
        sbx.run_code("import time\ntime.sleep(2)\n'done'", context=ctx, timeout=60)))
    worker.start()
    sbx.run_code("1", language="python")  # let the worker's request reach the server
    body = {"code": "'queued'", "context_id": ctx.id, "language": None, "env_vars": None}
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{interpreter.url}/execute", json=body
    ) as response:
        assert response.status_code == 200  # headers come before the turn; then hang up
    worker.join(timeout=60)
    (execution,) = results
    assert execution.error is None, execution.error
    assert execution.text == "done"
