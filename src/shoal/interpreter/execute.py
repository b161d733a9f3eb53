"""One execution on a kernel → E2B stream events.

jupyter_client's algorithm: send ``execute_request``, keep the IOPub messages whose parent is
that request, stop at ``status: idle``, then take the matching ``execute_reply``. Waits are
sliced so a dead kernel and the (movable) deadline are noticed within ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from queue import Empty
from typing import Any

from shoal.interpreter import events
from shoal.interpreter.events import Event
from shoal.interpreter.formatters import TSLAB_ERROR, TSLAB_MAIN_RESULT
from shoal.interpreter.kernels import Kernel, describe_exit, oom_kills
from shoal.interpreter.mime import bundle_to_fields

Emit = Callable[[Event], Awaitable[None]]


STDERR_KEPT = 64
"""stderr chunks kept to describe an error the kernel leaves unnamed."""


class KernelDied(Exception):
    """The kernel ended during an execution; the message says how (``The kernel died (exit
    code 1)``), for the error the caller gets."""


class KernelStuck(Exception):
    """Interrupted, but the kernel did not go idle within the grace period."""


class Control:
    """Shared between an execution and whoever may stop it (disconnect, server deadline)."""

    def __init__(self, deadline: float | None, grace: float) -> None:
        self.deadline = deadline
        self.grace = grace
        self.interrupted = False

    def interrupt_deadline(self) -> None:
        self.interrupted = True
        self.deadline = asyncio.get_running_loop().time() + self.grace


async def execute(
    kernel: Kernel, code: str, emit: Emit, control: Control, *, poll: float = 0.5
) -> None:
    kc = kernel.kc
    oom_kills_before = oom_kills()
    msg_id = kc.execute(code, silent=False, store_history=True, allow_stdin=False)
    error_sent = False
    stderr: list[str] = []

    async def next_msg(get: Callable[..., Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        while True:
            try:
                msg = await get(timeout=poll)
            except Empty:
                msg = None
            if msg is not None:
                if msg.get("parent_header", {}).get("msg_id") == msg_id:
                    return msg
                continue
            if not await kernel.is_alive():
                how = describe_exit(kernel.exit_code(), oom_kills_before)
                raise KernelDied(f"The kernel died ({how})")
            await _check_deadline(kernel, control, emit)

    while True:
        msg = await next_msg(kc.get_iopub_msg)
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "status":
            if content.get("execution_state") == "idle":
                break
        elif kind == "execute_input":
            await emit(events.number_of_executions(int(content.get("execution_count") or 0)))
        elif kind == "stream":
            if content.get("name") == "stderr" and len(stderr) < STDERR_KEPT:
                stderr.append(content.get("text", ""))
            await emit(events.output(content.get("name", "stdout"), content.get("text", ""),
                                     msg["header"].get("date")))
        elif kind in ("display_data", "update_display_data"):
            data = dict(content.get("data", {}))
            if isinstance(data.get(TSLAB_ERROR), dict):  # a JS/TS error (formatters.JS_SETUP)
                err = data[TSLAB_ERROR]
                error_sent = True
                await emit(events.error(str(err.get("name", "Error")), str(err.get("value", "")),
                                        str(err.get("traceback", ""))))
            else:
                main = data.pop(TSLAB_MAIN_RESULT, None) is not None
                await emit(events.result(bundle_to_fields(data), is_main_result=main))
        elif kind == "execute_result":
            await emit(events.result(bundle_to_fields(content.get("data", {})),
                                     is_main_result=True))
        elif kind == "error":
            error_sent = True
            await emit(events.error(content.get("ename", "Error"), content.get("evalue", ""),
                                    content.get("traceback", [])))

    reply = (await next_msg(kc.get_shell_msg))["content"]
    status = reply.get("status")
    if status == "error" and not error_sent:
        name, value = reply.get("ename") or "", reply.get("evalue") or ""
        if not name and not value and stderr:
            # tslab reports TypeScript diagnostics ("1:7 - Type 'string' is not assignable
            # to type 'number'.") on stderr with a bare error reply: name them as ts-node
            # does, with the diagnostics as the message
            name, value = "TSError", "".join(stderr).strip()
        await emit(events.error(name or "Error", value, reply.get("traceback", [])))
    elif status in ("abort", "aborted"):
        await emit(events.error("ExecutionAborted", "Execution was aborted", ""))
    if _asked_to_exit(reply):
        # IPython's exit()/quit() end the kernel a moment after this reply: say so now
        # rather than let the next execution find a fresh kernel without its state
        raise KernelDied("The kernel exited (the code called exit())")


def _asked_to_exit(reply: dict[str, Any]) -> bool:
    return any(
        isinstance(p, dict) and p.get("source") == "ask_exit" and not p.get("keepkernel")
        for p in reply.get("payload") or []
    )


async def _check_deadline(kernel: Kernel, control: Control, emit: Emit) -> None:
    if control.deadline is None or asyncio.get_running_loop().time() < control.deadline:
        return
    if control.interrupted:
        raise KernelStuck
    await emit(events.error("TimeoutError", "Execution timed out; the kernel was interrupted", ""))
    control.interrupt_deadline()
    await kernel.interrupt()
