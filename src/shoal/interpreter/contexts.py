"""Contexts: one kernel each, one execution at a time, per-start setup redone after restarts."""

from __future__ import annotations

import asyncio
import logging
import uuid

from shoal.interpreter import envs, events
from shoal.interpreter.config import Settings
from shoal.interpreter.execute import Control, Emit, KernelDied, KernelStuck, execute
from shoal.interpreter.formatters import JS_SETUP, PYTHON_SETUP
from shoal.interpreter.kernels import Kernel, KernelCatalog, KernelUnavailable, normalise

log = logging.getLogger(__name__)


#: languages run by tslab, which drops requests for 200 ms after an error (execQueue.reset)
TSLAB_LANGUAGES = ("javascript", "typescript")
TSLAB_ERROR_QUIET = 0.25


class ContextNotFound(Exception):
    def __init__(self, context_id: str) -> None:
        super().__init__(f"Context {context_id} not found")


class Context:
    def __init__(self, context_id: str, language: str, cwd: str, kernel: Kernel,
                 settings: Settings, sandbox_envs: envs.SandboxEnvs) -> None:
        self.id = context_id
        self.language = language
        self.cwd = cwd
        self.kernel = kernel
        self._settings = settings
        self._sandbox_envs = sandbox_envs
        self._lock = asyncio.Lock()
        self._running: Control | None = None
        self._setup_generation = 0
        #: (kernel generation, sandbox env version) the sandbox variables were applied at,
        #: and what was applied
        self._env_applied_at: tuple[int, int] | None = None
        self._env_applied: dict[str, str] = {}
        #: tslab cancels whatever reaches it within 200 ms of a failed execution
        self._quiet_until = 0.0

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def setup(self) -> None:
        """Per-start setup: E2B formatters in Python kernels, result/error hooks in JS/TS."""
        if self._setup_generation == self.kernel.generation:
            return
        setup = {"python": PYTHON_SETUP, "javascript": JS_SETUP, "typescript": JS_SETUP}
        if self.language in setup:
            reply = await self.kernel.run_silent(setup[self.language])
            if reply.get("status") != "ok":
                log.warning("%s setup failed: %s", self.language, reply.get("evalue"))
        self._setup_generation = self.kernel.generation

    async def _apply_sandbox_envs(self, token: str | None) -> dict[str, str]:
        values = await self._sandbox_envs.get(token)
        if values is None:
            return {}
        at = (self.kernel.generation, self._sandbox_envs.version)
        if self._env_applied_at != at:
            if self._env_applied_at is not None and self._env_applied_at[0] == at[0]:
                # the same kernel, variables handed over since: drop the ones that went
                gone = [k for k in self._env_applied if k not in values]
                snippet = envs.unset_snippet(self.language, gone)
                if snippet:
                    await self.kernel.run_silent(snippet)
            snippet = envs.set_snippet(self.language, values)
            if snippet:
                await self.kernel.run_silent(snippet)
            self._env_applied_at, self._env_applied = at, dict(values)
        return values

    async def run(self, code: str, env_vars: dict[str, str] | None, token: str | None,
                  emit: Emit, control: Control) -> None:
        async with self._lock:
            self._running = control
            try:
                if not control.interrupted:  # abandoned while waiting for its turn
                    await self._run(code, env_vars or {}, token, emit, control)
            finally:
                self._running = None
                await emit(events.END_OF_EXECUTION)

    async def _run(self, code: str, env_vars: dict[str, str], token: str | None,
                   emit: Emit, control: Control) -> None:
        kernel = self.kernel
        try:
            await self._tslab_quiet()
            if not kernel.started:  # a default context's kernel starts at its first use
                await kernel.start()
            elif not await kernel.is_alive():
                await kernel.recover()
            await self.setup()
            sandbox = await self._apply_sandbox_envs(token)
            snippet = envs.set_snippet(self.language, env_vars)
            if snippet:
                await kernel.run_silent(snippet)
            failed = False

            async def watch(event: events.Event) -> None:
                nonlocal failed
                failed = failed or event.get("type") == "error"
                await emit(event)

            ended = False
            try:
                await execute(kernel, code, watch, control)
            except KernelDied:
                ended = True  # gone or going (exit()): nothing to reset, it restarts
                raise
            finally:
                if failed and self.language in TSLAB_LANGUAGES:
                    self._quiet_until = asyncio.get_running_loop().time() + TSLAB_ERROR_QUIET
                if env_vars and not ended and await kernel.is_alive():
                    await self._tslab_quiet()
                    for reset in envs.reset_snippets(self.language, env_vars, sandbox):
                        await kernel.run_silent(reset)
        except KernelDied as exc:
            await emit(events.error(
                "ContextRestarting",
                f"{exc} and was restarted; the context state is lost",
                "",
            ))
            await self._recover(emit)
        except KernelStuck:
            await emit(events.error(
                "ContextRestarting",
                "The kernel did not stop after an interrupt and was restarted; state is lost",
                "",
            ))
            await self._restart_quietly()
        except KernelUnavailable as exc:
            await emit(events.error("KernelUnavailable", str(exc), ""))

    async def _tslab_quiet(self) -> None:
        delay = self._quiet_until - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _recover(self, emit: Emit) -> None:
        try:
            await self.kernel.recover()
            await self.setup()
        except KernelUnavailable as exc:
            await emit(events.error("KernelUnavailable", str(exc), ""))

    async def _restart_quietly(self) -> None:
        await self.kernel.restart()
        await self.setup()

    async def interrupt(self, control: Control) -> None:
        """Stop one execution: skip it if still queued, else interrupt the kernel (which is
        restarted if it does not go idle within the grace period)."""
        if control.interrupted:
            return
        control.interrupt_deadline()
        if self._running is control:
            await self.kernel.interrupt()

    async def interrupt_running(self) -> None:
        if self._running is not None:
            await self.interrupt(self._running)

    async def restart(self) -> None:
        await self.interrupt_running()
        async with self._lock:
            await self._restart_quietly()

    async def shutdown(self) -> None:
        await self.interrupt_running()
        async with self._lock:
            await self.kernel.shutdown()


