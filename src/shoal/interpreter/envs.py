"""Environment variables (e2b-compat.md §5.4).

Sandbox-level variables are handed over by the node agent that starts this server
(``SHOAL_INTERPRETER_SANDBOX_ENV``, a JSON object); without it they come from envd (``GET /envs``
with the caller's ``X-Access-Token``), fetched once. A server started before its sandbox was
handed out (the node's primed pool) gets them later, once, through ``PUT /shoal/env``
(:meth:`SandboxEnvs.provide`). They are applied to a context at its first use, and again
after its kernel restarts or the variables are handed over. Per-execution variables are set
before the execution and afterwards reset to the sandbox-level value or removed. Both are
applied by a small language-specific snippet run silently in the kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex

import httpx

from shoal.interpreter.config import sandbox_env_from_environ

log = logging.getLogger(__name__)


class SandboxEnvs:
    """The sandbox-level env vars: the given ones, else fetched from envd once (a failed
    fetch is retried next time)."""

    def __init__(self, envd_url: str, given: dict[str, str] | None = None) -> None:
        """``given`` None: the ones in ``SHOAL_INTERPRETER_SANDBOX_ENV``, else envd's."""
        self._url = f"{envd_url}/envs"
        if given is None:
            given = sandbox_env_from_environ()
        self._value: dict[str, str] | None = None if given is None else dict(given)
        self._warned = False
        self._lock = asyncio.Lock()
        #: bumped whenever the value changes: contexts apply the variables again
        self.version = 0

    def provide(self, values: dict[str, str]) -> None:
        """Take the variables from the node agent. Kernels started from now on inherit them
        (this process's environment); running ones get them at their next execution."""
        for name in self._value or {}:
            if name not in values:
                os.environ.pop(name, None)
        os.environ.update(values)
        self._value = dict(values)
        self.version += 1

    async def get(self, access_token: str | None) -> dict[str, str] | None:
        """The variables, or None when envd could not be asked (try again next time)."""
        if self._value is not None:
            return self._value
        async with self._lock:
            if self._value is None:
                headers = {"X-Access-Token": access_token} if access_token else {}
                try:
                    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                        response = await client.get(self._url, headers=headers)
                        response.raise_for_status()
                        body = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    log.log(
                        logging.DEBUG if self._warned else logging.WARNING,
                        "could not fetch sandbox env vars from %s: %s", self._url, exc,
                    )
                    self._warned = True
                    return None
                self._value = {str(k): str(v) for k, v in (body or {}).items()}
            return self._value


def set_snippet(language: str, values: dict[str, str]) -> str | None:
    """Code that sets ``values`` in a kernel of ``language`` (None: nothing to do/unsupported)."""
    if not values:
        return None
    if language == "python":
        return f"__import__('os').environ.update({values!r})"
    if language in ("javascript", "typescript"):
        return f"Object.assign(process.env, {json.dumps(values)});"
    if language == "r":
        args = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items())
        return f"invisible(Sys.setenv({args}))"
    if language == "bash":
        return "; ".join(f"export {k}={shlex.quote(v)}" for k, v in values.items() if _ident(k))
    return None


def unset_snippet(language: str, names: list[str]) -> str | None:
    if not names:
        return None
    if language == "python":
        return f"[__import__('os').environ.pop(k, None) for k in {names!r}] and None"
    if language in ("javascript", "typescript"):
        return f"for (const k of {json.dumps(names)}) {{ delete process.env[k]; }}"
    if language == "r":
        return f"invisible(Sys.unsetenv(c({', '.join(json.dumps(n) for n in names)})))"
    if language == "bash":
        return "unset " + " ".join(n for n in names if _ident(n))
    return None


def reset_snippets(
    language: str, overrides: dict[str, str], sandbox: dict[str, str]
) -> list[str]:
    """Undo per-execution ``overrides``: restore sandbox-level values, remove the rest."""
    restore = {k: sandbox[k] for k in overrides if k in sandbox}
    remove = [k for k in overrides if k not in sandbox]
    return [s for s in (set_snippet(language, restore), unset_snippet(language, remove)) if s]


def _ident(name: str) -> bool:
    return name.replace("_", "a").isalnum() and not name[:1].isdigit()
