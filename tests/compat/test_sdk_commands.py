"""``sandbox.commands`` with the sync SDK: the process service as a user meets it.

Mirrors the intent of the upstream ``sandbox_sync/commands/*`` tests (e2b-compat §4.2):
foreground and background commands, list/kill/connect, stdin, cwd, envs, users, exit
codes and signals, real pids, timeouts, odd bytes and big outputs.
"""

from __future__ import annotations

import hashlib

import pytest
from compat_helpers import unique, wait_for
from e2b import (
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    TimeoutException,
)


@pytest.fixture
def sbx(shared_sandbox):  # type: ignore[no-untyped-def]
    return shared_sandbox


def running_pids(sbx) -> set[int]:  # type: ignore[no-untyped-def]
    return {p.pid for p in sbx.commands.list()}


# foreground, exit codes, signals


def test_foreground_command(sbx) -> None:  # type: ignore[no-untyped-def]
    result = sbx.commands.run("echo out; echo err >&2; echo more")
    assert result.exit_code == 0
    assert result.stdout == "out\nmore\n"
    assert result.stderr == "err\n"
    assert result.error is None


def test_nonzero_exit_raises_with_output(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandExitException) as exc_info:
        sbx.commands.run("echo partial; echo bad >&2; exit 3")
    err = exc_info.value
    assert err.exit_code == 3
    assert err.stdout == "partial\n"
    assert err.stderr == "bad\n"
    assert err.error == "exit status 3"
    assert "exited with code 3" in str(err)


def test_command_not_found_is_exit_127(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandExitException) as exc_info:
        sbx.commands.run("no-such-command-here")
    assert exc_info.value.exit_code == 127
    assert "not found" in exc_info.value.stderr


def test_killed_by_a_signal_is_exit_minus_one(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandExitException) as exc_info:
        sbx.commands.run("echo before; kill -9 $$")
    err = exc_info.value
    assert err.exit_code == -1
    assert err.stdout == "before\n"
    assert err.error == "signal: killed"

    with pytest.raises(CommandExitException) as exc_info:
        sbx.commands.run("kill -TERM $$")
    assert exc_info.value.exit_code == -1
    assert exc_info.value.error == "signal: terminated"


# background, list, kill, pids


def test_background_command_list_and_kill(sbx) -> None:  # type: ignore[no-untyped-def]
    marker = unique("bg")
    handle = sbx.commands.run(f"echo {marker}; sleep 120", background=True)
    assert handle.pid > 1

    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed
    info = listed[handle.pid]
    assert info.cmd == "/bin/bash"
    assert info.args == ["-l", "-c", f"echo {marker}; sleep 120"]
    assert info.tag is None

    assert next(iter(handle))[0] == f"{marker}\n"
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exc_info:
        handle.wait()
    assert exc_info.value.exit_code == -1
    assert exc_info.value.stdout == f"{marker}\n"

    wait_for(lambda: handle.pid not in running_pids(sbx), what="killed command to leave the list")
    assert sbx.commands.kill(handle.pid) is False
    assert handle.kill() is False


