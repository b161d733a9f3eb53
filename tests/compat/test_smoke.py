"""The first thing a user does: create, run, kill."""

from __future__ import annotations


def test_create_run_kill(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox.commands.run("echo hello; id -un; pwd")
    assert result.exit_code == 0
    assert result.stdout == "hello\nuser\n/home/user\n"
    assert sandbox.is_running()
    assert sandbox.kill() is True
    assert sandbox.is_running() is False
