"""Snapshots and fork in E2B's terms: ``create_snapshot``, ``list_snapshots``,
``delete_snapshot`` (``DELETE /templates/{id}``) and ``fork``.

A snapshot is a checkpoint of a running sandbox (which keeps running) held by the node
that took it; images are node-local, so every sandbox created from a snapshot is placed
on that node (the scheduler's ``only_node``), with the snapshotted sandbox's cpu, memory
and disk. Its id is what ``POST /v2/sandboxes`` takes as ``templateID``; a name, when
given, works there too and in the list filter. A fork is a snapshot nobody sees: taken
once, ``count`` sandboxes started from it at once, then deleted, each fork succeeding or
failing on its own.

    >>> snapshots = SnapshotService(sandbox_service)
    >>> info = await snapshots.create(team_id, "sbx1", name="prepared", memory=None)
    >>> results = await snapshots.fork(team_id, "sbx1", timeout_s=None, count=3)
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from shoal import errors
from shoal.api import query as q
from shoal.api.lifecycle import cannot
from shoal.api.service import Launch, SandboxService
from shoal.client.node import NodeClient, NodeUnreachable
from shoal.store.base import (
    Cursor,
    SandboxRecord,
    SandboxState,
    SnapshotCursor,
    SnapshotQuery,
    SnapshotRecord,
)
from shoal.wire.api.models import Sandbox, SnapshotInfo
from shoal.wire.node.models import CheckpointStatus, SnapshotRequest

log = logging.getLogger(__name__)

MAX_FORKS = 20
"""The SDKs' limit on ``fork(count)``."""

DEFAULT_TAG = ":default"
"""E2B appends a tag to snapshot names (``name:default``); Shoal's names have none."""


def new_snapshot_id() -> str:
    """``snap-`` and 16 hex digits: safe in a path segment and in a node's file names."""
    return "snap-" + secrets.token_hex(8)


def _untagged(ref: str) -> str:
    return ref.removesuffix(DEFAULT_TAG) if ref != DEFAULT_TAG else ref


def snapshot_info(rec: SnapshotRecord) -> SnapshotInfo:
    return SnapshotInfo(snapshotID=rec.snapshot_id, names=[rec.name] if rec.name else [])


