"""Settings of the interpreter server, read from ``SHOAL_INTERPRETER_*`` environment variables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


def _float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = float(raw)
    return value if value > 0 else None


SANDBOX_ENV_VAR = "SHOAL_INTERPRETER_SANDBOX_ENV"


def sandbox_env_from_environ() -> dict[str, str] | None:
    """The sandbox-level env vars the node agent handed over, or None."""
    return _json_map(SANDBOX_ENV_VAR)


def _json_map(name: str) -> dict[str, str] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 49999
    #: default working directory of new contexts
    cwd: str = "/home/user"
    #: seconds of silence on an /execute stream before a ``keepalive`` line
    keepalive_interval: float = 5.0
    #: envd base URL; sandbox-level env vars come from ``GET {envd_url}/envs``
    envd_url: str = "http://localhost:49983"
    #: the sandbox-level env vars, when the node agent hands them over
    #: (``SHOAL_INTERPRETER_SANDBOX_ENV``, a JSON object); None: ask envd
    sandbox_env: dict[str, str] | None = None
    #: server-side cap on one execution (None: only the client's deadline applies)
    execution_timeout: float | None = None
    #: how long a kernel may take to become ready
    kernel_start_timeout: float = 60.0
    #: after an interrupt, how long the kernel gets to go idle before it is restarted
    interrupt_grace: float = 5.0
    #: a context whose kernel dies more than this often within ``restart_window`` gives up
    max_restarts: int = 5
    restart_window: float = 60.0
    #: languages whose default context is created at start (skipped when no kernel exists)
    default_languages: tuple[str, ...] = field(default=("python", "javascript"))
    #: of those, the ones whose kernel starts with the server; the others' start at their
    #: first execution (a JS kernel is ~100 MiB every idle sandbox would hold, and
    #: checkpoint, for a language most sessions never use)
    eager_languages: tuple[str, ...] = field(default=("python",))

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        base = cls()
        langs = env("SHOAL_INTERPRETER_DEFAULT_LANGUAGES")
        return cls(
            host=env("SHOAL_INTERPRETER_HOST", base.host),
            port=int(env("SHOAL_INTERPRETER_PORT", str(base.port))),
            cwd=env("SHOAL_INTERPRETER_CWD", base.cwd),
            keepalive_interval=_float("SHOAL_INTERPRETER_KEEPALIVE", base.keepalive_interval)
            or base.keepalive_interval,
            envd_url=env("SHOAL_INTERPRETER_ENVD_URL", base.envd_url).rstrip("/"),
            sandbox_env=sandbox_env_from_environ(),
            execution_timeout=_float(
                "SHOAL_INTERPRETER_EXECUTION_TIMEOUT", base.execution_timeout
            ),
            default_languages=(
                tuple(x.strip() for x in langs.split(",") if x.strip())
                if langs is not None
                else base.default_languages
            ),
        )
