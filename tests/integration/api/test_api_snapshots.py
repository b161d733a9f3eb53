"""Snapshots, creates from snapshots and fork against the real API and store with fake
nodes (e2b-compat §2.1 rows 9-12, §2.4)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fakes.api_stack import Stack, StackFactory
from fakes.node_agent import FakeNode


async def _snapshot(s: Stack, sid: str, **body: Any) -> Any:
    return await s.http.post(f"/sandboxes/{sid}/snapshots", json=body, headers=s.auth)


async def _delete(s: Stack, ref: str) -> int:
    r = await s.http.delete(f"/templates/{quote(ref, safe='')}", headers=s.auth)
    return r.status_code


async def _fork(s: Stack, sid: str, **body: Any) -> Any:
    return await s.http.post(f"/sandboxes/{sid}/fork", json=body, headers=s.auth)


async def test_snapshot_keeps_the_source_running(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        r = await _snapshot(s, sid)
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"snapshotID", "names"} and body["names"] == []
        snap = body["snapshotID"]
        assert snap in node.snapshots and node.snapshots[snap].memory is True
        assert sid in node.sandboxes
        info = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert info["state"] == "running"
        rec = await s.store.get_snapshot(snap)
        assert rec is not None and rec.sandbox_id == sid and rec.node_id == "node1"
        assert rec.size_bytes == node.checkpoint_size

        r = await _snapshot(s, sid, memory=False)
        assert node.snapshots[r.json()["snapshotID"]].memory is False


async def test_named_snapshots_list_filters_and_pages(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        a = (await s.create())["sandboxID"]
        b = (await s.create())["sandboxID"]
        named = (await _snapshot(s, a, name="prepared")).json()
        assert named["names"] == ["prepared"]
        ids = [named["snapshotID"]]
        for _ in range(2):
            s.clock.advance(1)
            ids.append((await _snapshot(s, a)).json()["snapshotID"])
        s.clock.advance(1)
        ids.append((await _snapshot(s, b)).json()["snapshotID"])

        def listed(r: Any) -> list[str]:
            assert r.status_code == 200, r.text
            return [x["snapshotID"] for x in r.json()]

        all_ = await s.http.get("/snapshots", headers=s.auth)
        assert listed(all_) == ids[::-1]  # newest first
        assert "X-Next-Token" not in all_.headers
        by_sandbox = await s.http.get("/snapshots", params={"sandboxID": b}, headers=s.auth)
        assert listed(by_sandbox) == [ids[3]]
        for name in ("prepared", "prepared:default", ids[0]):
            r = await s.http.get("/snapshots", params={"name": name}, headers=s.auth)
            assert listed(r) == [ids[0]]
            assert r.json()[0]["names"] == ["prepared"]
        r = await s.http.get("/snapshots", params={"name": "prepared-nope"}, headers=s.auth)
        assert listed(r) == []

        pages: list[str] = []
        token = None
        while True:
            params: dict[str, Any] = {"limit": 3}
            if token:
                params["nextToken"] = token
            r = await s.http.get("/snapshots", params=params, headers=s.auth)
            pages.append(",".join(listed(r)))
            token = r.headers.get("X-Next-Token")
            if not token:
                break
        assert pages == [",".join(ids[::-1][:3]), ids[0]]
        bad = await s.http.get("/snapshots", params={"limit": 0}, headers=s.auth)
        assert bad.status_code == 400


async def test_a_name_moves_to_the_newest_snapshot(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        old = (await _snapshot(s, sid, name="same")).json()["snapshotID"]
        s.clock.advance(1)
        new = (await _snapshot(s, sid, name="same")).json()["snapshotID"]
        r = await s.http.get("/snapshots", params={"name": "same"}, headers=s.auth)
        assert [x["snapshotID"] for x in r.json()] == [new]
        everything = (await s.http.get("/snapshots", headers=s.auth)).json()
        assert {x["snapshotID"]: x["names"] for x in everything} == {new: ["same"], old: []}


async def test_bad_snapshot_names_and_states(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        assert (await _snapshot(s, sid, name="base")).status_code == 400
        assert (await _snapshot(s, sid, name="has space")).status_code == 400
        assert (await _snapshot(s, "nosuchsandbox")).status_code == 404
        await s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth)
        r = await _snapshot(s, sid)
        assert r.status_code == 409 and "paused" in r.json()["message"]


async def test_create_from_snapshot_goes_to_its_node(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    async with make_stack(nodes=[a, b]) as s:
        # Left to itself the scheduler spreads these creates over both nodes.
        src = await s.create(envVars={"FROM": "source"})
        holder = a if src["clientID"] == "nodea" else b
        other = b if holder is a else a
        for _ in range(3):
            await s.create()
        snap = (await _snapshot(s, src["sandboxID"], name="golden")).json()["snapshotID"]
        for ref in (snap, "golden", "golden:default"):
            r = await s.http.post(
                "/v2/sandboxes",
                json={"templateID": ref, "envVars": {"MINE": "1"}, "metadata": {}},
                headers=s.auth,
            )
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["clientID"] == holder.node_id
            assert body["templateID"] == snap
            req = holder.requests[body["sandboxID"]]
            assert req.snapshot_id == snap and req.template_id == "base"
            assert req.env_vars["FROM"] == "source" and req.env_vars["MINE"] == "1"
            assert req.env_vars["E2B_SANDBOX_ID"] == body["sandboxID"]
            assert req.access_token == body["envdAccessToken"]
            held = holder.snapshots[snap]
            assert (req.cpu_count, req.memory_mb, req.disk_mb) == (
                held.cpu_count,
                held.memory_mb,
                held.disk_mb,
            )
        assert holder.count("create_from", snap) == 3 and other.count("create_from") == 0


async def test_create_from_snapshot_whose_node_is_gone_fails(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        snap = (await _snapshot(s, sid)).json()["snapshotID"]
        del node.snapshots[snap]  # the node lost it
        r = await s.http.post("/v2/sandboxes", json={"templateID": snap}, headers=s.auth)
        assert r.status_code == 404
        node.draining = True
        s.registry.get("node1").info = node.info()  # type: ignore[union-attr]
        r = await s.http.post("/v2/sandboxes", json={"templateID": snap}, headers=s.auth)
        assert r.status_code == 503 and "draining" in r.json()["message"]


async def test_delete_snapshot_twice_and_other_templates(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        snap = (await _snapshot(s, sid)).json()["snapshotID"]
        named = (await _snapshot(s, sid, name="team/with:colon")).json()["snapshotID"]
        usage = (await s.store.node_usage())["node1"]
        assert usage.checkpoint_bytes == 2 * node.checkpoint_size

        assert await _delete(s, snap) == 204
        assert snap not in node.snapshots and node.count("delete_snapshot", snap) == 1
        assert await _delete(s, snap) == 404
        assert await _delete(s, "team/with:colon") == 204
        assert named not in node.snapshots
        assert (await s.store.node_usage())["node1"].checkpoint_bytes == 0
        assert await _delete(s, "base") == 403
        assert await _delete(s, "nosuchthing") == 404
        r = await s.http.post("/v2/sandboxes", json={"templateID": snap}, headers=s.auth)
        assert r.status_code == 404


async def test_snapshots_survive_their_sandbox_and_belong_to_their_team(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        snap = (await _snapshot(s, sid)).json()["snapshotID"]
        await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)
        listed = (await s.http.get("/snapshots", headers=s.auth)).json()
        assert [x["snapshotID"] for x in listed] == [snap]
        r = await s.http.post("/v2/sandboxes", json={"templateID": snap}, headers=s.auth)
        assert r.status_code == 201

        from shoal.api.auth import hash_key
        from shoal.store import ApiKey, Team

        await s.store.create_team(Team("t2", "other", s.clock.now))
        other_key = "e2b_" + "cd" * 20
        await s.store.add_api_key(ApiKey(hash_key(other_key), "t2", s.clock.now))
        theirs = {"X-API-KEY": other_key}
        assert (await s.http.get("/snapshots", headers=theirs)).json() == []
        r = await s.http.delete(f"/templates/{snap}", headers=theirs)
        assert r.status_code == 404
        r = await s.http.post("/v2/sandboxes", json={"templateID": snap}, headers=theirs)
        assert r.status_code == 404


async def test_fork_snapshots_once_and_starts_copies(make_stack: StackFactory) -> None:
    a, b = FakeNode("nodea"), FakeNode("nodeb")
    a.create_delay = b.create_delay = 0.05
    async with make_stack(nodes=[a, b]) as s:
        src = await s.create(metadata={"role": "source"}, autoPause=True)
        holder = a if src["clientID"] == "nodea" else b
        sid = src["sandboxID"]
        r = await _fork(s, sid, count=3, timeout=60)
        assert r.status_code == 201, r.text
        results = r.json()
        assert len(results) == 3 and all(set(x) == {"sandbox"} for x in results)
        forks = [x["sandbox"] for x in results]
        ids = {f["sandboxID"] for f in forks}
        assert len(ids) == 3 and sid not in ids
        assert {f["clientID"] for f in forks} == {holder.node_id}
        assert len({f["envdAccessToken"] for f in forks}) == 3
        assert holder.count("snapshot", sid) == 1
        assert holder.count("create_from") == 3
        assert holder.snapshots == {}  # the fork's image is gone once the copies run
        assert sid in holder.sandboxes
        for f in forks:
            info = (await s.http.get(f"/sandboxes/{f['sandboxID']}", headers=s.auth)).json()
            assert info["metadata"] == {"role": "source"}
            assert info["lifecycle"]["onTimeout"] == "pause"
            assert info["templateID"] == "base"
        # Forks are not snapshots anyone listed.
        assert (await s.http.get("/snapshots", headers=s.auth)).json() == []


async def test_fork_defaults_and_per_fork_errors(make_stack: StackFactory) -> None:
    node = FakeNode(max_sandboxes=3)
    async with make_stack(nodes=[node]) as s:
        sid = (await s.create())["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/fork", headers=s.auth)  # no body: one fork
        assert r.status_code == 201 and len(r.json()) == 1 and "sandbox" in r.json()[0]
        results = (await _fork(s, sid, count=3)).json()
        assert ["sandbox" in x for x in results].count(True) == 1
        errors = [x["error"] for x in results if "error" in x]
        assert len(errors) == 2 and all(e["code"] == 503 for e in errors)


async def test_fork_of_killed_paused_and_bad_counts(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        for count in (0, 21):
            assert (await _fork(s, sid, count=count)).status_code == 400
        await s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth)
        r = await _fork(s, sid)
        assert r.status_code == 409
        assert r.json()["message"] == (
            f"Sandbox '{sid}' is paused and cannot be forked; resume it first"
        )
        await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)
        r = await _fork(s, sid)
        assert r.status_code == 404
        assert (await _fork(s, "nosuchsandbox")).status_code == 404


async def test_snapshot_and_pause_of_one_sandbox_run_one_after_the_other(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.snapshot_delay = 0.2
        sid = (await s.create())["sandboxID"]
        snapping = asyncio.ensure_future(_snapshot(s, sid))
        async with asyncio.timeout(5):  # the snapshot is under way on the node
            while ("snapshot", sid) not in node.calls:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        paused = await s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth)
        snap = await snapping
        assert snap.status_code == 201 and paused.status_code == 204
        assert [op for op, i in node.calls if i == sid][-2:] == ["snapshot", "pause"]
