"""Supervision inside the server, driven in-process on real kernels: the server-side deadline,
a kernel that ignores interrupts, and the restart budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.interpreter.config import Settings
from shoal.interpreter.contexts import Context, Registry
from shoal.interpreter.events import Event
from shoal.interpreter.execute import Control


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    settings = Settings(cwd=str(tmp_path), envd_url="http://127.0.0.1:9",
                        execution_timeout=1.5, interrupt_grace=1.0, max_restarts=1,
                        default_languages=())
    reg = Registry(settings)
    yield reg
    await reg.close()


async def run(reg: Registry, ctx: Context, code: str) -> list[Event]:
    out: list[Event] = []

    async def emit(event: Event) -> None:
        out.append(event)

    limit = reg.settings.execution_timeout
    loop = asyncio.get_running_loop()
    control = Control(None if limit is None else loop.time() + limit, reg.settings.interrupt_grace)
    await ctx.run(code, None, None, emit, control)
    assert out[-1] == {"type": "end_of_execution"}
    return out


def errors(events: list[Event]) -> list[str]:
    return [e["name"] for e in events if e["type"] == "error"]


def text(events: list[Event]) -> str | None:
    return next((e.get("text") for e in events if e.get("is_main_result")), None)


async def test_server_deadline_interrupts(registry: Registry) -> None:
    ctx = await registry.create("python")
    await run(registry, ctx, "kept = 'yes'")
    events = await run(registry, ctx, "import time\ntime.sleep(30)")
    assert errors(events)[0] == "TimeoutError"
    assert "KeyboardInterrupt" in errors(events)  # the kernel was interrupted, not killed
    assert text(await run(registry, ctx, "kept")) == "yes"


async def test_kernel_ignoring_interrupts_is_restarted(registry: Registry) -> None:
    ctx = await registry.create("python")
    await run(registry, ctx, "kept = 'yes'")
    events = await run(
        registry, ctx,
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
    )
    assert errors(events) == ["TimeoutError", "ContextRestarting"]
    assert errors(await run(registry, ctx, "kept")) == ["NameError"]
    assert text(await run(registry, ctx, "1 + 1")) == "2"


async def test_restart_budget(registry: Registry) -> None:
    ctx = await registry.create("python")
    first = await run(registry, ctx, "import os; os._exit(1)")
    assert errors(first) == ["ContextRestarting"]
    second = await run(registry, ctx, "import os; os._exit(1)")
    assert errors(second) == ["ContextRestarting", "KernelUnavailable"]
    third = await run(registry, ctx, "1 + 1")
    assert errors(third) == ["KernelUnavailable"]
    other = await registry.create("python")  # other contexts are unaffected
    assert text(await run(registry, other, "1 + 1")) == "2"
