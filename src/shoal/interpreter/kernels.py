"""One supervised Jupyter kernel per context, on ``jupyter_client``.

``KernelCatalog`` maps E2B language names (§5.5) to installed kernelspecs; ``Kernel`` owns an
``AsyncKernelManager`` and its ``AsyncKernelClient`` and restarts the kernel when it dies, within
a restart budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

log = logging.getLogger(__name__)

ALIASES = {
    "js": "javascript", "ts": "typescript", "py": "python", "python3": "python", "sh": "bash",
}


class UnknownLanguage(Exception):
    def __init__(self, language: str) -> None:
        super().__init__(f"No kernel installed for language {language!r}")
        self.language = language


class KernelUnavailable(Exception):
    """The kernel died too often and the context gave up on it."""


#: the cgroup filesystem, seen from inside the sandbox (cgroup namespace: its root is the
#: sandbox's own cgroup); v1 has the memory controller under ``memory/``
CGROUP = Path("/sys/fs/cgroup")

#: added to each kernel's ``oom_score_adj`` (raising one's own needs no privilege): when the
#: sandbox runs out of memory, the out-of-memory killer then picks a kernel (whose context
#: is restarted with a clear error) before this server, whose death would take every
#: context with it
KERNEL_OOM_SCORE_ADJ = 300


def oom_kills(cgroup: Path = CGROUP) -> int | None:
    """How many processes the out-of-memory killer ended in this sandbox's memory cgroup
    (v1 ``memory.oom_control``, v2 ``memory.events``); None when neither is readable."""
    for path in (cgroup / "memory" / "memory.oom_control", cgroup / "memory.events"):
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def memory_limit_mb(cgroup: Path = CGROUP) -> int | None:
    """The sandbox's memory limit in MiB, or None when unlimited or unreadable."""
    for path in (cgroup / "memory" / "memory.limit_in_bytes", cgroup / "memory.max"):
        with contextlib.suppress(OSError, ValueError):
            limit = int(path.read_text().strip())
            return limit // 2**20 if limit < 2**60 else None
    return None


def describe_exit(code: int | None, oom_kills_before: int | None, cgroup: Path = CGROUP) -> str:
    """What ended a kernel, for the error its caller gets: ``exit code 1``, or for a
    SIGKILL that came with a new out-of-memory kill, that the sandbox ran out of memory."""
    text = f"exit code {code}"
    if code == -signal.SIGKILL and oom_kills_before is not None:
        now = oom_kills(cgroup)
        if now is not None and now > oom_kills_before:
            limit = memory_limit_mb(cgroup)
            where = f"its limit of {limit} MiB" if limit else "its limit"
            text += f": killed by the out-of-memory killer, the sandbox's memory reached {where}"
    return text


def normalise(language: str | None) -> str:
    name = (language or "python").strip().lower()
    return ALIASES.get(name, name)


class KernelCatalog:
    """Installed kernelspecs by language, discovered with ``KernelSpecManager``."""

    def __init__(self, ksm: KernelSpecManager | None = None) -> None:
        self.ksm = ksm or KernelSpecManager()
        self._by_language: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        by_language: dict[str, str] = {}
        specs: dict[str, Any] = self.ksm.get_all_specs()
        # prefer the canonical names (python3 over other python kernels), then alphabetical
        for name in sorted(specs, key=lambda n: (n not in ("python3", "bash", "javascript"), n)):
            language = normalise(str(specs[name]["spec"].get("language", "")))
            by_language.setdefault(language, name)
        if "typescript" not in by_language and "javascript" in by_language:
            # TypeScript runs on the JS kernel (its own context), as upstream
            by_language["typescript"] = by_language["javascript"]
        self._by_language = by_language

    def languages(self) -> list[str]:
        return sorted(self._by_language)

    def spec_for(self, language: str) -> str:
        try:
            return self._by_language[language]
        except KeyError:
            raise UnknownLanguage(language) from None


class Kernel:
    """A kernel process plus its client; ``ensure_alive`` restarts it after a death."""

    def __init__(
        self,
        catalog: KernelCatalog,
        kernel_name: str,
        cwd: str,
        *,
        start_timeout: float = 60.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.km = AsyncKernelManager(kernel_name=kernel_name, kernel_spec_manager=catalog.ksm)
        self.kc: Any = None
        self._start_timeout = start_timeout
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self._deaths: list[float] = []
        #: bumped on every (re)start: per-start setup (env vars, formatters) must be redone
        self.generation = 0
        #: False until the first start: a context's kernel may start at its first use
        self.started = False

    async def start(self) -> None:
        env = dict(os.environ)
        env.pop("JPY_PARENT_PID", None)
        self.started = True
        await self.km.start_kernel(cwd=self.cwd, env=env)
        self._prefer_for_oom_kill()
        await self._connect()

    def _prefer_for_oom_kill(self) -> None:
        process = getattr(self.km.provisioner, "process", None)
        pid = getattr(process, "pid", None)
        if pid is None:
            return
        try:
            path = Path(f"/proc/{pid}/oom_score_adj")
            current = int(path.read_text())
            path.write_text(str(min(1000, current + KERNEL_OOM_SCORE_ADJ)))
        except (OSError, ValueError) as exc:
            log.debug("could not raise the kernel's oom_score_adj: %s", exc)

    async def _connect(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        kc = self.km.client()
        kc.allow_stdin = False
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=self._start_timeout)
        except Exception:
            kc.stop_channels()
            raise
        self.kc = kc
        self.generation += 1

    async def is_alive(self) -> bool:
        return self.started and bool(await self.km.is_alive())

    def exit_code(self) -> int | None:
        provisioner = self.km.provisioner
        process = getattr(provisioner, "process", None)
        return None if process is None else process.poll()

    async def restart(self) -> None:
        """Restart now (state wiped); works whether the kernel is alive or dead."""
        if not self.started:  # nothing to wipe
            await self.start()
            return
        # New ports: the dead kernel's may not be free yet (its heartbeat thread would fail
        # to bind, "Address already in use", and the new kernel run without one).
        await self.km.restart_kernel(now=True, newports=True)
        self._prefer_for_oom_kill()
        await self._connect()

    async def recover(self) -> None:
        """Restart after a death, within the budget of ``max_restarts`` per window."""
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < self._restart_window]
        self._deaths.append(now)
        if len(self._deaths) > self._max_restarts:
            raise KernelUnavailable(
                f"kernel died {len(self._deaths)} times in {self._restart_window:.0f}s; giving up"
            )
        log.warning("kernel %s died; restarting", self.km.kernel_id)
        await self.restart()

    async def interrupt(self) -> None:
        if not self.started:
            return
        try:
            await self.km.interrupt_kernel()
        except Exception as exc:  # a dead kernel cannot be interrupted; supervision handles it
            log.info("interrupt failed: %s", exc)

    async def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if not self.started:
            return
        try:
            await self.km.shutdown_kernel(now=True)
        except Exception as exc:
            log.info("kernel shutdown: %s", exc)

    async def run_silent(self, code: str, limit: float = 30.0) -> dict[str, Any]:
        """Run setup code without output or history; returns the ``execute_reply`` content."""
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("setup code did not finish")
            reply = await self.kc.get_shell_msg(timeout=remaining)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                content: dict[str, Any] = reply["content"]
                return content
