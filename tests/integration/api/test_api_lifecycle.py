"""Reaper, pending kills, restart, heartbeat reconciliation, placement across nodes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fakes.api_stack import FakeClock, Stack, StackFactory
from fakes.node_agent import FakeNode

from shoal.store import SandboxState


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    """Poll: the fake node and the store have no events to wait on."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def reaches_state(s: Stack, sid: str, state: SandboxState, within: float = 3.0) -> None:
    """The node records the kill before the API records the outcome: poll the store."""
    async with asyncio.timeout(within):
        while True:
            rec = await s.store.get_sandbox(sid)
            assert rec is not None
            if rec.state is state:
                return
            await asyncio.sleep(0.02)


async def _status(s: Stack, sid: str) -> int:
    return (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).status_code


async def test_reaper_kills_an_expired_sandbox(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create(timeout=10))["sandboxID"]
        s.clock.advance(9)
        await asyncio.sleep(0.2)
        assert sid in node.sandboxes and await _status(s, sid) == 200
        s.clock.advance(2)
        await eventually(lambda: sid in node.killed)
        assert await _status(s, sid) == 404
        await reaches_state(s, sid, SandboxState.KILLED)


async def test_set_timeout_zero_ends_the_sandbox_promptly(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create(timeout=300))["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/timeout", json={"timeout": 0}, headers=s.auth)
        assert r.status_code == 204
        assert await _status(s, sid) == 404
        await eventually(lambda: sid in node.killed, within=1.0)
        assert (await s.http.get("/v2/sandboxes", headers=s.auth)).json() == []


