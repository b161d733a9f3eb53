"""A real ``shoal serve`` (or ``shoal agent``) process for compat and e2e tests.

The server runs as a child process exactly as a user starts it, on ephemeral loopback
ports, with its own data directory and the machine's shared template directory (built by
``scripts/setup``). Tests talk to it only through its public ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = Path(os.environ.get("SHOAL_TEMPLATE_DIR", "/var/lib/shoal/templates"))


def scratch_dir(name: str) -> Path:
    """A fresh directory for a server's data. Not under pytest's tmp (mode 0700): the
    sandboxes' unprivileged root must be able to reach its rootfs below it."""
    import tempfile

    base = Path("/var/tmp/shoal-tests")
    base.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    path.chmod(0o755)
    return path


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shoal_command() -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main"]


@dataclass
class ShoalServer:
    data_dir: Path
    api_port: int = field(default_factory=free_port)
    sandbox_port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: "e2b_" + secrets.token_hex(20))
    node_token: str = field(default_factory=lambda: secrets.token_hex(16))
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def client_env(self) -> dict[str, str]:
        """What ``shoal serve`` prints for clients."""
        return {
            "E2B_API_KEY": self.api_key,
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_DOMAIN": "shoal.local",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "E2B_"))}
        env.update(
            {
                "SHOAL_DATA_DIR": str(self.data_dir),
                "SHOAL_TEMPLATE_DIR": str(TEMPLATE_DIR),
                "SHOAL_API_PORT": str(self.api_port),
                "SHOAL_SANDBOX_PORT": str(self.sandbox_port),
                "SHOAL_API_KEY": self.api_key,
                "SHOAL_NODE_TOKEN": self.node_token,
                "SHOAL_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "serve.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*shoal_command(), "serve"],
            env=self.server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal serve exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                api = httpx.get(f"{self.api_url}/health", timeout=1.0, trust_env=False)
                proxy = httpx.get(f"{self.sandbox_url}/health", timeout=1.0, trust_env=False)
                if api.status_code == 200 and proxy.status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"shoal serve did not come up in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, as a user's Ctrl-C would; sandboxes keep running."""
        terminate(self.proc, timeout)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-20000:]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"X-API-KEY": self.api_key},
            timeout=60.0,
            trust_env=False,
        )

    def kill_all_sandboxes(self) -> None:
        with self.api() as api:
            while True:
                r = api.get("/v2/sandboxes", params={"limit": 100})
                found = r.json() if r.status_code == 200 else []
                if not found:
                    return
                for s in found:
                    api.delete(f"/sandboxes/{s['sandboxID']}")


@contextlib.contextmanager
def sdk_env(server: ShoalServer) -> Iterator[None]:
    """Point the official SDKs at ``server`` for the duration of the block."""
    saved = {k: os.environ.get(k) for k in server.client_env()}
    saved["E2B_DEBUG"] = os.environ.pop("E2B_DEBUG", None)
    os.environ.update(server.client_env())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class ShoalAgentProcess:
    """A stand-alone ``shoal agent`` joining ``server`` (which should run with
    ``SHOAL_LOCAL_AGENT=false`` to be a pure control plane)."""

    server: ShoalServer
    data_dir: Path
    node_id: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "E2B_"))}
        env.update(
            {
                "SHOAL_DATA_DIR": str(self.data_dir),
                "SHOAL_TEMPLATE_DIR": str(TEMPLATE_DIR),
                "SHOAL_AGENT_PORT": str(self.port),
                "SHOAL_NODE_ID": self.node_id,
                "SHOAL_NODE_TOKEN": self.server.node_token,
                "SHOAL_CONTROL_PLANE_URL": self.server.api_url,
                "SHOAL_HEARTBEAT_INTERVAL": "0.5",
                "SHOAL_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        log = open(self.data_dir / "agent.log", "ab")
        self.proc = subprocess.Popen(
            [*shoal_command(), "agent"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def stop(self, timeout: float = 15.0) -> None:
        terminate(self.proc, timeout)

    def log(self) -> str:
        path = self.data_dir / "agent.log"
        return path.read_text(errors="replace")[-20000:] if path.exists() else ""
