"""process.Process over real HTTP: stream framing, timing, deadlines, aborts, leaks."""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import Any

import httpx
import pytest
from envd_harness import EnvdServer, EnvelopeReader, envelope, run_stream, stream_headers, unary
from fakes.envd_sandbox import FakeSandbox

BASH = "/bin/bash"


def sh(cmd: str, **extra: Any) -> dict[str, Any]:
    return {"process": {"cmd": BASH, "args": ["-c", cmd]}, "stdin": False, **extra}


def events(frames: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [body["event"] for flags, body in frames if flags == 0]


def output(evs: list[dict[str, Any]], kind: str) -> bytes:
    return b"".join(base64.b64decode(e["data"][kind]) for e in evs if kind in e.get("data", {}))


def end_stream(frames: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    flags, body = frames[-1]
    assert flags == 2, frames
    return body


def fd_targets(fds: list[int | None] | None = None) -> set[str]:
    """What this process's fds point at (``pipe:[123]``, ``/dev/pts/4``...)."""
    targets = set()
    for name in (
        os.listdir("/proc/self/fd") if fds is None else [str(fd) for fd in fds if fd is not None]
    ):
        try:
            targets.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return targets


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def listed_pids(http: httpx.Client, sandbox: FakeSandbox) -> list[int]:
    response = unary(http, sandbox, "List", {})
    assert response.status_code == 200
    return [p["pid"] for p in response.json().get("processes", [])]


def test_start_sends_start_then_output_then_one_end(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    frames = run_stream(http, sandbox, "Start", sh("printf out; printf err >&2; exit 3"))
    evs = events(frames)
    assert set(evs[0]) == {"start"} and evs[0]["start"]["pid"] > 0
    assert output(evs, "stdout") == b"out"
    assert output(evs, "stderr") == b"err"
    ends = [e for e in evs if "end" in e]
    assert ends == [
        {
            "end": {
                "exitCode": 3,
                "exited": True,
                "status": "exit status 3",
                "error": "exit status 3",
            }
        }
    ]
    assert "end" in evs[-1]
    assert end_stream(frames) == {}


def test_success_has_no_error_and_signal_death_reports_killed(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    ok = events(run_stream(http, sandbox, "Start", sh("true")))[-1]["end"]
    assert ok == {"exited": True, "status": "exit status 0"}
    killed = events(run_stream(http, sandbox, "Start", sh("kill -9 $$")))[-1]["end"]
    assert killed == {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}


def test_output_streams_before_the_process_exits(http: httpx.Client, sandbox: FakeSandbox) -> None:
    reader = EnvelopeReader()
    body = {"process": {"cmd": "cat"}, "stdin": True}
    with http.stream(
        "POST", "/process.Process/Start", content=envelope(body), headers=stream_headers(sandbox)
    ) as response:
        chunks = response.iter_bytes()
        frames = reader.feed(next(chunks))
        pid = frames[0][1]["event"]["start"]["pid"]
        sent = unary(
            http,
            sandbox,
            "SendInput",
            {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(b"first\n").decode()}},
        )
        assert sent.status_code == 200, sent.text
        while not any("data" in f[1].get("event", {}) for f in frames):
            frames += reader.feed(next(chunks))
        assert output(events(frames), "stdout") == b"first\n"
        assert pid in listed_pids(http, sandbox)  # still running: nothing was batched
        assert unary(http, sandbox, "CloseStdin", {"process": {"pid": pid}}).status_code == 200
        for chunk in chunks:
            frames += reader.feed(chunk)
    assert events(frames)[-1]["end"]["status"] == "exit status 0"


def test_deadline_kills_the_process_and_ends_the_stream(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    started = time.monotonic()
    frames = run_stream(http, sandbox, "Start", sh("sleep 30"), **{"connect-timeout-ms": "400"})
    elapsed = time.monotonic() - started
    pid = events(frames)[0]["start"]["pid"]
    assert end_stream(frames)["error"]["code"] == "deadline_exceeded"
    assert elapsed < 5
    assert wait_until(lambda: pid not in listed_pids(http, sandbox))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_keepalive_after_quiet_interval(http: httpx.Client, sandbox: FakeSandbox) -> None:
    frames = run_stream(http, sandbox, "Start", sh("sleep 2.5"), **{"keepalive-ping-interval": "1"})
    kinds = [next(iter(e)) for e in events(frames)]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("keepalive") >= 1


def test_background_grandchild_does_not_hold_the_stream(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    started = time.monotonic()
    frames = run_stream(http, sandbox, "Start", sh("sleep 30 & echo done"))
    assert time.monotonic() - started < 3
    evs = events(frames)
    assert output(evs, "stdout") == b"done\n"
    assert evs[-1]["end"]["status"] == "exit status 0"


def test_connect_by_tag_gets_live_output_and_end(
    envd_server: EnvdServer, http: httpx.Client, sandbox: FakeSandbox
) -> None:
    body = {"process": {"cmd": "cat"}, "stdin": True, "tag": "job-1"}
    results: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    starter = threading.Thread(
        target=lambda: results.setdefault("start", run_stream(http, sandbox, "Start", body))
    )
    starter.start()
    assert wait_until(lambda: len(listed_pids(http, sandbox)) == 1)
    info = unary(http, sandbox, "List", {}).json()["processes"][0]
    assert info["tag"] == "job-1" and info["config"]["cmd"] == "cat"
    pid = info["pid"]

    reader = EnvelopeReader()
    frames: list[tuple[int, dict[str, Any]]] = []
    with http.stream(
        "POST",
        "/process.Process/Connect",
        content=envelope({"process": {"tag": "job-1"}}),
        headers=stream_headers(sandbox),
    ) as response:
        chunks = response.iter_bytes()
        frames += reader.feed(next(chunks))
        assert events(frames)[0] == {"start": {"pid": pid}}
        data = base64.b64encode(b"shared\n").decode()
        assert (
            unary(
                http, sandbox, "SendInput", {"process": {"pid": pid}, "input": {"stdin": data}}
            ).status_code
            == 200
        )
        assert unary(http, sandbox, "CloseStdin", {"process": {"tag": "job-1"}}).status_code == 200
        for chunk in chunks:
            frames += reader.feed(chunk)
    starter.join(10)
    for seen in (frames, results["start"]):
        assert output(events(seen), "stdout") == b"shared\n"
        assert events(seen)[-1]["end"]["status"] == "exit status 0"


def test_connect_to_unknown_pid_is_a_not_found_end_stream(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    frames = run_stream(http, sandbox, "Connect", {"process": {"pid": 999999}})
    assert events(frames) == []
    assert end_stream(frames)["error"]["code"] == "not_found"


def test_start_errors_are_end_stream_errors(http: httpx.Client, sandbox: FakeSandbox) -> None:
    missing = run_stream(
        http, sandbox, "Start", sh("true") | {"process": {"cmd": BASH, "cwd": "/no/such/dir"}}
    )
    assert end_stream(missing)["error"]["code"] == "invalid_argument"
    assert "does not exist" in end_stream(missing)["error"]["message"]

    nobody = base64.b64encode(b"nobody:").decode()
    unknown = run_stream(http, sandbox, "Start", sh("true"), authorization=f"Basic {nobody}")
    assert end_stream(unknown)["error"]["code"] == "unauthenticated"

    no_program = run_stream(http, sandbox, "Start", {"process": {"cmd": "/no/such/program"}})
    assert end_stream(no_program)["error"]["code"] == "invalid_argument"


def test_invalid_text_in_the_command_is_invalid_argument(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    reader = EnvelopeReader()
    payload = b'{"process":{"cmd":"/bin/echo","args":["\xff\xfe"]}}'
    raw = bytes([0]) + len(payload).to_bytes(4, "big") + payload
    with http.stream(
        "POST", "/process.Process/Start", content=raw, headers=stream_headers(sandbox)
    ) as r:
        frames = reader.feed(r.read())
    assert end_stream(frames)["error"]["code"] == "invalid_argument"

    surrogate = run_stream(
        http, sandbox, "Start", {"process": {"cmd": "/bin/echo", "args": ["\udc80"]}}
    )
    assert end_stream(surrogate)["error"]["code"] == "invalid_argument"


def test_environment_and_cwd(http: httpx.Client, sandbox: FakeSandbox) -> None:
    body = sh(
        'echo "$PATH|$HOME|$USER|$LOGNAME|$E2B_SANDBOX|$MINE"; pwd',
    )
    body["process"]["envs"] = {"MINE": "1", "E2B_SANDBOX": "overridden"}
    out = output(events(run_stream(http, sandbox, "Start", body)), "stdout").decode().splitlines()
    assert out[0] == (
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        f"|{sandbox.home}|user|user|overridden|1"
    )
    assert out[1] == sandbox.home
    os.mkdir(os.path.join(sandbox.home, "sub"))
    body = sh("pwd")
    body["process"]["cwd"] = "sub"
    assert (
        output(events(run_stream(http, sandbox, "Start", body)), "stdout")
        == f"{sandbox.home}/sub\n".encode()
    )


def test_sigterm_via_send_signal(http: httpx.Client, sandbox: FakeSandbox) -> None:
    reader = EnvelopeReader()
    frames: list[tuple[int, dict[str, Any]]] = []
    with http.stream(
        "POST",
        "/process.Process/Start",
        content=envelope(sh("sleep 30")),
        headers=stream_headers(sandbox),
    ) as r:
        chunks = r.iter_bytes()
        frames += reader.feed(next(chunks))
        pid = events(frames)[0]["start"]["pid"]
        sent = unary(
            http, sandbox, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}
        )
        assert sent.status_code == 200 and sent.json() == {}
        for chunk in chunks:
            frames += reader.feed(chunk)
    assert events(frames)[-1]["end"]["status"] == "signal: terminated"
    gone = unary(http, sandbox, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


def test_pty_output_input_and_resize(http: httpx.Client, sandbox: FakeSandbox) -> None:
    body = {
        "process": {"cmd": BASH, "args": ["-c", "stty size; read line; stty size"]},
        "pty": {"size": {"cols": 80, "rows": 24}},
    }
    reader = EnvelopeReader()
    frames: list[tuple[int, dict[str, Any]]] = []
    with http.stream(
        "POST", "/process.Process/Start", content=envelope(body), headers=stream_headers(sandbox)
    ) as r:
        chunks = r.iter_bytes()
        while b"24 80" not in output(events(frames), "pty"):
            frames += reader.feed(next(chunks))
        pid = events(frames)[0]["start"]["pid"]
        resized = unary(
            http,
            sandbox,
            "Update",
            {"process": {"pid": pid}, "pty": {"size": {"cols": 132, "rows": 40}}},
        )
        assert resized.status_code == 200, resized.text
        enter = base64.b64encode(b"\n").decode()
        assert (
            unary(
                http, sandbox, "SendInput", {"process": {"pid": pid}, "input": {"pty": enter}}
            ).status_code
            == 200
        )
        for chunk in chunks:
            frames += reader.feed(chunk)
    assert b"40 132" in output(events(frames), "pty")
    assert events(frames)[-1]["end"]["status"] == "exit status 0"


def test_stream_input_client_stream(http: httpx.Client, sandbox: FakeSandbox) -> None:
    result: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    starter = threading.Thread(
        target=lambda: result.setdefault(
            "frames", run_stream(http, sandbox, "Start", {"process": {"cmd": "cat"}, "stdin": True})
        )
    )
    starter.start()
    assert wait_until(lambda: len(listed_pids(http, sandbox)) == 1)
    pid = listed_pids(http, sandbox)[0]

    def body() -> Any:
        yield envelope({"start": {"process": {"pid": pid}}})
        for part in (b"a", b"b", b"c\n"):
            yield envelope({"data": {"input": {"stdin": base64.b64encode(part).decode()}}})
        yield envelope({"keepalive": {}})

    with http.stream(
        "POST", "/process.Process/StreamInput", content=body(), headers=stream_headers(sandbox)
    ) as r:
        frames = EnvelopeReader().feed(r.read())
    assert frames == [(0, {}), (2, {})]
    assert unary(http, sandbox, "CloseStdin", {"process": {"pid": pid}}).status_code == 200
    starter.join(10)
    assert output(events(result["frames"]), "stdout") == b"abc\n"


def test_sandbox_gone_aborts_the_stream(
    envd_server: EnvdServer, http: httpx.Client, sandbox: FakeSandbox
) -> None:
    reader = EnvelopeReader()
    frames: list[tuple[int, dict[str, Any]]] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream(
            "POST",
            "/process.Process/Start",
            content=envelope(sh("sleep 30")),
            headers=stream_headers(sandbox),
        ) as r:
            chunks = r.iter_bytes()
            frames += reader.feed(next(chunks))
            assert "start" in events(frames)[0]

            async def kill_sandbox() -> None:
                sandbox.spawner.gone()

            envd_server.run(kill_sandbox())
            for chunk in chunks:
                frames += reader.feed(chunk)
    assert all(flags == 0 for flags, _ in frames)  # no clean end-stream frame
    assert not any("end" in e for e in events(frames))


def test_client_disconnect_leaves_process_running_and_leaks_nothing(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    with http.stream(
        "POST",
        "/process.Process/Start",
        content=envelope(sh("sleep 0.7; echo late")),
        headers=stream_headers(sandbox),
    ) as r:
        first = EnvelopeReader().feed(next(r.iter_bytes()))
        pid = first[0][1]["event"]["start"]["pid"]
        handle = sandbox.spawner.handles[pid]
        held = fd_targets([handle.stdin, handle.stdout, handle.stderr, handle.pty])
        assert len(held) == 2  # stdout and stderr pipes (stdin is /dev/null)
    # The response is closed: the process must outlive its stream.
    assert pid in listed_pids(http, sandbox)
    assert wait_until(lambda: pid not in listed_pids(http, sandbox))
    assert wait_until(lambda: not (held & fd_targets()))


def test_output_flood_applies_back_pressure_and_keeps_the_server_responsive(
    http: httpx.Client, sandbox: FakeSandbox
) -> None:
    total = 64 * 1024 * 1024
    reader = EnvelopeReader()
    received = 0
    frames: list[tuple[int, dict[str, Any]]] = []
    with http.stream(
        "POST",
        "/process.Process/Start",
        content=envelope(sh(f"head -c {total} /dev/zero")),
        headers=stream_headers(sandbox),
    ) as r:
        chunks = r.iter_bytes()
        frames += reader.feed(next(chunks))
        pid = events(frames)[0]["start"]["pid"]
        time.sleep(1.0)  # a client that does not read
        started = time.monotonic()
        assert (
            http.get("/health", headers={"e2b-sandbox-id": sandbox.sandbox_id}).status_code == 204
        )
        assert time.monotonic() - started < 0.5
        assert pid in listed_pids(http, sandbox)  # blocked writing: back-pressure, not buffering
        for chunk in chunks:
            for flags, body in reader.feed(chunk):
                if flags == 0 and "data" in body["event"]:
                    received += len(base64.b64decode(body["event"]["data"]["stdout"]))
                frames.append((flags, body))
    assert received == total
    assert events(frames)[-1]["end"]["status"] == "exit status 0"


def test_connect_deadline_ends_only_the_stream(http: httpx.Client, sandbox: FakeSandbox) -> None:
    result: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    starter = threading.Thread(
        target=lambda: result.setdefault(
            "frames", run_stream(http, sandbox, "Start", sh("read x") | {"stdin": True})
        )
    )
    starter.start()
    assert wait_until(lambda: len(listed_pids(http, sandbox)) == 1)
    pid = listed_pids(http, sandbox)[0]
    frames = run_stream(
        http, sandbox, "Connect", {"process": {"pid": pid}}, **{"connect-timeout-ms": "300"}
    )
    assert events(frames)[0] == {"start": {"pid": pid}}
    assert end_stream(frames)["error"]["code"] == "deadline_exceeded"
    assert pid in listed_pids(http, sandbox)  # the process outlives the Connect deadline
    assert unary(http, sandbox, "CloseStdin", {"process": {"pid": pid}}).status_code == 200
    starter.join(10)
    assert events(result["frames"])[-1]["end"]["status"] == "exit status 1"
