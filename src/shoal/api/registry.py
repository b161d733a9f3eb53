"""The control plane's view of its nodes: last heartbeat, capacity, client, reservations.

Nodes enter through heartbeats (pushed by stand-alone agents, or pulled by the
liveness loop from agents the API already has a client for, such as the in-process
agent of ``shoal serve``) and through the store at start-up. Health is not a flag
kept here: the scheduler judges it from ``last_seen`` and the ``now`` it is given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shoal.client.node import NodeClient
from shoal.scheduler import NodeView, Snapshot
from shoal.store.base import Node, NodeUsage
from shoal.wire.node.models import NodeInfo, NodeResources

log = logging.getLogger(__name__)

ClientFactory = Callable[[NodeInfo], NodeClient | None]


def http_client_factory(token: str | None) -> ClientFactory:
    """Clients for agents reachable over HTTP; other addresses (``inproc://``) get none."""

    def make(info: NodeInfo) -> NodeClient | None:
        if info.address.startswith(("http://", "https://")):
            return NodeClient(info.address, token=token)
        return None

    return make


@dataclass
class _Inflight:
    cpu: int = 0
    memory_mb: int = 0
    sandboxes: int = 0


@dataclass
class NodeEntry:
    info: NodeInfo
    last_seen: datetime
    client: NodeClient | None
    last_push: datetime | None = None
    """When the agent last pushed a heartbeat itself (None: only pulled or loaded)."""
    inflight: _Inflight = field(default_factory=_Inflight)


class NodeRegistry:
    """Live nodes and their clients, keyed by node id.

    >>> registry = NodeRegistry(client_factory=http_client_factory(token))
    >>> registry.add_local(info, NodeClient.for_app(agent_app), now)   # shoal serve
    """

    def __init__(self, *, client_factory: ClientFactory | None = None) -> None:
        self._factory = client_factory or http_client_factory(None)
        self._nodes: dict[str, NodeEntry] = {}

    def add_local(self, info: NodeInfo, client: NodeClient, now: datetime) -> None:
        """Register a node whose client the caller built (e.g. an in-process agent)."""
        self._nodes[info.node_id] = NodeEntry(info=info, last_seen=now, client=client)

    def load(self, stored: list[Node]) -> None:
        """Nodes remembered by the store; they count as healthy only once they heartbeat."""
        for node in stored:
            if node.node_id in self._nodes:
                continue
            info = NodeInfo(
                node_id=node.node_id,
                address=node.address,
                region=node.region,
                cost=node.cost,
                draining=node.draining,
                capacity=NodeResources(
                    cpu_count=node.cpu_count, memory_mb=node.memory_mb, disk_mb=node.disk_mb
                ),
                allocated=NodeResources(cpu_count=0, memory_mb=0, disk_mb=0),
                templates=list(node.templates),
            )
            self._nodes[node.node_id] = NodeEntry(
                info=info, last_seen=node.last_seen, client=self._factory(info)
            )

    async def observe(self, info: NodeInfo, now: datetime, *, pushed: bool) -> NodeEntry:
        """Record a heartbeat (or a pulled ``info``) from a node."""
        entry = self._nodes.get(info.node_id)
        if entry is None:
            entry = NodeEntry(info=info, last_seen=now, client=self._factory(info))
            self._nodes[info.node_id] = entry
        elif entry.info.address != info.address and entry.client is not None:
            replacement = self._factory(info)
            if replacement is not None:
                old, entry.client = entry.client, replacement
                await old.aclose()
        elif entry.client is None:
            entry.client = self._factory(info)
        entry.info = info
        entry.last_seen = now
        if pushed:
            entry.last_push = now
        return entry

    def get(self, node_id: str) -> NodeEntry | None:
        return self._nodes.get(node_id)

    def client(self, node_id: str) -> NodeClient | None:
        entry = self._nodes.get(node_id)
        return entry.client if entry else None

    def entries(self) -> list[NodeEntry]:
        return list(self._nodes.values())

    def templates(self) -> set[str]:
        """Every template some known node (healthy or not) reports."""
        return {t for e in self._nodes.values() for t in e.info.templates}

    def snapshot(self, usage: Mapping[str, NodeUsage]) -> Snapshot:
        """Immutable input for the scheduler: the store's committed usage per node, or
        what the node itself reports when that is higher, plus in-flight creates."""
        views = []
        for node_id, e in sorted(self._nodes.items()):
            if e.client is None:
                continue
            used = usage.get(node_id, NodeUsage())
            views.append(
                NodeView(
                    node_id=node_id,
                    last_seen=e.last_seen,
                    cpu_capacity=e.info.capacity.cpu_count,
                    memory_capacity_mb=e.info.capacity.memory_mb,
                    cpu_allocated=max(used.cpu_count, e.info.allocated.cpu_count),
                    memory_allocated_mb=max(used.memory_mb, e.info.allocated.memory_mb),
                    sandboxes=max(used.sandboxes, e.info.allocated.sandboxes),
                    inflight_cpu=e.inflight.cpu,
                    inflight_memory_mb=e.inflight.memory_mb,
                    inflight_sandboxes=e.inflight.sandboxes,
                    templates=frozenset(e.info.templates),
                    draining=e.info.draining,
                    region=e.info.region,
                    cost=e.info.cost,
                )
            )
        return tuple(views)

    @contextlib.contextmanager
    def reserve(self, node_id: str, cpu: int, memory_mb: int) -> Iterator[None]:
        """Count a create in progress against ``node_id`` until the block exits."""
        entry = self._nodes.get(node_id)
        if entry is None:
            yield
            return
        slot = entry.inflight
        slot.cpu += cpu
        slot.memory_mb += memory_mb
        slot.sandboxes += 1
        try:
            yield
        finally:
            slot.cpu -= cpu
            slot.memory_mb -= memory_mb
            slot.sandboxes -= 1

    async def aclose(self) -> None:
        for entry in self._nodes.values():
            if entry.client is not None:
                with contextlib.suppress(Exception):
                    await entry.client.aclose()


def node_row(info: NodeInfo, now: datetime) -> Node:
    return Node(
        node_id=info.node_id,
        address=info.address,
        last_seen=now,
        region=info.region,
        cost=info.cost,
        draining=info.draining,
        cpu_count=info.capacity.cpu_count,
        memory_mb=info.capacity.memory_mb,
        disk_mb=info.capacity.disk_mb,
        templates=tuple(info.templates),
    )


__all__ = ["ClientFactory", "NodeEntry", "NodeRegistry", "http_client_factory", "node_row"]