def test_background_command_finishes(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("echo a; echo b >&2; exit 0", background=True)
    result = handle.wait()
    assert (result.stdout, result.stderr, result.exit_code) == ("a\n", "b\n", 0)


def test_kill_unknown_pid_is_false(sbx) -> None:  # type: ignore[no-untyped-def]
    assert sbx.commands.kill(999_999) is False


def test_pids_are_real_inside_the_sandbox(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("echo $$; sleep 120", background=True)
    try:
        first = next(iter(handle))
        assert first[0] == f"{handle.pid}\n"
        # Another command sees the same process by that pid.
        sbx.commands.run(f"kill -0 {handle.pid}")
        comm = sbx.commands.run(f"cat /proc/{handle.pid}/cmdline | tr '\\0' ' '").stdout
        assert "sleep 120" in comm
    finally:
        handle.kill()


def test_connect_to_a_running_command(sbx) -> None:  # type: ignore[no-untyped-def]
    flag = f"/tmp/{unique('connect')}"
    handle = sbx.commands.run(
        f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after; exit 4",
        background=True,
    )
    assert next(iter(handle))[0] == "before\n"
    handle.disconnect()
    assert handle.pid in running_pids(sbx), "disconnecting must not end the command"

    again = sbx.commands.connect(handle.pid)
    assert again.pid == handle.pid
    sbx.commands.run(f"touch {flag}")
    with pytest.raises(CommandExitException) as exc_info:
        again.wait()
    assert exc_info.value.exit_code == 4
    assert "after\n" in exc_info.value.stdout


def test_connect_to_unknown_pid(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundException):
        sbx.commands.connect(999_999)


# stdin


def test_stdin_send_and_close(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("cat", background=True, stdin=True)
    events = iter(handle)
    sbx.commands.send_stdin(handle.pid, "hello\n")
    assert next(events)[0] == "hello\n", "cat must echo input while it runs"
    handle.send_stdin(b"bytes too\n")
    assert next(events)[0] == "bytes too\n"
    sbx.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.exit_code == 0
    assert result.stdout == "hello\nbytes too\n"


def test_stream_input(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(handle.pid, ["one ", b"two\n", "three\n"])
    handle.close_stdin()
    assert handle.wait().stdout == "one two\nthree\n"


def test_stream_input_to_unknown_pid(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundException):
        sbx.commands.stream_input(999_999, ["x"])


def test_without_stdin_the_command_reads_eof(sbx) -> None:  # type: ignore[no-untyped-def]
    assert sbx.commands.run("cat; echo done").stdout == "done\n"


def test_send_stdin_to_unknown_pid(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundException):
        sbx.commands.send_stdin(999_999, "x")


# cwd, envs, users


def test_cwd(sbx) -> None:  # type: ignore[no-untyped-def]
    assert sbx.commands.run("pwd").stdout == "/home/user\n"
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("pwd", cwd="/", user="root").stdout == "/\n"


def test_nonexistent_cwd_is_invalid_argument(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("pwd", cwd="/does/not/exist")


def test_envs_apply_to_one_command(sbx) -> None:  # type: ignore[no-untyped-def]
    out = sbx.commands.run('printf "%s" "$GREETING"', envs={"GREETING": "hi there"}).stdout
    assert out == "hi there"
    assert sbx.commands.run('printf "%s" "${GREETING-unset}"').stdout == "unset"


def test_users(sbx) -> None:  # type: ignore[no-untyped-def]
    assert sbx.commands.run("id -un").stdout == "user\n"
    assert sbx.commands.run("id -un", user="user").stdout == "user\n"
    root = sbx.commands.run('id -un; id -u; echo "$HOME"', user="root").stdout
    assert root == "root\n0\n/root\n"


def test_unknown_user_is_authentication_error(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthenticationException):
        sbx.commands.run("id", user="nobody-like-this")  # type: ignore[arg-type]


def test_passwordless_sudo(sbx) -> None:  # type: ignore[no-untyped-def]
    assert sbx.commands.run("sudo -n id -u").stdout == "0\n"


# timeouts and disconnects


def test_timeout_kills_the_command(sbx) -> None:  # type: ignore[no-untyped-def]
    marker = unique("timeout")
    with pytest.raises(TimeoutException):
        sbx.commands.run(f"sleep 60; echo {marker}", timeout=1)
    wait_for(
        lambda: not any(marker in " ".join(p.args) for p in sbx.commands.list()),
        what="timed-out command to be killed",
    )
    # "[s]leep" keeps pgrep from matching the shell that runs it.
    pattern = f"[s]leep 60; echo {marker}"
    assert sbx.commands.run(f"pgrep -f '{pattern}' || echo none").stdout == "none\n"


def test_background_timeout_kills_the_command(sbx) -> None:  # type: ignore[no-untyped-def]
    marker = unique("bgtimeout")
    handle = sbx.commands.run(f"sleep 60; echo {marker}", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        handle.wait()
    wait_for(lambda: handle.pid not in running_pids(sbx), what="timed-out command to go")


def test_client_disconnect_mid_stream_leaves_server_serving(sbx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TimeoutException):
        sbx.commands.run("cat /dev/zero | base64", timeout=1)
    assert sbx.commands.run("echo still-serving").stdout == "still-serving\n"
    wait_for(
        lambda: not any("/dev/zero" in " ".join(p.args) for p in sbx.commands.list()),
        what="flooding command to be killed at its deadline",
    )


# bytes


def test_invalid_utf8_output_is_replaced(sbx) -> None:  # type: ignore[no-untyped-def]
    raw = b"ok \xff\xfe mid \xe2\x82"
    printf_arg = "".join(f"\\x{b:02x}" for b in raw)
    result = sbx.commands.run(f"printf '{printf_arg}'")
    assert result.stdout == raw.decode("utf-8", errors="replace")
    # A multibyte character split across writes still decodes.
    result = sbx.commands.run("printf '\\xe2'; sleep 0.2; printf '\\x9c\\x93\\n'")
    assert result.stdout == "✓\n"


def test_unicode_round_trips(sbx) -> None:  # type: ignore[no-untyped-def]
    text = "žluťoučký kůň ✓ 日本語 🐚"
    assert sbx.commands.run(f"echo '{text}'").stdout == text + "\n"
    assert sbx.commands.run('printf "%s" "$T"', envs={"T": text}).stdout == text


def test_lone_surrogate_in_command_is_a_clear_error(sbx) -> None:  # type: ignore[no-untyped-def]
    # The 2.63 SDK cannot encode it and says so before anything reaches the server
    # (the server's own answer to such bytes is in test_sdk_bad_input).
    with pytest.raises(Exception, match="surrogates not allowed") as e:
        sbx.commands.run("echo \udcff")
    assert not isinstance(e.value, CommandExitException)
    assert sbx.commands.run("echo fine").stdout == "fine\n"


def test_large_output_arrives_whole(sbx) -> None:  # type: ignore[no-untyped-def]
    cmd = "head -c 50M /dev/zero | base64"
    expected = int(sbx.commands.run(f"{cmd} | wc -c").stdout)
    received = 0
    last = ""

    def count(chunk: str) -> None:
        nonlocal received, last
        received += len(chunk)
        last = chunk

    result = sbx.commands.run(cmd, on_stdout=count, retain_output=False, timeout=120)
    assert result.exit_code == 0
    assert received == expected
    assert last.endswith("=\n") or last.endswith("A\n")
    assert sbx.commands.run("echo responsive").stdout == "responsive\n"


def test_list_shows_cwd_and_envs(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("sleep 120", background=True, cwd="/tmp", envs={"ONLY": "here"})
    try:
        info = {p.pid: p for p in sbx.commands.list()}[handle.pid]
        assert info.cwd == "/tmp"
        assert info.envs == {"ONLY": "here"}
    finally:
        handle.kill()


def test_two_clients_follow_one_command(sbx) -> None:  # type: ignore[no-untyped-def]
    flag = f"/tmp/{unique('two')}"
    handle = sbx.commands.run(
        f"while [ ! -e {flag} ]; do sleep 0.05; done; echo shared", background=True
    )
    other = sbx.commands.connect(handle.pid)
    sbx.commands.run(f"touch {flag}")
    assert handle.wait().stdout == "shared\n"
    assert other.wait().stdout == "shared\n"


def test_stdin_streams_without_buffering(sbx) -> None:  # type: ignore[no-untyped-def]
    """The second chunk is only produced once ``cat`` has echoed the first, so input
    held back until the client closed its stream would deadlock (and time out)."""
    handle = sbx.commands.run("cat", background=True, stdin=True, timeout=30)
    events = iter(handle)
    echoed: list[str] = []

    def chunks():  # type: ignore[no-untyped-def]
        yield "first\n"
        echoed.append(next(events)[0])
        yield "second\n"

    sbx.commands.stream_input(handle.pid, chunks(), timeout=20)
    assert echoed == ["first\n"]
    handle.close_stdin()
    assert handle.wait().stdout == "first\nsecond\n"


def test_large_stdin_chunk(sbx) -> None:  # type: ignore[no-untyped-def]
    handle = sbx.commands.run("sha256sum", background=True, stdin=True)
    payload = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB in one send_stdin
    handle.send_stdin(payload)
    handle.close_stdin()
    assert handle.wait().stdout.split()[0] == hashlib.sha256(payload).hexdigest()