class Registry:
    def __init__(self, settings: Settings, catalog: KernelCatalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or KernelCatalog()
        self.sandbox_envs = envs.SandboxEnvs(settings.envd_url)
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}
        self._default_locks: dict[str, asyncio.Lock] = {}

    async def create(
        self, language: str | None = None, cwd: str | None = None, *, lazy: bool = False
    ) -> Context:
        """A new context; ``lazy``: its kernel starts at its first execution."""
        lang = normalise(language)
        kernel = Kernel(
            self.catalog, self.catalog.spec_for(lang), cwd or self.settings.cwd,
            start_timeout=self.settings.kernel_start_timeout,
            max_restarts=self.settings.max_restarts,
            restart_window=self.settings.restart_window,
        )
        ctx = Context(str(uuid.uuid4()), lang, kernel.cwd, kernel, self.settings,
                      self.sandbox_envs)
        if not lazy:
            await kernel.start()
            try:
                await ctx.setup()
            except Exception:
                await kernel.shutdown()
                raise
        self._contexts[ctx.id] = ctx
        return ctx

    async def default(self, language: str | None, *, lazy: bool = False) -> Context:
        """The default context of a language, created on first use."""
        lang = normalise(language)
        self.catalog.spec_for(lang)  # unknown language: fail before locking
        lock = self._default_locks.setdefault(lang, asyncio.Lock())
        async with lock:
            context_id = self._defaults.get(lang)
            if context_id is not None and context_id in self._contexts:
                return self._contexts[context_id]
            ctx = await self.create(lang, lazy=lazy)
            self._defaults[lang] = ctx.id
            return ctx

    def get(self, context_id: str) -> Context:
        try:
            return self._contexts[context_id]
        except KeyError:
            raise ContextNotFound(context_id) from None

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    async def remove(self, context_id: str) -> None:
        ctx = self.get(context_id)
        del self._contexts[context_id]
        await ctx.shutdown()

    async def close(self) -> None:
        contexts, self._contexts = list(self._contexts.values()), {}
        await asyncio.gather(*(c.shutdown() for c in contexts), return_exceptions=True)