async def test_kill_while_node_unreachable_is_retried(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        node.down = True
        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 204
        assert await _status(s, sid) == 404
        rec = await s.store.get_sandbox(sid)
        assert rec is not None and rec.state is SandboxState.KILLING
        assert sid in node.sandboxes
        node.down = False
        s.clock.advance(3)  # past the reaper's retry backoff
        await eventually(lambda: sid in node.killed)
        await eventually(lambda: sid not in node.sandboxes)


async def test_restart_with_same_sqlite_file_keeps_sandboxes(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    node = FakeNode()
    clock = FakeClock()
    db = tmp_path / "state" / "shoal.db"
    async with make_stack(nodes=[node], db=db, clock=clock) as s:
        sid = (await s.create(metadata={"k": "v"}))["sandboxID"]
        key = s.key
    async with make_stack(nodes=[node], db=db, clock=clock) as s2:
        assert s2.key == key
        r = await s2.http.get("/v2/sandboxes", headers=s2.auth)
        assert [(x["sandboxID"], x["metadata"]) for x in r.json()] == [(sid, {"k": "v"})]
        assert await _status(s2, sid) == 200


async def test_api_key_from_settings_is_accepted(make_stack: StackFactory) -> None:
    key = "e2b_" + "ab" * 20
    async with make_stack(api_key=key) as s:
        assert s.key == key
        assert (await s.http.get("/v2/sandboxes", headers={"X-API-KEY": key})).status_code == 200


async def _heartbeat(s: Stack, node: FakeNode, token: str = "node-secret") -> dict[str, object]:
    body = {
        "node": node.info().model_dump(mode="json"),
        "sandboxes": [x.model_dump(mode="json") for x in node.sandboxes.values()],
    }
    r = await s.http.post(
        f"/internal/v1/nodes/{node.node_id}/heartbeat",
        json=body,
        headers={"X-Shoal-Node-Token": token},
    )
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


async def test_heartbeat_marks_vanished_sandboxes_killed(make_stack: StackFactory) -> None:
    async with make_stack(heartbeat_interval=60) as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        del node.sandboxes[sid]  # it died on the node
        await _heartbeat(s, node)
        assert await _status(s, sid) == 200  # too young: the heartbeat may predate the create
        s.clock.advance(6)
        await _heartbeat(s, node)
        assert await _status(s, sid) == 404


async def test_heartbeat_kills_orphans(make_stack: StackFactory) -> None:
    async with make_stack(heartbeat_interval=60) as s:
        node = s.nodes["node1"]
        keep = (await s.create())["sandboxID"]
        node.add_orphan("orphan0000000000000")
        result = await _heartbeat(s, node)
        assert result == {"orphans": ["orphan0000000000000"]}
        assert node.killed == ["orphan0000000000000"]
        assert keep in node.sandboxes and await _status(s, keep) == 200


async def test_liveness_pulls_and_reconciles_nodes_that_do_not_push(
    make_stack: StackFactory,
) -> None:
    async with make_stack(heartbeat_interval=0.05) as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        node.add_orphan("orphan1111111111111")
        await eventually(lambda: "orphan1111111111111" in node.killed)
        del node.sandboxes[sid]
        s.clock.advance(6)
        async with asyncio.timeout(3):
            while await _status(s, sid) != 404:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def test_heartbeat_auth_and_identity(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = FakeNode("node9")
        body = {"node": node.info().model_dump(mode="json"), "sandboxes": []}
        url = "/internal/v1/nodes/node9/heartbeat"
        assert (await s.http.post(url, json=body)).status_code == 401
        r = await s.http.post(url, json=body, headers={"X-Shoal-Node-Token": "wrong"})
        assert r.status_code == 401 and r.json()["code"] == 401
        r = await s.http.post(url, json={}, headers={"X-Shoal-Node-Token": "wrong"})
        assert r.status_code == 401
        r = await s.http.post(
            "/internal/v1/nodes/other/heartbeat",
            json=body,
            headers={"X-Shoal-Node-Token": "node-secret"},
        )
        assert r.status_code == 400
        await _heartbeat(s, node)
        entry = s.registry.get("node9")
        assert entry is not None and entry.info.address == node.address
        assert [n.node_id for n in await s.store.list_nodes()].count("node9") == 1


async def test_placement_spreads_across_two_nodes(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    async with make_stack(nodes=[a, b]) as s:
        placed = Counter([(await s.create())["clientID"] for _ in range(6)])
        assert placed == {"nodea": 3, "nodeb": 3}
        assert len(a.sandboxes) == 3 and len(b.sandboxes) == 3


async def test_concurrent_creates_spread(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    a.create_delay = b.create_delay = 0.05
    async with make_stack(nodes=[a, b]) as s:
        results = await asyncio.gather(*(s.create() for _ in range(10)))
        placed = Counter(r["clientID"] for r in results)
        assert placed == {"nodea": 5, "nodeb": 5}


async def test_cost_strategy_prefers_cheap_node(make_stack: StackFactory) -> None:
    cheap, dear = FakeNode("cheap", cost=1.0), FakeNode("dear", cost=3.0)
    async with make_stack(nodes=[dear, cheap], placement="cost") as s:
        placed = Counter([(await s.create())["clientID"] for _ in range(4)])
        assert placed == {"cheap": 4}


async def test_capacity_exhaustion_is_503_with_reasons(make_stack: StackFactory) -> None:
    small = FakeNode("small", cpu_count=1)  # 1 cpu x4 overcommit = two 2-cpu sandboxes
    drained = FakeNode("drained")
    drained.draining = True
    async with make_stack(nodes=[small, drained], cpu_overcommit=4.0) as s:
        await s.create()
        await s.create()
        r = await s.http.post("/v2/sandboxes", json={"templateID": "base"}, headers=s.auth)
        assert r.status_code == 503
        body = r.json()
        assert body["code"] == 503
        assert body["error_code"] == "sandbox_capacity_unavailable"
        assert "cpu (1)" in body["message"] and "draining (1)" in body["message"]


async def test_refusing_node_is_skipped_then_all_refuse(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    a.refuse = True
    async with make_stack(nodes=[a, b]) as s:
        for _ in range(3):
            assert (await s.create())["clientID"] == "nodeb"
        b.refuse = True
        r = await s.http.post("/v2/sandboxes", json={"templateID": "base"}, headers=s.auth)
        assert r.status_code == 503
        assert "already tried (2)" in r.json()["message"]
        assert "is full" in r.json()["message"]
        listed = (await s.http.get("/v2/sandboxes", headers=s.auth)).json()
        assert len(listed) == 3


async def test_unreachable_node_is_skipped(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    a.down = True
    async with make_stack(nodes=[a, b]) as s:
        assert {(await s.create())["clientID"] for _ in range(2)} == {"nodeb"}


async def test_template_only_on_one_node(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea", templates=("base",)), FakeNode("nodeb", templates=("ci",))
    async with make_stack(nodes=[a, b]) as s:
        assert {(await s.create(templateID="ci"))["clientID"] for _ in range(3)} == {"nodeb"}


async def test_stale_node_takes_no_sandboxes(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    async with make_stack(nodes=[a, b], heartbeat_interval=0.05) as s:
        # nodea heartbeats, nodeb goes silent past node_dead_after
        b.down = True
        await asyncio.sleep(0.1)
        s.clock.advance(s.settings.node_dead_after + 1)
        await _heartbeat(s, a)
        assert {(await s.create())["clientID"] for _ in range(3)} == {"nodea"}
        a.down = True
        await asyncio.sleep(0.1)
        s.clock.advance(s.settings.node_dead_after + 1)
        r = await s.http.post("/v2/sandboxes", json={"templateID": "base"}, headers=s.auth)
        assert r.status_code == 503 and "unhealthy (2)" in r.json()["message"]


async def test_create_left_unfinished_by_a_dead_api_is_cleaned_up(
    make_stack: StackFactory,
) -> None:
    async with make_stack(heartbeat_interval=60) as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        # as if the API had crashed between asking the node and recording success
        await s.store.update_sandbox(sid, state=SandboxState.CREATING)
        await _heartbeat(s, node)
        rec = await s.store.get_sandbox(sid)
        assert rec is not None and rec.state is SandboxState.CREATING
        s.clock.advance(11 * 60)
        await _heartbeat(s, node)
        await eventually(lambda: sid in node.killed)
        await reaches_state(s, sid, SandboxState.KILLED)
