"""Auto-resume: the proxy holds traffic for a paused sandbox created with ``autoResume``,
has the control plane resume it once, then forwards every held request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fakes.api_stack import Stack, StackFactory
from starlette.types import Receive, Scope, Send

from shoal.proxy.app import Proxy, Upstream
from shoal.store import SandboxState


async def _sandbox_app(scope: Scope, receive: Receive, send: Send) -> None:
    """What the node would serve for a running sandbox: echo the path."""
    body = f"served {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def _proxy(s: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async def locate(sandbox_id: str) -> Upstream | None:
        rec = await s.store.get_sandbox(sandbox_id)
        if rec is None or rec.state is not SandboxState.RUNNING:
            return None
        return Upstream(node_id=rec.node_id, app=_sandbox_app)

    lifecycle = s.app.state.lifecycle
    proxy = Proxy(locate, resume=lifecycle.auto_resume, leaving=lifecycle.leaving)
    lifecycle.on_leave(proxy.forget)
    transport = httpx.ASGITransport(app=proxy)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            yield http
    finally:
        await proxy.aclose()


def _to(sid: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000"}


async def _paused(s: Stack, **create: object) -> str:
    sid: str = (await s.create(**create))["sandboxID"]
    r = await s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth)
    assert r.status_code == 204
    return sid


async def test_traffic_resumes_a_paused_sandbox_once(make_stack: StackFactory) -> None:
    async with make_stack() as s, _proxy(s) as proxy:
        node = s.nodes["node1"]
        node.resume_delay = 0.1
        sid = await _paused(s, timeout=30, autoPause=True, autoResume={"enabled": True})
        answers = await asyncio.gather(
            *(proxy.get(f"/page/{i}", headers=_to(sid)) for i in range(10))
        )
        assert [r.status_code for r in answers] == [200] * 10
        assert [r.text for r in answers] == [f"served /page/{i}" for i in range(10)]
        assert node.count("resume", sid) == 1
        info = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert info["state"] == "running"
        # Auto-resumed for its create-time timeout, but never less than a minute.
        rec = await s.store.get_sandbox(sid)
        assert rec is not None and (rec.end_at - rec.started_at).total_seconds() == 60


async def test_no_auto_resume_without_asking_for_it(make_stack: StackFactory) -> None:
    async with make_stack() as s, _proxy(s) as proxy:
        node = s.nodes["node1"]
        plain = await _paused(s)
        disk_only = (
            await s.create(autoPause=True, autoPauseMemory=False, autoResume={"enabled": True})
        )["sandboxID"]
        r = await s.http.post(
            f"/sandboxes/{disk_only}/pause", json={"memory": False}, headers=s.auth
        )
        assert r.status_code == 204
        for sid in (plain, disk_only, "nosuchsandbox"):
            r = await proxy.get("/health", headers=_to(sid))
            assert r.status_code == 502
            assert r.json() == {
                "sandboxId": sid,
                "message": "The sandbox was not found",
                "code": 502,
            }
        assert node.count("resume") == 0


async def test_failed_auto_resume_answers_502_and_stays_paused(make_stack: StackFactory) -> None:
    async with make_stack() as s, _proxy(s) as proxy:
        node = s.nodes["node1"]
        node.fail_resume = True
        sid = await _paused(s, autoPause=True, autoResume={"enabled": True})
        r = await proxy.get("/health", headers=_to(sid))
        assert r.status_code == 502
        rec = await s.store.get_sandbox(sid)
        assert rec is not None and rec.state is SandboxState.PAUSED
        node.fail_resume = False
        assert (await proxy.get("/health", headers=_to(sid))).status_code == 200


async def test_a_pause_makes_the_proxy_forget_its_route(make_stack: StackFactory) -> None:
    async with make_stack() as s, _proxy(s) as proxy:
        sid = (await s.create())["sandboxID"]
        assert (await proxy.get("/before", headers=_to(sid))).status_code == 200  # cached
        r = await s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth)
        assert r.status_code == 204
        assert (await proxy.get("/after", headers=_to(sid))).status_code == 502


async def test_requests_during_a_pause_are_not_routed(make_stack: StackFactory) -> None:
    async with make_stack() as s, _proxy(s) as proxy:
        node = s.nodes["node1"]
        node.pause_delay = 0.3
        plain = (await s.create())["sandboxID"]
        waking = (await s.create(autoPause=True, autoResume={"enabled": True}))["sandboxID"]
        for sid in (plain, waking):
            assert (await proxy.get("/warm", headers=_to(sid))).status_code == 200
        pauses = [
            asyncio.create_task(s.http.post(f"/sandboxes/{sid}/pause", json={}, headers=s.auth))
            for sid in (plain, waking)
        ]
        while node.count("pause") < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # The sandboxes are still on the node, but they are leaving it.
        assert plain in node.sandboxes and waking in node.sandboxes
        assert (await proxy.get("/during", headers=_to(plain))).status_code == 502
        woken = await proxy.get("/during", headers=_to(waking))
        assert [p.status_code for p in await asyncio.gather(*pauses)] == [204, 204]
        # The waking one's request waited for the pause, then resumed it.
        assert woken.status_code == 200 and woken.text == "served /during"
        assert node.count("resume", waking) == 1 and node.count("resume", plain) == 0
