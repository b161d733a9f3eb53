"""The sandbox service: what the REST routes do, in E2B's terms, without HTTP.

Create runs the placement loop around the pure scheduler: snapshot the nodes, pick
one, reserve its capacity, ask its agent; if the agent refuses for capacity (or is
unreachable, or lacks the template after all) exclude it and pick again; when no node
is left, fail with the scheduler's reasons. A ``templateID`` that names one of the
team's snapshots (by id, else by name, after the templates) creates from the snapshot,
on the node that holds it, with the snapshotted sandbox's resources.

Pause, connect-resume and kill go through :class:`shoal.api.lifecycle.Lifecycle`, one
operation per sandbox at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shoal import errors
from shoal.api import query as q
from shoal.api.lifecycle import Lifecycle
from shoal.api.registry import NodeRegistry
from shoal.client.node import NodeUnreachable
from shoal.config import Settings
from shoal.envd.sandbox import ENVD_VERSION
from shoal.ids import new_access_token, new_sandbox_id
from shoal.scheduler import (
    NoPlacement,
    PlacementRequest,
    Reason,
    SchedulerConfig,
    Strategy,
    place,
)
from shoal.store.base import (
    TRANSITIONAL_STATES,
    VISIBLE_STATES,
    Cursor,
    SandboxQuery,
    SandboxRecord,
    SandboxState,
    SnapshotRecord,
    Store,
)
from shoal.wire.api.models import (
    ListedSandbox,
    NewSandbox,
    Sandbox,
    SandboxDetail,
    SandboxLifecycle,
)
from shoal.wire.node.models import DEFAULT_CPU_COUNT, DEFAULT_MEMORY_MB, CreateSandboxRequest

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_DISK_MB = 1024

MAX_MAP_KEYS = 1000
MAX_MAP_BYTES = 64 * 1024
"""Per map (metadata, envVars): keys and values together, UTF-8."""

RESERVED_ENV = ("E2B_SANDBOX", "E2B_SANDBOX_ID", "E2B_TEMPLATE_ID")
_ENV_NAME = re.compile(r"^[^=\x00]+$")

LEGACY_RESUME_TIMEOUT = 15
"""Seconds a legacy ``POST /sandboxes/{id}/resume`` without ``timeout`` runs (E2B's)."""

_SHOWN_PAUSED = frozenset({SandboxState.PAUSED, SandboxState.PAUSING, SandboxState.RESUMING})
"""Shown as ``paused``: a pause or resume in flight is not running yet (502 at the proxy)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def scheduler_config(settings: Settings) -> SchedulerConfig:
    try:
        strategy = Strategy(settings.placement)
    except ValueError as exc:
        raise errors.InvalidArgument(
            f"unknown placement strategy {settings.placement!r}: use latency, cost or balanced"
        ) from exc
    return SchedulerConfig(
        strategy=strategy,
        node_dead_after=settings.node_dead_after,
        max_sandboxes_per_node=settings.max_sandboxes_per_node,
        cpu_overcommit=settings.cpu_overcommit,
        memory_overcommit=settings.memory_overcommit,
    )


def _check_map(name: str, values: Mapping[str, str]) -> None:
    if len(values) > MAX_MAP_KEYS:
        raise errors.InvalidArgument(f"{name} has {len(values)} keys; at most {MAX_MAP_KEYS}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > MAX_MAP_BYTES:
        raise errors.InvalidArgument(
            f"{name} is {size} bytes; keys and values together may be at most {MAX_MAP_BYTES}"
        )


@dataclass(frozen=True)
class Launch:
    """What one create asks a node for: from a template, or from a snapshot."""

    template_id: str
    """Recorded and shown as the sandbox's template (a snapshot's id for a copy)."""
    alias: str | None
    node_template: str
    """The template the node starts it from (a snapshot's source template)."""
    timeout: int
    metadata: dict[str, str]
    env_vars: dict[str, str]
    auto_pause: bool = False
    auto_pause_memory: bool | None = None
    auto_resume: bool = False
    allow_internet_access: bool | None = None
    snapshot: SnapshotRecord | None = None


@dataclass(frozen=True)
class ListFilters:
    states: Iterable[str] | None = None
    metadata: str | None = None
    started_after: str | None = None
    template: str | None = None
    order: str | None = None
    limit: int | None = None
    next_token: str | None = None


class SandboxService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: NodeRegistry,
        *,
        clock: Clock = utcnow,
        on_expiry: Callable[[], None] | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.clock = clock
        self.config = scheduler_config(settings)
        self._on_expiry = on_expiry or (lambda: None)
        self.lifecycle = lifecycle or Lifecycle(settings, store, registry, clock)

    # helpers

    def _timeout(self, value: int | None, *, name: str = "timeout") -> int:
        if value is None:
            return self.settings.default_timeout
        if value < 0:
            raise errors.InvalidArgument(f"{name} must not be negative (got {value})")
        if value > self.settings.max_timeout:
            raise errors.InvalidArgument(
                f"{name} {value}s is above the maximum of {self.settings.max_timeout}s"
            )
        return value

    def check_timeout(self, value: int | None) -> int:
        """A requested timeout in seconds (None: the default), or ``InvalidArgument``."""
        return self._timeout(value)

    def _shows(self, rec: SandboxRecord | None, team_id: str) -> bool:
        """Whether the team sees the sandbox (killed, expired or foreign: no). One past its
        end that pauses on timeout stays visible until the reaper has paused it."""
        return (
            rec is not None
            and rec.team_id == team_id
            and rec.state in VISIBLE_STATES
            and not (
                rec.state is SandboxState.RUNNING
                and rec.end_at <= self.clock()
                and not rec.auto_pause
            )
        )

    async def _visible(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """The sandbox as its team sees it; killed, expired or foreign → 404."""
        rec = await self.store.get_sandbox(sandbox_id)
        if rec is None or not self._shows(rec, team_id):
            raise errors.SandboxNotFound(sandbox_id)
        return rec

    async def current(self, team_id: str, sandbox_id: str, verb: str) -> SandboxRecord:
        """``_visible`` under the sandbox's lock, a left-over transition settled."""
        rec = await self.lifecycle.current(sandbox_id, verb)
        if rec is None or not self._shows(rec, team_id):
            raise errors.SandboxNotFound(sandbox_id)
        return rec

    async def visible(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """The sandbox's record if its team may see it (``SandboxNotFound`` otherwise); for
        the services beside this one (metrics)."""
        return await self._visible(team_id, sandbox_id)

    def _sandbox(self, rec: SandboxRecord) -> Sandbox:
        return Sandbox(
            templateID=rec.template_id,
            sandboxID=rec.sandbox_id,
            clientID=rec.client_id,
            envdVersion=ENVD_VERSION,
            alias=rec.alias,
            envdAccessToken=rec.access_token,
            trafficAccessToken=None,
            domain=self.settings.domain,
        )

    def sandbox_of(self, rec: SandboxRecord) -> Sandbox:
        """The ``Sandbox`` body (create, connect, fork) of a record."""
        return self._sandbox(rec)

    @staticmethod
    def _listed(rec: SandboxRecord) -> ListedSandbox:
        return ListedSandbox(
            templateID=rec.template_id,
            sandboxID=rec.sandbox_id,
            clientID=rec.client_id,
            startedAt=rec.started_at,
            endAt=rec.end_at,
            cpuCount=rec.cpu_count,
            memoryMB=rec.memory_mb,
            diskSizeMB=rec.disk_mb,
            state="paused" if rec.state in _SHOWN_PAUSED else "running",
            envdVersion=ENVD_VERSION,
            alias=rec.alias,
            metadata=dict(rec.metadata),
        )

    # operations

    async def create(self, team_id: str, body: NewSandbox) -> Sandbox:
        timeout = self._timeout(body.timeout)
        metadata = dict(body.metadata or {})
        user_env = dict(body.env_vars or {})
        _check_map("metadata", metadata)
        _check_map("envVars", user_env)
        for name, value in user_env.items():
            if not _ENV_NAME.match(name) or "\x00" in value:
                raise errors.InvalidArgument(
                    f"invalid environment variable name {name!r}: no '=' or NUL allowed"
                )
        template = body.template_id
        if not self.registry.entries():
            raise errors.CapacityExhausted("no nodes are registered")
        snapshot = await self._snapshot_for(team_id, template)
        if snapshot is None and template not in self.registry.templates():
            raise errors.NotFound(f"template '{template}' not found")
        launch = Launch(
            template_id=snapshot.snapshot_id if snapshot else template,
            alias=(snapshot.name if snapshot else template),
            node_template=snapshot.template_id if snapshot else template,
            timeout=timeout,
            metadata=metadata,
            # A copy inherits the snapshotted sandbox's variables; its own add to them.
            env_vars={**snapshot.env_vars, **user_env} if snapshot else user_env,
            auto_pause=body.auto_pause,
            auto_pause_memory=body.auto_pause_memory,
            auto_resume=bool(body.auto_resume and body.auto_resume.enabled),
            allow_internet_access=body.allow_internet_access,
            snapshot=snapshot,
        )
        return self._sandbox(await self.launch(team_id, launch))

    async def _snapshot_for(self, team_id: str, template: str) -> SnapshotRecord | None:
        """The team's snapshot ``template`` names: its id, else (when no template of
        that name exists) its name, with or without the ``:default`` tag E2B appends."""
        found = await self.store.find_snapshot(team_id, template)
        if found is not None and found.snapshot_id == template:
            return found
        if template in self.registry.templates():
            return None
        if found is None and template.endswith(":default"):
            found = await self.store.find_snapshot(team_id, template.removesuffix(":default"))
        return found

    async def launch(self, team_id: str, launch: Launch) -> SandboxRecord:
        """Place and start one sandbox; its record once it runs (E2B's 201)."""
        snapshot = launch.snapshot
        sandbox_id = new_sandbox_id()
        env = {
            **launch.env_vars,
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox_id,
            "E2B_TEMPLATE_ID": launch.template_id,
        }
        request = CreateSandboxRequest(
            sandbox_id=sandbox_id,
            template_id=launch.node_template,
            # None: the template's own (E2B takes them from the template); the node decides
            # and reports what it applied. A copy of a snapshot gets the snapshot's.
            cpu_count=snapshot.cpu_count if snapshot else None,
            memory_mb=snapshot.memory_mb if snapshot else None,
            disk_mb=snapshot.disk_mb if snapshot else DEFAULT_DISK_MB,
            access_token=new_access_token(),
            env_vars=env,
            hostname=sandbox_id,
            snapshot_id=snapshot.snapshot_id if snapshot else None,
        )
        # Placement counts the request's limits, or the defaults while the node decides.
        cpu_count = request.cpu_count or DEFAULT_CPU_COUNT
        memory_mb = request.memory_mb or DEFAULT_MEMORY_MB
        excluded: set[str] = set()
        last_error: errors.ShoalError | None = None
        while True:
            usage = await self.store.node_usage()
            now = self.clock()
            result = place(
                self.registry.snapshot(usage),
                PlacementRequest(
                    template_id=launch.node_template,
                    cpu_count=cpu_count,
                    memory_mb=memory_mb,
                    now=now,
                    exclude=frozenset(excluded),
                    only_node=snapshot.node_id if snapshot else None,
                ),
                self.config,
            )
            if isinstance(result, NoPlacement):
                raise self._no_placement(launch.template_id, result, last_error)
            node_id = result.node_id
            client = self.registry.client(node_id)
            if client is None:  # pragma: no cover - snapshot only holds nodes with clients
                excluded.add(node_id)
                continue
            record = SandboxRecord(
                sandbox_id=sandbox_id,
                team_id=team_id,
                template_id=launch.template_id,
                alias=launch.alias,
                node_id=node_id,
                state=SandboxState.CREATING,
                client_id=node_id,
                started_at=now,
                end_at=now + timedelta(seconds=launch.timeout),
                cpu_count=cpu_count,
                memory_mb=memory_mb,
                disk_mb=request.disk_mb,
                access_token=request.access_token,
                metadata=launch.metadata,
                env_vars=launch.env_vars,
                auto_pause=launch.auto_pause,
                allow_internet_access=launch.allow_internet_access,
                auto_pause_memory=launch.auto_pause_memory,
                auto_resume=launch.auto_resume,
                timeout_s=launch.timeout,
            )
            with self.registry.reserve(node_id, cpu_count, memory_mb):
                await self.store.insert_sandbox(record)
                try:
                    status = await client.create_sandbox(request)
                except (errors.CapacityExhausted, NodeUnreachable, errors.NotFound) as exc:
                    log.info("node %s refused sandbox %s: %s", node_id, sandbox_id, exc.message)
                    await self.store.delete_sandbox(sandbox_id)
                    if snapshot is not None and isinstance(exc, errors.NotFound):
                        raise  # the snapshot's node no longer has it; no other node does
                    excluded.add(node_id)
                    last_error = exc
                    continue
                except errors.ShoalError:
                    await self.store.delete_sandbox(sandbox_id)
                    raise
                except BaseException:
                    # Cancelled or crashed mid-create: the node may have started it, so
                    # leave a pending kill for the reaper instead of forgetting it.
                    await asyncio.shield(
                        self.store.update_sandbox(sandbox_id, state=SandboxState.KILLING)
                    )
                    raise
                started = self.clock()
                await self.store.update_sandbox(
                    sandbox_id,
                    state=SandboxState.RUNNING,
                    started_at=started,
                    end_at=started + timedelta(seconds=launch.timeout),
                    # What the node applied (the template's defaults, when not asked).
                    cpu_count=status.cpu_count,
                    memory_mb=status.memory_mb,
                    expect_states=frozenset({SandboxState.CREATING}),
                )
            return record

    def _no_placement(
        self, template: str, result: NoPlacement, last_error: errors.ShoalError | None
    ) -> errors.ShoalError:
        if result.only_template_missing:
            return errors.NotFound(f"template '{template}' not found")
        message = result.describe()
        if last_error is not None:
            message += f"; last refusal: {last_error.message}"
        refused = any(r is Reason.EXCLUDED for r in result.reasons.values())
        error_code = (
            "sandbox_capacity_unavailable"
            if refused or self._capacity(result)
            else ("sandbox_no_compatible_node")
        )
        return errors.CapacityExhausted(message, error_code=error_code)

    @staticmethod
    def _capacity(result: NoPlacement) -> bool:
        return any(
            r in (Reason.CPU, Reason.MEMORY, Reason.SANDBOX_COUNT) for r in result.reasons.values()
        )

    async def connect(
        self, team_id: str, sandbox_id: str, timeout_s: int | None, *, memory: bool | None = None
    ) -> tuple[Sandbox, bool]:
        """Connect, resuming a paused sandbox: ``(sandbox, resumed)``; E2B answers 201 for
        a resume, 200 otherwise. ``memory=False`` boots a paused one from its disk.

        A running sandbox's end only ever moves later; a resumed one runs ``timeout_s``
        (default: the server's) from now. A connect during a pause waits for it and
        resumes; connects during a resume wait for it and find the sandbox running."""
        seconds = self._timeout(timeout_s)
        rec = await self._visible(team_id, sandbox_id)
        if rec.state is SandboxState.RUNNING and not self.lifecycle.busy(sandbox_id):
            return self._sandbox(await self._extend(rec, seconds)), False

        async def op() -> tuple[SandboxRecord, bool]:
            now = await self.current(team_id, sandbox_id, "resumed")
            if now.state is SandboxState.RUNNING:
                return await self._extend(now, seconds), False
            return await self.lifecycle.resume(now, timeout_s=seconds, memory=memory), True

        resumed_rec, resumed = await self.lifecycle.exclusive(sandbox_id, op)
        return self._sandbox(resumed_rec), resumed

    async def _extend(self, rec: SandboxRecord, seconds: int) -> SandboxRecord:
        wanted = self.clock() + timedelta(seconds=seconds)
        if wanted > rec.end_at:  # connect only ever extends a running sandbox
            await self.store.update_sandbox(rec.sandbox_id, end_at=wanted)
        return rec

    async def resume(
        self, team_id: str, sandbox_id: str, timeout_s: int | None, auto_pause: bool | None
    ) -> Sandbox:
        """The legacy ``POST /sandboxes/{id}/resume``: paused → running (201); a running
        sandbox is a conflict, as in E2B. ``auto_pause`` replaces the create-time choice."""
        seconds = self._timeout(timeout_s if timeout_s is not None else LEGACY_RESUME_TIMEOUT)
        await self._visible(team_id, sandbox_id)

        async def op() -> SandboxRecord:
            rec = await self.current(team_id, sandbox_id, "resumed")
            if rec.state is SandboxState.RUNNING:
                raise errors.InvalidStateTransition(f"Sandbox {sandbox_id} is already running")
            return await self.lifecycle.resume(rec, timeout_s=seconds, auto_pause=auto_pause)

        return self._sandbox(await self.lifecycle.exclusive(sandbox_id, op))

    async def pause(self, team_id: str, sandbox_id: str, *, memory: bool | None) -> None:
        """Pause (``memory=False``: keep the disk only). A paused sandbox → 409, E2B's
        "already paused" (the SDK's ``pause()`` returns False on it)."""
        await self._visible(team_id, sandbox_id)

        async def op() -> None:
            rec = await self.current(team_id, sandbox_id, "paused")
            if rec.state is SandboxState.PAUSED:
                raise errors.InvalidStateTransition(
                    f"Error pausing sandbox - sandbox '{sandbox_id}' is already paused"
                )
            await self.lifecycle.pause(rec, memory=memory is not False)

        await self.lifecycle.exclusive(sandbox_id, op)

    async def set_timeout(self, team_id: str, sandbox_id: str, timeout_s: int) -> None:
        rec = await self._visible(team_id, sandbox_id)
        seconds = self._timeout(timeout_s)
        end_at = self.clock() + timedelta(seconds=seconds)
        await self.store.update_sandbox(
            rec.sandbox_id, end_at=end_at, expect_states=frozenset(VISIBLE_STATES)
        )
        if seconds == 0:
            self._on_expiry()

    async def refresh(self, team_id: str, sandbox_id: str, duration: int | None) -> None:
        rec = await self._visible(team_id, sandbox_id)
        seconds = self._timeout(duration, name="duration")
        wanted = self.clock() + timedelta(seconds=seconds)
        if wanted > rec.end_at:
            await self.store.update_sandbox(rec.sandbox_id, end_at=wanted)

    async def kill(self, team_id: str, sandbox_id: str) -> None:
        """Kill a running or paused sandbox (its node removes the checkpoint). A kill
        during a pause or resume waits for it to finish, then kills what it left."""
        await self._visible(team_id, sandbox_id)

        async def op() -> None:
            # No settling: a transition left behind (unknown outcome) is killed as it
            # stands, since the node's kill removes the sandbox or its checkpoint alike.
            rec = await self.store.get_sandbox(sandbox_id)
            if rec is None or not self._shows(rec, team_id):
                raise errors.SandboxNotFound(sandbox_id)
            claimed = await self.store.update_sandbox(
                sandbox_id, state=SandboxState.KILLING, expect_states=frozenset({rec.state})
            )
            if not claimed:
                raise errors.SandboxNotFound(sandbox_id)
            await kill_on_node(self.store, self.registry, rec, self.clock)

        await self.lifecycle.exclusive(sandbox_id, op)

    async def get(self, team_id: str, sandbox_id: str) -> SandboxDetail:
        rec = await self._visible(team_id, sandbox_id)
        listed = self._listed(rec)
        return SandboxDetail(
            **listed.model_dump(by_alias=True),
            envdAccessToken=rec.access_token,
            allowInternetAccess=rec.allow_internet_access,
            domain=self.settings.domain,
            lifecycle=SandboxLifecycle(
                autoResume=rec.auto_resume, onTimeout="pause" if rec.auto_pause else "kill"
            ),
            # What the latest pause kept; not while it is still being taken.
            pauseMode=rec.pause_mode
            if rec.state in (SandboxState.PAUSED, SandboxState.RESUMING)
            else None,
        )

    async def list_sandboxes(
        self, team_id: str, filters: ListFilters
    ) -> tuple[list[ListedSandbox], str]:
        """One page and the token of the next ('' on the last page)."""
        limit = q.parse_limit(filters.limit)
        order = q.parse_order(filters.order)
        states = q.parse_states(filters.states)
        if SandboxState.PAUSED in states:
            states |= TRANSITIONAL_STATES
        query = SandboxQuery(
            team_id=team_id,
            states=states,
            metadata=q.parse_metadata_filter(filters.metadata),
            started_after=(
                q.parse_timestamp(filters.started_after, "startedAfter")
                if filters.started_after
                else None
            ),
            template=filters.template or None,
            alive_at=self.clock(),
            order="asc" if order == "asc" else "desc",
            after=q.decode_token(filters.next_token) if filters.next_token else None,
            limit=limit + 1,
        )
        rows = await self.store.list_sandboxes(query)
        page = rows[:limit]
        token = ""
        if len(rows) > limit:
            last = page[-1]
            token = q.encode_token(Cursor(started_at=last.started_at, sandbox_id=last.sandbox_id))
        return [self._listed(r) for r in page], token

    async def list_running(self, team_id: str, metadata: str | None) -> list[ListedSandbox]:
        """v1 list: running sandboxes only, metadata filter, no paging."""
        query = SandboxQuery(
            team_id=team_id,
            states=frozenset({SandboxState.RUNNING}),
            metadata=q.parse_metadata_filter(metadata),
            alive_at=self.clock(),
        )
        return [self._listed(r) for r in await self.store.list_sandboxes(query)]


async def kill_on_node(
    store: Store, registry: NodeRegistry, rec: SandboxRecord, clock: Clock
) -> bool:
    """Kill a sandbox already marked ``killing``; True once it is ``killed``.

    If its node is unreachable the row stays ``killing`` and the reaper retries. If its
    node is unknown, the row is closed now: should that node come back with the sandbox,
    heartbeat reconciliation kills it as an orphan.
    """
    client = registry.client(rec.node_id)
    if client is not None:
        try:
            async with asyncio.timeout(10):
                await client.kill_sandbox(rec.sandbox_id)
        except (NodeUnreachable, TimeoutError) as exc:
            log.info("kill of %s pending, node %s: %s", rec.sandbox_id, rec.node_id, exc)
            return False
        except errors.ShoalError as exc:
            log.warning("node %s failed to kill %s: %s", rec.node_id, rec.sandbox_id, exc.message)
            return False
    await store.update_sandbox(rec.sandbox_id, state=SandboxState.KILLED, killed_at=clock())
    return True


__all__ = [
    "DEFAULT_CPU_COUNT",
    "DEFAULT_DISK_MB",
    "DEFAULT_MEMORY_MB",
    "LEGACY_RESUME_TIMEOUT",
    "MAX_MAP_BYTES",
    "MAX_MAP_KEYS",
    "RESERVED_ENV",
    "Clock",
    "Launch",
    "ListFilters",
    "SandboxService",
    "kill_on_node",
    "scheduler_config",
    "utcnow",
]
