"""Bad input through the official ``e2b-code-interpreter`` SDK (issue 4, e2b-compat.md §5).

What E2B's server does with each (``e2b-dev/code-interpreter``, ``template/server``) and so what
a user must see here:

* huge output, floods of display data: every Jupyter ``stream``/``display_data`` message
  becomes one NDJSON line (no cap; the websocket has ``max_size=None``), so all of it arrives;
* ``input()``: executions are sent with ``allow_stdin: false``, so IPython raises
  ``StdinNotImplementedError``;
* a ``timeout=`` that runs out: the SDK raises ``TimeoutException`` and drops the connection;
  the server notices and interrupts the kernel (``KeyboardInterrupt``), so the next run in
  that context answers promptly with its state;
* a kernel that dies mid-execution (``os._exit``, the out-of-memory killer): Jupyter restarts
  it and the execution ends with the error ``ContextRestarting``; the state is gone. Shoal
  also says why (the exit code, or that the sandbox's memory limit was reached), and does
  the same for ``exit()`` (IPython ends the kernel just after the execution's reply), which
  upstream reports to no one: the next run just finds a fresh kernel;
* ``os.fork()``: user code; Shoal ends a forked child that runs on to the end of the cell,
  which would otherwise spin as a second copy of the kernel.

Tests that kill kernels or exhaust memory get a sandbox of their own.
"""

from __future__ import annotations

import time

