"""The official ``e2b-code-interpreter`` SDK against a live server: the template's start
command (the in-sandbox interpreter on port 49999) is up when ``Sandbox.create()`` returns."""

from __future__ import annotations

import threading
import time

import pytest
from support.server import TEMPLATE_DIR, ShoalServer, scratch_dir, sdk_env

from shoal.template.store import TemplateStore

TEMPLATE = "code-interpreter-v1"


@pytest.fixture(scope="module")
def ci(shoal_server, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One code-interpreter sandbox (default template) for the tests that share state."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(
        envs={"FOO": "bar"}, timeout=600, metadata={"test": request.module.__name__[-60:]}
    )
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


def test_first_run_code(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("1+1")
    assert execution.error is None
    assert execution.text == "2"


def test_stdout_from_print(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("print('hello from the kernel')")
    assert execution.logs.stdout == ["hello from the kernel\n"]
    assert execution.results == []


def test_error_is_reported(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("undefined_name_xyz")
    assert execution.error is not None
    assert execution.error.name == "NameError"
    assert "undefined_name_xyz" in execution.error.value


def test_state_is_kept_between_runs(ci) -> None:  # type: ignore[no-untyped-def]
    ci.run_code("kept = 41")
    assert ci.run_code("kept + 1").text == "42"


def test_contexts_are_separate(ci) -> None:  # type: ignore[no-untyped-def]
    ctx = ci.create_code_context()
    assert ctx.language == "python"
    assert ctx.cwd == "/home/user"
    listed = ci.list_code_contexts()
    assert ctx.id in [c.id for c in listed]
    assert any(c.language == "python" and c.id != ctx.id for c in listed)  # the default one
    assert ci.run_code("only_here = 7", context=ctx).error is None
    assert ci.run_code("only_here", context=ctx).text == "7"
    missing = ci.run_code("only_here")  # default context
    assert missing.error is not None and missing.error.name == "NameError"


def test_bash(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("echo $((6 * 7)); pwd", language="bash")
    assert execution.error is None
    assert "".join(execution.logs.stdout) == "42\n/home/user\n"


def test_sandbox_env_vars(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("import os; print(os.getenv('FOO'))")
    assert execution.logs.stdout == ["bar\n"]
    bash = ci.run_code('echo "$FOO"', language="bash")
    assert "".join(bash.logs.stdout) == "bar\n"


def test_execution_env_vars_are_reset(ci) -> None:  # type: ignore[no-untyped-def]
    code = "import os; print(os.getenv('ONLY_NOW', 'unset'), os.getenv('FOO'))"
    during = ci.run_code(code, envs={"ONLY_NOW": "yes", "FOO": "override"})
    assert during.logs.stdout == ["yes override\n"]
    after = ci.run_code(code)
    assert after.logs.stdout == ["unset bar\n"]


def test_matplotlib_chart(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='squares')\n"
        "plt.title('growth')\n"
        "plt.show()\n"
    )
    assert execution.error is None
    shown = [r for r in execution.results if r.png]
    assert len(shown) == 1
    assert shown[0].chart is not None
    assert shown[0].chart.title == "growth"
    assert shown[0].chart.type.value == "line"


def test_start_command_is_not_a_listed_process(ci) -> None:  # type: ignore[no-untyped-def]
    commands = [" ".join([p.cmd, *p.args]) for p in ci.commands.list()]
    assert not any("shoal.interpreter" in c for c in commands), commands
    # ... while it does run in the sandbox, as the template's user.
    ps = ci.commands.run("ps -o user=,args= -C python")
    assert any(
        line.split()[0] == "user" and "shoal.interpreter" in line
        for line in ps.stdout.splitlines()
    ), ps.stdout


def test_resources_come_from_the_template(ci) -> None:  # type: ignore[no-untyped-def]
    template = TemplateStore(TEMPLATE_DIR).resolve(TEMPLATE)
    assert template.memory_mb is not None and template.cpu_count is not None
    info = ci.get_info()
    assert info.template_id == TEMPLATE
    assert info.memory_mb == template.memory_mb
    assert info.cpu_count == template.cpu_count


def _interpreter_pids(sbx) -> list[int]:  # type: ignore[no-untyped-def]
    ps = sbx.commands.run("ps -o pid=,args= -C python")
    return [int(line.split()[0]) for line in ps.stdout.splitlines() if "shoal.interpreter" in line]


def _until_answers(sbx, code: str):  # type: ignore[no-untyped-def]
    """Run ``code`` until the interpreter answers (it is being restarted), for at most ~60 s."""
    last: Exception | None = None
    for _ in range(120):
        try:
            return sbx.run_code(code, timeout=30)
        except Exception as exc:  # the SDK's errors while port 49999 is closed
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"the interpreter did not come back: {last!r}")


def test_start_command_is_restarted_when_it_dies(shoal_server) -> None:  # type: ignore[no-untyped-def]
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=300)
    try:
        sbx.run_code("before = 1")
        pids = _interpreter_pids(sbx)
        assert len(pids) == 1
        sbx.commands.run(f"kill -9 {pids[0]}")
        execution = _until_answers(sbx, "1 + 2")
        assert execution.text == "3"
        again = _interpreter_pids(sbx)
        assert len(again) == 1 and again != pids
    finally:
        sbx.kill()


def test_start_command_survives_a_server_restart() -> None:
    from e2b_code_interpreter import Sandbox

    server = ShoalServer(scratch_dir("ci-restart"))
    server.start()
    try:
        with sdk_env(server):
            sbx = Sandbox.create(timeout=300)
            assert sbx.run_code("survivor = 'still here'").error is None
            pids = _interpreter_pids(sbx)
            server.stop()
            server.start()
            again = Sandbox.connect(sbx.sandbox_id)
            assert again.run_code("survivor").text == "still here"
            assert _interpreter_pids(again) == pids
            commands = [" ".join([p.cmd, *p.args]) for p in again.commands.list()]
            assert not any("shoal.interpreter" in c for c in commands), commands
            again.kill()
    finally:
        server.kill_all_sandboxes()
        server.stop()


def test_kill_mid_execution_breaks_the_call(shoal_server) -> None:  # type: ignore[no-untyped-def]
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=120)
    killed = threading.Event()

    def kill_once(_msg: object) -> None:
        if not killed.is_set():
            killed.set()
            sbx.kill()

    try:
        with pytest.raises(Exception) as excinfo:  # whichever error the SDK raises
            sbx.run_code(
                "import time\nprint('started', flush=True)\ntime.sleep(30)\n",
                on_stdout=kill_once,
                timeout=60,
            )
        assert killed.is_set(), excinfo.value
        assert not sbx.is_running()
    finally:
        if not killed.is_set():
            sbx.kill()
