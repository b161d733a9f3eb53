"""The small pure rules of envd's process service: cwd, env, exit wording, auth headers."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shoal.envd.auth import basic_username, resolve_user, token_matches
from shoal.envd.process.start import DEFAULT_PATH, child_env, resolve_cwd
from shoal.envd.process.stream import end_event, keepalive_interval, status_text, timeout_seconds
from shoal.envd.sandbox import User
from shoal.errors import Unauthenticated
from shoal.runtime.process import ExitStatus

USER = User("user", 1000, 1000, "/home/user")


@pytest.mark.parametrize(
    ("requested", "workdir", "expected"),
    [
        ("", None, "/home/user"),
        ("", "/app", "/app"),
        ("/tmp/x/../y", "/app", "/tmp/y"),
        ("src", "/app", "/home/user/src"),
        ("~", None, "/home/user"),
        ("~/code", None, "/home/user/code"),
        ("../other", None, "/home/other"),
    ],
)
def test_resolve_cwd(requested: str, workdir: str | None, expected: str) -> None:
    assert resolve_cwd(requested, USER, workdir) == expected


def test_child_env_order_later_wins() -> None:
    env = child_env(USER, {"PATH": "/sbx/bin", "A": "sandbox", "B": "sandbox"}, {"B": "request"})
    assert env == {
        "PATH": "/sbx/bin",
        "HOME": "/home/user",
        "USER": "user",
        "LOGNAME": "user",
        "A": "sandbox",
        "B": "request",
    }
    assert child_env(USER, {}, {})["PATH"] == DEFAULT_PATH


@pytest.mark.parametrize(
    ("status", "text", "wire"),
    [
        (ExitStatus(0, None), "exit status 0", {"exited": True, "status": "exit status 0"}),
        (
            ExitStatus(3, None),
            "exit status 3",
            {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"},
        ),
        (
            ExitStatus(None, 9),
            "signal: killed",
            {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"},
        ),
        (
            ExitStatus(None, 15),
            "signal: terminated",
            {"exitCode": -1, "status": "signal: terminated", "error": "signal: terminated"},
        ),
    ],
)
def test_end_event_wording(status: ExitStatus, text: str, wire: dict[str, object]) -> None:
    import json

    assert status_text(status) == text
    assert json.loads(end_event(status).to_json()) == wire


def test_header_parsing() -> None:
    assert keepalive_interval({"keepalive-ping-interval": "50"}) == 50
    assert keepalive_interval({}) == 90
    assert keepalive_interval({"keepalive-ping-interval": "junk"}) == 90
    assert timeout_seconds({"connect-timeout-ms": "1500"}) == 1.5
    assert timeout_seconds({"connect-timeout-ms": "0"}) is None
    assert timeout_seconds({}) is None


def _basic(name: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:".encode()).decode()


class _Sandbox:
    sandbox_id = "s"
    access_token: str | None = "secret"
    default_user = "user"
    default_workdir = None
    env_vars: dict[str, str] = {}
    spawner = None
    rootfs = Path("/")

    def lookup_user(self, name: str) -> User | None:
        return {"user": USER, "root": User("root", 0, 0, "/root")}.get(name)


def test_basic_auth_user_selection() -> None:
    sbx = _Sandbox()
    assert basic_username(_basic("root")) == "root"
    assert basic_username(None) is None
    assert resolve_user(sbx, None) == USER  # type: ignore[arg-type]
    assert resolve_user(sbx, _basic("root")).uid == 0  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        resolve_user(sbx, _basic("nobody"))  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        resolve_user(sbx, "Basic !!!not-base64")  # type: ignore[arg-type]


def test_token_matches() -> None:
    sbx = _Sandbox()
    assert token_matches(sbx, "secret")  # type: ignore[arg-type]
    assert not token_matches(sbx, "wrong")  # type: ignore[arg-type]
    assert not token_matches(sbx, None)  # type: ignore[arg-type]
    sbx.access_token = None
    assert token_matches(sbx, None)  # type: ignore[arg-type]
