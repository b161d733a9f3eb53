"""Primed sandboxes (agent/primed.py): a code-interpreter sandbox handed out with its
interpreter and kernels already running is its own sandbox in every way a user can see (its
id, hostname, env vars in every language, fresh state), keeps its env vars when the
interpreter restarts, and leaves nothing behind."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hoststate import POOL_PREFIX, crun_list, node_id_of, snapshot, wait_for, wait_until_clean
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

TEMPLATE = "code-interpreter-v1"
PRIMED = 2  # Settings.primed_pool's default, which the test servers run with


def primed_ids(server: ShoalServer) -> set[str]:
    """Pool containers that are running: primed ones (the warm pool's are only created)."""
    return {
        str(c["id"])
        for c in crun_list(node_id_of(server.data_dir))
        if str(c["id"]).startswith(POOL_PREFIX) and c["status"] == "running"
    }


def primed_sandbox(server: ShoalServer, **kwargs: Any) -> Any:
    """A code-interpreter sandbox that came out of a full primed pool."""
    from e2b_code_interpreter import Sandbox

    if len(primed_ids(server)) < PRIMED:
        Sandbox.create(timeout=120).kill()  # the first create of a shape primes its pool
    assert wait_for(lambda: len(primed_ids(server)) == PRIMED, timeout=90), primed_ids(server)
    before = primed_ids(server)
    sbx = Sandbox.create(timeout=300, **kwargs)
    origin = (server.data_dir / "sandboxes" / sbx.sandbox_id / "pool_id").read_text()
    assert origin in before, "the sandbox was not a primed one"
    return sbx


def test_a_primed_sandbox_is_its_own(e2e_server: ShoalServer) -> None:
    sbx = primed_sandbox(e2e_server, envs={"FOO": "bar", "SECRET": "s1"})
    try:
        assert sbx.run_code("1+1").text == "2"
        probe = "import os, socket; (socket.gethostname(), os.environ.get('FOO'), " \
            "os.environ.get('E2B_SANDBOX_ID'), os.getcwd())"
        assert sbx.run_code(probe).text == repr(
            (sbx.sandbox_id, "bar", sbx.sandbox_id, "/home/user")
        )
        assert sbx.run_code("echo $FOO", language="bash").logs.stdout == ["bar\n"]
        js = sbx.run_code("process.env.SECRET", language="javascript")
        assert js.text == "s1", js
        # A context created after the hand-over sees the variables too.
        ctx = sbx.create_code_context(language="python")
        assert sbx.run_code("import os; os.environ['FOO']", context=ctx).text == "bar"
        # Per-execution variables still fall back to the sandbox's value.
        assert sbx.run_code("import os; os.environ['FOO']", envs={"FOO": "x"}).text == "x"
        assert sbx.run_code("import os; os.environ['FOO']").text == "bar"
        # The start command stays out of the user's process list.
        assert all("interpreter" not in " ".join([p.cmd, *p.args]) for p in sbx.commands.list())
    finally:
        sbx.kill()


def test_primed_sandboxes_share_nothing(e2e_server: ShoalServer) -> None:
    first = primed_sandbox(e2e_server, envs={"WHO": "first"})
    second = primed_sandbox(e2e_server, envs={"WHO": "second"})
    try:
        first.run_code("mine = 'first'")
        later = second.run_code("mine")
        assert later.error is not None and later.error.name == "NameError"
        assert second.run_code("import os; os.environ['WHO']").text == "second"
        assert first.run_code("import os; os.environ['WHO']").text == "first"
        first.files.write("/home/user/only-first", "x")
        assert not second.files.exists("/home/user/only-first")
    finally:
        first.kill()
        second.kill()


def test_a_restarted_interpreter_keeps_the_sandbox_env(e2e_server: ShoalServer) -> None:
    sbx = primed_sandbox(e2e_server, envs={"FOO": "kept"})
    try:
        record = json.loads(
            (e2e_server.data_dir / "sandboxes" / sbx.sandbox_id / "sandbox.json").read_text()
        )
        handed = json.loads(record["service"]["env"]["SHOAL_INTERPRETER_SANDBOX_ENV"])
        assert handed["FOO"] == "kept"
        sbx.commands.run("sudo pkill -KILL -f 'shoal[.]interpreter'", timeout=10)

        def answers() -> bool:
            try:
                return sbx.run_code("import os; os.environ.get('FOO')", timeout=5).text == "kept"
            except Exception:
                return False

        assert wait_for(answers, timeout=60)
    finally:
        sbx.kill()


def test_killing_a_primed_sandbox_leaves_nothing(e2e_server: ShoalServer) -> None:
    from e2b_code_interpreter import Sandbox

    e2e_server.kill_all_sandboxes()
    assert e2e_server.proc is not None
    Sandbox.create(timeout=120).kill()  # the shape's pools exist (pool members are not leaks)
    assert wait_for(lambda: len(primed_ids(e2e_server)) == PRIMED, timeout=90)
    base = snapshot(e2e_server.data_dir, e2e_server.proc.pid)
    sbx = primed_sandbox(e2e_server)
    assert sbx.run_code("x = list(range(10**6)); len(x)").text == "1000000"
    assert sbx.kill() is True
    leaks = wait_until_clean(e2e_server.data_dir, e2e_server.proc.pid, base)
    assert leaks == [], "\n".join(leaks)
    assert not (e2e_server.data_dir / "sandboxes" / sbx.sandbox_id).exists()