import pytest
from support.sandboxes import sandbox_factory as sandbox_factory_for

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def ci(shoal_server, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One code-interpreter sandbox for the inputs that leave its kernels running."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=600, metadata={"test": request.module.__name__[-60:]})
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


@pytest.fixture
def own_ci(shoal_server, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A code-interpreter sandbox for one test, killed afterwards."""
    from e2b_code_interpreter import Sandbox

    with sandbox_factory_for(request.node.name, Sandbox) as make:
        yield make(timeout=300)


def test_100_mb_of_output_arrives_whole(ci) -> None:  # type: ignore[no-untyped-def]
    line = "x" * (MIB - 1) + "\n"
    execution = ci.run_code(f"for _ in range(100):\n    print('x' * {MIB - 1})", timeout=120)
    assert execution.error is None
    assert "".join(execution.logs.stdout) == line * 100
    # the server, the kernel and the sandbox are fine
    assert ci.run_code("6 * 7").text == "42"
    assert ci.commands.run("echo alive").stdout == "alive\n"


def test_a_flood_of_display_data_arrives_in_order(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        "from IPython.display import display, HTML\n"
        "for i in range(3000):\n"
        "    display(HTML(f'<b>{i}</b>'))\n"
        "'end'",
        timeout=120,
    )
    assert execution.error is None
    shown = [r for r in execution.results if not r.is_main_result]
    assert [r.html for r in shown] == [f"<b>{i}</b>" for i in range(3000)]
    assert execution.text == "end"
    assert ci.run_code("1 + 1").text == "2"


def test_fork_with_a_child_that_exits(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        "import os\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('from the child', flush=True)\n"
        "    os._exit(7)\n"
        "os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])",
    )
    assert execution.error is None
    assert "".join(execution.logs.stdout) == "from the child\n"  # relayed by the kernel
    assert execution.text == "7"


def _live_children(ci, pid: int) -> list[str]:  # type: ignore[no-untyped-def]
    ps = ci.commands.run(f"ps -o pid=,stat=,args= --ppid {pid} || true")
    return [line for line in ps.stdout.splitlines() if line.split()[1][0] != "Z"]


def test_a_forked_child_does_not_outlive_its_cell(ci) -> None:  # type: ignore[no-untyped-def]
    ctx = ci.create_code_context()
    try:
        kernel_pid = int(ci.run_code("import os\nos.getpid()", context=ctx).text)
        execution = ci.run_code("forked = os.fork()", context=ctx)
        assert execution.error is None
        # the child ran on to the end of the cell, where it is ended instead of carrying on
        # as a second kernel; poll: it ends on its own schedule
        left = _live_children(ci, kernel_pid)
        for _ in range(100):
            if not left:
                break
            time.sleep(0.2)
            left = _live_children(ci, kernel_pid)
        assert left == []
        assert ci.run_code("forked > 0", context=ctx).text == "True"  # the parent goes on
    finally:
        ci.remove_code_context(ctx)


def test_sleeping_forever_is_ended_by_the_timeout(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import TimeoutException

    ci.run_code("survivor = 'still here'")
    with pytest.raises(TimeoutException):
        ci.run_code("import time\ntime.sleep(10**6)", timeout=3)
    # the kernel was interrupted, not restarted: this answers within its own deadline
    execution = ci.run_code("survivor", timeout=20)
    assert execution.error is None
    assert execution.text == "still here"


def test_input_is_not_supported(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("name = input('name? ')")
    assert execution.error is not None
    assert execution.error.name == "StdinNotImplementedError"
    assert "does not support input requests" in execution.error.value
    assert ci.run_code("'next'").text == "next"


def test_sys_exit_is_an_ordinary_error(ci) -> None:  # type: ignore[no-untyped-def]
    ci.run_code("still = 1")
    execution = ci.run_code("import sys\nsys.exit(3)")
    assert execution.error is not None
    assert (execution.error.name, execution.error.value) == ("SystemExit", "3")
    assert ci.run_code("still").text == "1"  # IPython caught it; the kernel lives on


@pytest.mark.parametrize(
    ("code", "how"),
    [("exit()", "exit()"), ("import os\nos._exit(1)", "exit code 1")],
    ids=["exit", "os._exit"],
)
def test_exiting_the_kernel_restarts_the_context(own_ci, code: str, how: str) -> None:  # type: ignore[no-untyped-def]
    sbx = own_ci
    ctx = sbx.create_code_context()
    assert sbx.run_code("kept = 1", context=ctx).error is None
    assert sbx.run_code("default_kept = 2").error is None
    execution = sbx.run_code(code, context=ctx, timeout=60)
    assert execution.error is not None
    assert execution.error.name == "ContextRestarting"
    assert how in execution.error.value
    assert "state is lost" in execution.error.value
    # usable again, on a fresh kernel
    after = sbx.run_code("kept", context=ctx, timeout=60)
    assert after.error is not None and after.error.name == "NameError"
    assert sbx.run_code("2 * 21", context=ctx).text == "42"
    assert sbx.run_code("default_kept").text == "2"  # the other contexts were not touched


def _interpreter_pids(sbx) -> list[int]:  # type: ignore[no-untyped-def]
    ps = sbx.commands.run("ps -o pid=,args= -C python")
    return [int(line.split()[0]) for line in ps.stdout.splitlines() if "shoal.interpreter" in line]


def test_allocating_past_the_memory_limit_restarts_only_that_context(own_ci) -> None:  # type: ignore[no-untyped-def]
    sbx = own_ci
    limit_mb = sbx.get_info().memory_mb
    ctx = sbx.create_code_context()
    assert sbx.run_code("kept = 'here'", context=ctx).error is None
    assert sbx.run_code("doomed = 1").error is None
    servers = _interpreter_pids(sbx)
    execution = sbx.run_code(f"hog = b'x' * ({limit_mb + 256} * 1024 * 1024)", timeout=120)
    assert execution.error is not None
    assert execution.error.name == "ContextRestarting"
    assert "out-of-memory" in execution.error.value
    assert f"{limit_mb} MiB" in execution.error.value
    # that context is usable again, without its state; the others, the server and the
    # sandbox were not touched
    gone = sbx.run_code("doomed", timeout=60)
    assert gone.error is not None and gone.error.name == "NameError"
    assert sbx.run_code("kept", context=ctx).text == "here"
    assert sbx.run_code("6 * 7", language="javascript").text == "42"
    assert _interpreter_pids(sbx) == servers
    assert sbx.commands.run("echo alive").stdout == "alive\n"
