"""Fixtures: the interpreter server (``python -m shoal.interpreter``) on 127.0.0.1 with real
kernels, a fake envd ``/envs`` endpoint, and the official ``e2b-code-interpreter`` client
pointed at the server (debug mode, so no control plane is contacted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
from e2b_code_interpreter import Sandbox

ACCESS_TOKEN = "interp-test-token"
SANDBOX_ENVS = {"SBX_VAR": "sandbox-value", "SBX_OTHER": "other value 'quoted'"}
KEEPALIVE_SECONDS = 0.5


@dataclass
class FakeEnvd:
    url: str
    tokens: list[str | None] = field(default_factory=list)


class LocalSandbox(Sandbox):
    """The official client, aimed at our server instead of a sandbox's port 49999."""

    base_url = ""

    @property
    def _jupyter_url(self) -> str:
        return self.base_url

    @property
    def _envd_access_token(self) -> str:  # what a real sandbox's token would be
        return ACCESS_TOKEN

    def is_running(self, request_timeout: float | None = None) -> bool:
        return True


@dataclass
class Interpreter:
    url: str
    cwd: Path
    envd: FakeEnvd
    process: subprocess.Popen[bytes]
    log: Path

    def execute_lines(self, body: dict[str, object], **headers: str) -> list[bytes]:
        """POST /execute and return the raw lines (terminators kept)."""
        lines: list[bytes] = []
        with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{self.url}/execute", json=body, headers=headers
        ) as response:
            assert response.status_code == 200, response.read()
            buffer = b""
            for chunk in response.iter_bytes():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    lines.append(line + b"\n")
            assert buffer == b"", f"unterminated trailing data: {buffer!r}"
        return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def fake_envd() -> Iterator[FakeEnvd]:
    state = FakeEnvd(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.headers.get("X-Access-Token")
            state.tokens.append(token)
            if self.path != "/envs" or token != ACCESS_TOKEN:
                self.send_response(401 if self.path == "/envs" else 404)
                self.end_headers()
                return
            body = json.dumps(SANDBOX_ENVS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def interpreter(
    tmp_path_factory: pytest.TempPathFactory, fake_envd: FakeEnvd
) -> Iterator[Interpreter]:
    root = tmp_path_factory.mktemp("interpreter")
    home = root / "home"
    home.mkdir()
    prefix = root / "kernels"
    # bash_kernel's kernelspec, installed where only this server looks
    subprocess.run(
        [sys.executable, "-m", "bash_kernel.install", "--prefix", str(prefix)],
        check=True, capture_output=True,
    )
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "SHOAL_INTERPRETER_HOST": "127.0.0.1",
        "SHOAL_INTERPRETER_PORT": str(port),
        "SHOAL_INTERPRETER_CWD": str(home),
        "SHOAL_INTERPRETER_KEEPALIVE": str(KEEPALIVE_SECONDS),
        "SHOAL_INTERPRETER_ENVD_URL": fake_envd.url,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    for name in SANDBOX_ENVS:
        env.pop(name, None)
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal.interpreter"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"interpreter did not start:\n{log.read_text()}"
        time.sleep(0.1)
    yield Interpreter(url=url, cwd=home, envd=fake_envd, process=process, log=log)
    kernels = psutil.Process(process.pid).children(recursive=True)
    assert kernels, "the server runs its kernels as child processes"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"interpreter did not stop on SIGTERM:\n{log.read_text()}")
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive, f"kernels left running after the server stopped: {alive}"


@pytest.fixture(scope="session")
def sbx(interpreter: Interpreter) -> LocalSandbox:
    LocalSandbox.base_url = interpreter.url
    sandbox = LocalSandbox.create(debug=True)
    return sandbox