class SnapshotService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes
        self.store = sandboxes.store
        self.registry = sandboxes.registry
        self.lifecycle = sandboxes.lifecycle
        self.clock = sandboxes.clock

    def _check_name(self, name: str | None) -> str | None:
        if name is None:
            return None
        name = _untagged(name.strip())
        if not name or any(c.isspace() or not c.isprintable() for c in name):
            raise errors.InvalidArgument(f"invalid snapshot name {name!r}")
        if name in self.registry.templates():
            # Creates look templates up before snapshot names, so it could never be used.
            raise errors.InvalidArgument(f"snapshot name {name!r} is a template's name")
        return name

    async def _take(
        self, team_id: str, sandbox_id: str, snapshot_id: str, *, memory: bool, verb: str
    ) -> tuple[SandboxRecord, CheckpointStatus]:
        """Checkpoint a running sandbox (under its lock); it keeps running."""
        await self.sandboxes.visible(team_id, sandbox_id)

        async def op() -> tuple[SandboxRecord, CheckpointStatus]:
            rec = await self.sandboxes.current(team_id, sandbox_id, verb)
            if rec.state is SandboxState.PAUSED and verb == "forked":
                raise errors.InvalidStateTransition(
                    f"Sandbox '{sandbox_id}' is paused and cannot be forked; resume it first"
                )
            if rec.state is not SandboxState.RUNNING:
                raise cannot(verb, rec)
            client = self._client(rec.node_id)
            request = SnapshotRequest(snapshot_id=snapshot_id, memory=memory)
            try:
                status = await client.snapshot_sandbox(sandbox_id, request)
            except errors.NotFound:
                # Its node does not have it (it just died): as for any gone sandbox.
                raise errors.SandboxNotFound(sandbox_id) from None
            return rec, status

        return await self.lifecycle.exclusive(sandbox_id, op)

    def _client(self, node_id: str) -> NodeClient:
        client = self.registry.client(node_id)
        if client is None:
            raise NodeUnreachable(f"node {node_id} is not known")
        return client

    def _record(
        self,
        team_id: str,
        snapshot_id: str,
        rec: SandboxRecord,
        status: CheckpointStatus,
        name: str | None,
    ) -> SnapshotRecord:
        return SnapshotRecord(
            snapshot_id=snapshot_id,
            team_id=team_id,
            name=name,
            sandbox_id=rec.sandbox_id,
            node_id=rec.node_id,
            template_id=status.template_id,
            memory=status.memory,
            size_bytes=status.size_bytes,
            created_at=self.clock(),
            cpu_count=status.cpu_count,
            memory_mb=status.memory_mb,
            disk_mb=status.disk_mb,
            env_vars=dict(rec.env_vars),
        )

    async def _drop_on_node(self, node_id: str, snapshot_id: str) -> None:
        client = self.registry.client(node_id)
        if client is None:
            return
        try:
            await client.delete_snapshot(snapshot_id)
        except errors.ShoalError as exc:
            log.warning("could not delete snapshot %s on %s: %s", snapshot_id, node_id, exc)

    # create, list, delete

    async def create(
        self, team_id: str, sandbox_id: str, *, name: str | None, memory: bool | None
    ) -> SnapshotInfo:
        """Snapshot a running sandbox (``memory=False``: its disk only); it keeps running."""
        name = self._check_name(name)
        snapshot_id = new_snapshot_id()
        rec, status = await self._take(
            team_id, sandbox_id, snapshot_id, memory=memory is not False, verb="snapshotted"
        )
        record = self._record(team_id, snapshot_id, rec, status, name)
        try:
            await self.store.insert_snapshot(record)
        except BaseException:
            await asyncio.shield(self._drop_on_node(rec.node_id, snapshot_id))
            raise
        log.info("snapshot %s of %s (%d bytes)", record.snapshot_id, sandbox_id, status.size_bytes)
        return snapshot_info(record)

    async def list_snapshots(
        self,
        team_id: str,
        *,
        sandbox_id: str | None,
        name: str | None,
        limit: int | None,
        next_token: str | None,
    ) -> tuple[list[SnapshotInfo], str]:
        """One page, newest first, and the token of the next ('' on the last page)."""
        size = q.parse_limit(limit)
        after = None
        if next_token:
            cursor = q.decode_token(next_token)
            after = SnapshotCursor(created_at=cursor.started_at, snapshot_id=cursor.sandbox_id)
        rows = await self.store.list_snapshots(
            SnapshotQuery(
                team_id=team_id,
                sandbox_id=sandbox_id or None,
                ref=_untagged(name) if name else None,
                after=after,
                limit=size + 1,
            )
        )
        page = rows[:size]
        token = ""
        if len(rows) > size:
            last = page[-1]
            token = q.encode_token(Cursor(started_at=last.created_at, sandbox_id=last.snapshot_id))
        return [snapshot_info(r) for r in page], token

    async def delete(self, team_id: str, ref: str) -> None:
        """Delete the team's snapshot ``ref`` (id or name) and free its disk on the node.

        ``NotFound`` for anything else, a deleted snapshot included; a node that cannot
        be reached keeps the snapshot (503), so the delete can be retried."""
        found = await self.store.find_snapshot(team_id, ref)
        if found is None and ref.endswith(DEFAULT_TAG):
            found = await self.store.find_snapshot(team_id, _untagged(ref))
        if found is None:
            if ref in self.registry.templates():
                raise errors.Forbidden(f"template '{ref}' is built in and cannot be deleted")
            raise errors.NotFound(f"template '{ref}' not found")
        client = self.registry.client(found.node_id)
        if client is not None:
            await client.delete_snapshot(found.snapshot_id)  # False: the node had lost it
        if not await self.store.delete_snapshot(found.snapshot_id):
            raise errors.NotFound(f"template '{ref}' not found")  # a concurrent delete won
        log.info("snapshot %s deleted (%d bytes freed)", found.snapshot_id, found.size_bytes)

    # fork

    async def fork(
        self, team_id: str, sandbox_id: str, *, timeout_s: int | None, count: int | None
    ) -> list[Sandbox | errors.ShoalError]:
        """Snapshot a running sandbox once (memory kept) and start ``count`` copies of it
        at once; one result per copy, a sandbox or the error that stopped it. The copies
        inherit the source's metadata, variables and lifecycle settings."""
        count = 1 if count is None else count
        if not 1 <= count <= MAX_FORKS:
            raise errors.InvalidArgument(f"count must be between 1 and {MAX_FORKS} (got {count})")
        seconds = self.sandboxes.check_timeout(timeout_s)
        snapshot_id = new_snapshot_id()
        rec, status = await self._take(team_id, sandbox_id, snapshot_id, memory=True, verb="forked")
        snapshot = self._record(team_id, snapshot_id, rec, status, None)
        launch = Launch(
            template_id=rec.template_id,
            alias=rec.alias,
            node_template=snapshot.template_id,
            timeout=seconds,
            metadata=dict(rec.metadata),
            env_vars=dict(rec.env_vars),
            auto_pause=rec.auto_pause,
            auto_pause_memory=rec.auto_pause_memory,
            auto_resume=rec.auto_resume,
            allow_internet_access=rec.allow_internet_access,
            snapshot=snapshot,
        )
        try:
            started = await asyncio.gather(
                *(self.sandboxes.launch(team_id, launch) for _ in range(count)),
                return_exceptions=True,
            )
        finally:
            # Every copy is independent of the image once started: it can go.
            await asyncio.shield(self._drop_on_node(rec.node_id, snapshot.snapshot_id))
        results: list[Sandbox | errors.ShoalError] = []
        for item in started:
            if isinstance(item, errors.ShoalError):
                results.append(item)
            elif isinstance(item, BaseException):
                log.error("fork of %s failed", sandbox_id, exc_info=item)
                results.append(errors.ShoalError("internal server error"))
            else:
                results.append(self.sandboxes.sandbox_of(item))
        return results


__all__ = ["MAX_FORKS", "SnapshotService", "new_snapshot_id", "snapshot_info"]
