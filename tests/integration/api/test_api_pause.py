"""Pause, resume through connect, kill of a paused sandbox, and the races between them,
against the real API and store with a fake node (e2b-compat §2.1 rows 2, 4, 8, 31, 32)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fakes.api_stack import FakeClock, Stack, StackFactory
from fakes.node_agent import FakeNode

from shoal.api.reconcile import STALE_TRANSITION
from shoal.store import SandboxState


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def _pause(s: Stack, sid: str, body: dict[str, Any] | None = None) -> Any:
    return await s.http.post(f"/sandboxes/{sid}/pause", json=body or {}, headers=s.auth)


async def _connect(s: Stack, sid: str, **body: Any) -> Any:
    return await s.http.post(f"/v2/sandboxes/{sid}/connect", json=body, headers=s.auth)


async def _info(s: Stack, sid: str) -> Any:
    return await s.http.get(f"/sandboxes/{sid}", headers=s.auth)


async def _state(s: Stack, sid: str) -> SandboxState:
    rec = await s.store.get_sandbox(sid)
    assert rec is not None
    return rec.state


async def test_pause_then_info_list_and_second_pause(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create(metadata={"k": "v"}))["sandboxID"]
        r = await _pause(s, sid)
        assert r.status_code == 204, r.text
        assert sid in node.paused and sid not in node.sandboxes
        assert node.paused[sid].memory is True

        info = (await _info(s, sid)).json()
        assert info["state"] == "paused"
        assert info["pauseMode"] == "full"
        assert info["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}

        listed = (await s.http.get("/v2/sandboxes", headers=s.auth)).json()
        assert [(x["sandboxID"], x["state"]) for x in listed] == [(sid, "paused")]
        running = await s.http.get("/v2/sandboxes", params={"state": "running"}, headers=s.auth)
        assert running.json() == []
        v1 = await s.http.get("/sandboxes", headers=s.auth)
        assert v1.json() == []

        again = await _pause(s, sid)
        assert again.status_code == 409
        assert again.json() == {
            "code": 409,
            "message": f"Error pausing sandbox - sandbox '{sid}' is already paused",
        }
        assert node.count("pause", sid) == 1
        rec = await s.store.get_sandbox(sid)
        assert rec is not None and rec.checkpoint_bytes == node.checkpoint_size


async def test_pause_without_body_and_filesystem_only(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        a = (await s.create())["sandboxID"]
        b = (await s.create())["sandboxID"]
        assert (await s.http.post(f"/sandboxes/{a}/pause", headers=s.auth)).status_code == 204
        r = await _pause(s, b, {"memory": False, "requireHealthyGuest": True})
        assert r.status_code == 204
        assert node.paused[a].memory is True and node.paused[b].memory is False
        assert (await _info(s, b)).json()["pauseMode"] == "filesystem"


async def test_connect_resumes_with_the_same_id_and_token(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        created = await s.create(envVars={"A": "1"})
        sid = created["sandboxID"]
        assert (await _pause(s, sid)).status_code == 204
        s.clock.advance(3600)  # a paused sandbox does not expire

        r = await _connect(s, sid, timeout=120)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["sandboxID"] == sid
        assert body["envdAccessToken"] == created["envdAccessToken"]
        assert node.count("resume", sid) == 1 and sid in node.sandboxes
        sent = node.resume_requests[-1]
        assert sent.memory is True
        assert sent.access_token == created["envdAccessToken"]
        assert sent.env_vars["A"] == "1" and sent.env_vars["E2B_SANDBOX_ID"] == sid

        info = (await _info(s, sid)).json()
        assert info["state"] == "running"
        assert "pauseMode" not in info
        assert _ts(info["endAt"]) - _ts(info["startedAt"]) == timedelta(seconds=120)
        assert _ts(info["startedAt"]) == s.clock.now

        # Running now: a plain connect (200), which only ever extends.
        r = await _connect(s, sid, timeout=10)
        assert r.status_code == 200
        assert node.count("resume", sid) == 1


async def test_connect_memory_false_reboots_and_v1_connect_resumes(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        r = await _connect(s, sid, memory=False)
        assert r.status_code == 201
        assert node.resume_requests[-1].memory is False
        info = (await _info(s, sid)).json()
        # no timeout given: the server's default
        assert _ts(info["endAt"]) - _ts(info["startedAt"]) == timedelta(seconds=300)

        await _pause(s, sid)
        r = await s.http.post(f"/sandboxes/{sid}/connect", json={"timeout": 30}, headers=s.auth)
        assert r.status_code == 201 and r.json()["sandboxID"] == sid
        r = await s.http.post(f"/sandboxes/{sid}/connect", json={"timeout": 30}, headers=s.auth)
        assert r.status_code == 200


async def test_legacy_resume(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/resume", json={"timeout": 15}, headers=s.auth)
        assert r.status_code == 409
        assert r.json()["message"] == f"Sandbox {sid} is already running"

        await _pause(s, sid)
        r = await s.http.post(
            f"/sandboxes/{sid}/resume", json={"timeout": 40, "autoPause": True}, headers=s.auth
        )
        assert r.status_code == 201 and r.json()["sandboxID"] == sid
        info = (await _info(s, sid)).json()
        assert info["state"] == "running"
        assert info["lifecycle"]["onTimeout"] == "pause"
        assert _ts(info["endAt"]) - _ts(info["startedAt"]) == timedelta(seconds=40)


async def test_unknown_killed_and_foreign_sandboxes_are_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        assert (await _pause(s, "nosuchsandbox")).status_code == 404
        assert (await _connect(s, "nosuchsandbox")).status_code == 404
        sid = (await s.create())["sandboxID"]
        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 204
        assert (await _pause(s, sid)).status_code == 404
        r = await s.http.post(f"/sandboxes/{sid}/resume", json={}, headers=s.auth)
        assert r.status_code == 404


async def test_kill_of_a_paused_sandbox_removes_its_checkpoint(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 204
        assert sid not in node.paused and node.count("kill", sid) == 1
        assert await _state(s, sid) is SandboxState.KILLED
        assert (await _info(s, sid)).status_code == 404
        assert (await _connect(s, sid)).status_code == 404
        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 404


async def test_two_pauses_at_once_pause_once(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.pause_delay = 0.2
        sid = (await s.create())["sandboxID"]
        first, second = await asyncio.gather(_pause(s, sid), _pause(s, sid))
        assert sorted([first.status_code, second.status_code]) == [204, 409]
        assert node.count("pause", sid) == 1
        assert await _state(s, sid) is SandboxState.PAUSED


async def test_a_pause_in_flight_shows_paused_without_mode(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.pause_delay = 0.3
        sid = (await s.create())["sandboxID"]
        pausing = asyncio.create_task(_pause(s, sid))
        while node.count("pause", sid) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert await _state(s, sid) is SandboxState.PAUSING
        info = (await _info(s, sid)).json()
        assert info["state"] == "paused" and "pauseMode" not in info
        assert (await pausing).status_code == 204
        assert (await _info(s, sid)).json()["pauseMode"] == "full"


async def test_kill_during_a_pause_waits_and_kills_the_paused_sandbox(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.pause_delay = 0.2
        sid = (await s.create())["sandboxID"]
        pausing = asyncio.create_task(_pause(s, sid))
        while node.count("pause", sid) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        killed = await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)
        assert killed.status_code == 204
        assert (await pausing).status_code == 204
        assert node.calls[-2:] == [("pause", sid), ("kill", sid)]
        assert sid not in node.paused and sid not in node.sandboxes
        assert await _state(s, sid) is SandboxState.KILLED


async def test_connect_during_a_pause_waits_then_resumes(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.pause_delay = 0.2
        sid = (await s.create())["sandboxID"]
        pausing = asyncio.create_task(_pause(s, sid))
        while node.count("pause", sid) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        r = await _connect(s, sid)
        assert (await pausing).status_code == 204
        assert r.status_code == 201
        assert await _state(s, sid) is SandboxState.RUNNING and sid in node.sandboxes


async def test_many_connects_resume_once(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.resume_delay = 0.1
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        answers = await asyncio.gather(*(_connect(s, sid) for _ in range(20)))
        assert Counter(r.status_code for r in answers) == {201: 1, 200: 19}
        assert {r.json()["sandboxID"] for r in answers} == {sid}
        assert node.count("resume", sid) == 1


async def test_failed_pause_leaves_it_running(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.fail_pause = True
        sid = (await s.create())["sandboxID"]
        r = await _pause(s, sid)
        assert r.status_code == 500 and "criu said no" in r.json()["message"]
        assert await _state(s, sid) is SandboxState.RUNNING and sid in node.sandboxes
        assert (await _info(s, sid)).json()["state"] == "running"
        node.fail_pause = False
        assert (await _pause(s, sid)).status_code == 204


async def test_failed_resume_keeps_it_paused_and_can_be_retried(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        node.fail_resume = True
        r = await _connect(s, sid)
        assert r.status_code == 500
        assert await _state(s, sid) is SandboxState.PAUSED and sid in node.paused
        assert (await _info(s, sid)).json()["pauseMode"] == "full"
        node.fail_resume = False
        assert (await _connect(s, sid)).status_code == 201


async def test_checkpoint_lost_on_the_node_closes_the_sandbox(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        del node.paused[sid]
        assert (await _connect(s, sid)).status_code == 404
        assert await _state(s, sid) is SandboxState.KILLED


async def test_unreachable_node_during_pause_is_settled_from_its_list(
    make_stack: StackFactory,
) -> None:
    async with make_stack(heartbeat_interval=60) as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        node.down = True
        assert (await _pause(s, sid)).status_code == 503
        assert await _state(s, sid) is SandboxState.PAUSING  # nobody knows yet
        node.down = False
        # The next operation asks the node: it still runs the sandbox.
        r = await _pause(s, sid)
        assert r.status_code == 204
        assert await _state(s, sid) is SandboxState.PAUSED


async def test_auto_pause_on_timeout_and_paused_sandboxes_never_expire(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create(timeout=10, autoPause=True))["sandboxID"]
        fs = (await s.create(timeout=10, autoPause=True, autoPauseMemory=False))["sandboxID"]
        info = (await _info(s, sid)).json()
        assert info["lifecycle"] == {"autoResume": False, "onTimeout": "pause"}
        s.clock.advance(11)
        async with asyncio.timeout(3):
            while sid not in node.paused or fs not in node.paused:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert node.paused[sid].memory is True and node.paused[fs].memory is False
        async with asyncio.timeout(3):
            while await _state(s, fs) is not SandboxState.PAUSED:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        s.clock.advance(24 * 3600)
        await asyncio.sleep(0.2)  # a few reaper sweeps
        assert (await _info(s, sid)).json()["state"] == "paused"
        assert node.count("kill") == 0
        assert (await _connect(s, fs)).status_code == 201


async def test_set_timeout_zero_auto_pauses(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        sid = (await s.create(timeout=300, autoPause=True))["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/timeout", json={"timeout": 0}, headers=s.auth)
        assert r.status_code == 204
        async with asyncio.timeout(3):
            while await _state(s, sid) is not SandboxState.PAUSED:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert sid in node.paused and (await _info(s, sid)).json()["state"] == "paused"


async def test_auto_pause_that_keeps_failing_ends_in_a_kill(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.fail_pause = True
        sid = (await s.create(timeout=5, autoPause=True))["sandboxID"]
        s.clock.advance(6)
        async with asyncio.timeout(5):
            while sid not in node.killed:
                s.clock.advance(3)  # past the reaper's retry backoff
                await asyncio.sleep(0.05)
        assert node.count("pause", sid) == 3
        assert await _state(s, sid) is SandboxState.KILLED


async def test_heartbeats_leave_paused_sandboxes_alone(make_stack: StackFactory) -> None:
    async with make_stack(heartbeat_interval=60) as s:
        node = s.nodes["node1"]
        sid = (await s.create())["sandboxID"]
        await _pause(s, sid)
        s.clock.advance(3600)
        body = {
            "node": node.info().model_dump(mode="json"),
            "sandboxes": [x.model_dump(mode="json") for x in node.sandboxes.values()],
        }
        headers = {"X-Shoal-Node-Token": "node-secret"}
        url = f"/internal/v1/nodes/{node.node_id}/heartbeat"
        r = await s.http.post(url, json=body, headers=headers)
        assert r.json() == {"orphans": []}
        assert await _state(s, sid) is SandboxState.PAUSED

        # A pause whose outcome was never learned: once stale, the node's list decides.
        other = (await s.create())["sandboxID"]
        await s.store.update_sandbox(other, state=SandboxState.PAUSING, paused_at=s.clock.now)
        await s.http.post(url, json=body, headers=headers)
        assert await _state(s, other) is SandboxState.PAUSING
        s.clock.advance(STALE_TRANSITION.total_seconds() + 1)
        body["sandboxes"] = [x.model_dump(mode="json") for x in node.sandboxes.values()]
        await s.http.post(url, json=body, headers=headers)
        assert await _state(s, other) is SandboxState.RUNNING
        assert await _state(s, sid) is SandboxState.PAUSED


async def test_paused_sandboxes_stay_paused_across_a_restart(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    node = FakeNode()
    clock = FakeClock()
    db = tmp_path / "state" / "shoal.db"
    async with make_stack(nodes=[node], db=db, clock=clock) as s:
        sid = (await s.create(timeout=30, autoPause=True, autoResume={"enabled": True}))[
            "sandboxID"
        ]
        await _pause(s, sid)
    clock.advance(3600)
    async with make_stack(nodes=[node], db=db, clock=clock) as s2:
        info = (await _info(s2, sid)).json()
        assert info["state"] == "paused" and info["pauseMode"] == "full"
        assert info["lifecycle"] == {"autoResume": True, "onTimeout": "pause"}
        assert (await _connect(s2, sid)).status_code == 201


async def test_paused_sandboxes_hold_disk_but_no_cpu(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        node = s.nodes["node1"]
        node.checkpoint_size = 10_000
        sid = (await s.create())["sandboxID"]
        await s.create()
        before = (await s.store.node_usage())["node1"]
        await _pause(s, sid)
        usage = (await s.store.node_usage())["node1"]
        assert usage.sandboxes == before.sandboxes - 1
        assert usage.cpu_count < before.cpu_count
        assert usage.checkpoint_bytes == 10_000
        await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)
        assert (await s.store.node_usage())["node1"].checkpoint_bytes == 0
