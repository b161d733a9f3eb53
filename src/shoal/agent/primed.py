"""Primed sandboxes: warm containers whose template start command already answers.

A template with a ``start_cmd`` (``code-interpreter-v1``: the interpreter server and its
Jupyter kernels) takes a second or two to become ready; a create that waited for it every
time could not answer fast. So the node keeps, per (template, limits), a few containers that
are started, have their init connected and their start command running and ready, each in
its own sandbox (nothing is ever shared: one primed sandbox becomes exactly one sandbox).

The start command of a primed sandbox runs before anyone knows whose sandbox it will be, so
it starts with no sandbox-level env vars (``SHOAL_INTERPRETER_SANDBOX_ENV={}``). A create
that claims one renames it to the sandbox id (``ContainerRuntime.claim(started=True)``),
then hands the sandbox's variables over to the running service (``PUT /shoal/env`` on its
ready port, inside the sandbox's network namespace) before answering, and records the full
spec so a restart of the service starts it with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shoal.agent.sandbox import SandboxService, ServiceSpec, status_of
from shoal.errors import RuntimeFailure
from shoal.runtime.container import Container, ContainerLimits, ContainerRuntime, WarmContainer
from shoal.runtime.pool import Pool
from shoal.template.store import Template

log = logging.getLogger(__name__)

SANDBOX_ENV_VAR = "SHOAL_INTERPRETER_SANDBOX_ENV"
HANDOVER_PATH = "/shoal/env"
HANDOVER_TIMEOUT = 5.0
REFILL_DELAY = 0.3
"""A primed sandbox costs a second or two of CPU: let the one just handed out answer its
first calls before starting the next."""

PrimedKey = tuple[str, Path, ContainerLimits]
"""(template id, template rootfs, limits): a rebuilt template is another key."""

Connect = Callable[[Container], Awaitable[Any]]
ServiceFor = Callable[[Template, Container, Any, dict[str, str], str], SandboxService]


@dataclass
class PrimedSandbox:
    warm: WarmContainer
    container: Container
    """Attached under the pool id; replaced by the claimed container."""
    spawner: Any
    service: SandboxService


class PrimedPool(Pool[PrimedKey, PrimedSandbox]):
    def __init__(
        self,
        size: int,
        runtime: ContainerRuntime,
        resolve: Callable[[str], Template],
        connect: Connect,
        service_for: ServiceFor,
        ready_timeout: float,
    ) -> None:
        super().__init__(
            size, self._prime, self._discard_primed, refill_delay=REFILL_DELAY,
            name="primed pool",
        )
        self.runtime = runtime
        self._resolve = resolve
        self._connect = connect
        self._service_for = service_for
        self._ready_timeout = ready_timeout

    async def _prime(self, key: PrimedKey) -> PrimedSandbox:
        template_id, rootfs, limits = key
        template = self._resolve(template_id)
        if template.rootfs != rootfs:
            raise RuntimeFailure(f"template {template_id} changed; not priming the old one")
        warm = await self.runtime.create_warm(rootfs, limits)
        container: Container | None = None
        spawner: Any = None
        service: SandboxService | None = None
        try:
            container = self.runtime.start_warm(warm)
            spawner = await self._connect(container)
            service = self._service_for(template, container, spawner, {}, warm.container_id)
            service.start()
            if not await service.wait_ready(container.netns_path, self._ready_timeout):
                raise RuntimeFailure(
                    f"primed {warm.container_id}: the start command did not become ready: "
                    f"{service.output_tail(500)}"
                )
        except BaseException:
            await _release(self.runtime, warm, container, spawner, service)
            raise
        return PrimedSandbox(warm, container, spawner, service)

    async def _discard_primed(self, primed: PrimedSandbox) -> None:
        await _release(self.runtime, primed.warm, primed.container, primed.spawner,
                       primed.service)


async def _release(
    runtime: ContainerRuntime,
    warm: WarmContainer,
    container: Container | None,
    spawner: Any,
    service: SandboxService | None,
) -> None:
    if service is not None:
        await service.close()
    if spawner is not None:
        with contextlib.suppress(Exception):
            await spawner.aclose()
    if container is not None:
        container.close()
    await runtime.destroy(warm.container_id)


def with_sandbox_env(spec: ServiceSpec, env_vars: dict[str, str]) -> ServiceSpec:
    """The spec a primed service would have had, had it been started for this sandbox."""
    env = {**spec.env, **env_vars, SANDBOX_ENV_VAR: json.dumps(env_vars)}
    return replace(spec, env=env)


async def hand_over(netns_path: str, port: int, env_vars: dict[str, str]) -> None:
    """Give a primed service its sandbox's variables (raises RuntimeFailure if it does not
    take them)."""
    body = json.dumps(env_vars).encode()
    request = (
        f"PUT {HANDOVER_PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        async with asyncio.timeout(HANDOVER_TIMEOUT):
            status = await status_of(netns_path, port, request)
    except (OSError, TimeoutError) as exc:
        raise RuntimeFailure(f"could not hand the sandbox's env vars over: {exc}") from exc
    if status not in (b"200", b"204"):
        raise RuntimeFailure(f"the start command refused the sandbox's env vars: {status!r}")
