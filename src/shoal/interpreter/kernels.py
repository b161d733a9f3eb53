"""One supervised Jupyter kernel per context, on ``jupyter_client``.

``KernelCatalog`` maps E2B language names (§5.5) to installed kernelspecs; ``Kernel`` owns an
``AsyncKernelManager`` and its ``AsyncKernelClient`` and restarts the kernel when it dies, within
a restart budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
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

    async def start(self) -> None:
        env = dict(os.environ)
        env.pop("JPY_PARENT_PID", None)
        await self.km.start_kernel(cwd=self.cwd, env=env)
        await self._connect()

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
        return bool(await self.km.is_alive())

    def exit_code(self) -> int | None:
        provisioner = self.km.provisioner
        process = getattr(provisioner, "process", None)
        return None if process is None else process.poll()

    async def restart(self) -> None:
        """Restart now (state wiped); works whether the kernel is alive or dead."""
        await self.km.restart_kernel(now=True)
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
        try:
            await self.km.interrupt_kernel()
        except Exception as exc:  # a dead kernel cannot be interrupted; supervision handles it
            log.info("interrupt failed: %s", exc)

    async def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
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
