"""Create, get, connect, timeout, kill: status codes and bodies as the SDKs see them."""

from __future__ import annotations

from datetime import datetime, timedelta

from fakes.api_stack import StackFactory
from fakes.node_agent import FakeNode

from shoal.api.auth import hash_key
from shoal.store import ApiKey, Team


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_create_v2_returns_201_sandbox_shape(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.post(
            "/v2/sandboxes",
            json={"templateID": "base", "metadata": {}, "envVars": {}, "someFutureField": 1},
            headers=s.auth,
        )
        assert r.status_code == 201
        body = r.json()
        assert set(body) == {
            "templateID",
            "sandboxID",
            "clientID",
            "envdVersion",
            "alias",
            "envdAccessToken",
            "trafficAccessToken",
            "domain",
        }
        assert body["templateID"] == "base"
        assert body["envdVersion"] == "0.6.13"
        assert body["domain"] == "shoal.test"
        assert body["trafficAccessToken"] is None
        assert len(body["envdAccessToken"]) >= 32
        assert body["sandboxID"].isalnum() and "-" not in body["sandboxID"]
        node = s.nodes["node1"]
        assert node.requests[body["sandboxID"]].access_token == body["envdAccessToken"]


async def test_create_v1_with_secure_flag(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.post(
            "/sandboxes",
            json={"templateID": "base", "timeout": 30, "secure": True, "metadata": {"k": "v"}},
            headers=s.auth,
        )
        assert r.status_code == 201
        assert r.json()["envdAccessToken"]


async def test_env_vars_reach_node_and_e2b_vars_cannot_be_overridden(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        sb = await s.create(envVars={"A": "1", "E2B_SANDBOX_ID": "spoof", "E2B_SANDBOX": "no"})
        env = s.nodes["node1"].requests[sb["sandboxID"]].env_vars
        assert env["A"] == "1"
        assert env["E2B_SANDBOX"] == "true"
        assert env["E2B_SANDBOX_ID"] == sb["sandboxID"]
        assert env["E2B_TEMPLATE_ID"] == "base"


async def test_unknown_template_is_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.post("/v2/sandboxes", json={"templateID": "nope"}, headers=s.auth)
        assert r.status_code == 404
        assert r.json() == {"code": 404, "message": "template 'nope' not found"}


async def test_bad_create_bodies_are_400(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        cases = [
            {"templateID": "base", "timeout": -1},
            {"templateID": "base", "timeout": s.settings.max_timeout + 1},
            {"templateID": "base", "metadata": {"k": "x" * (64 * 1024)}},
            {"templateID": "base", "metadata": {str(i): "" for i in range(1001)}},
            {"templateID": "base", "envVars": {"A=B": "1"}},
            {"templateID": "base", "metadata": {"k": 1}},
            {"timeout": 10},
            ["templateID"],
        ]
        for body in cases:
            r = await s.http.post("/v2/sandboxes", json=body, headers=s.auth)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["code"] == 400 and r.json()["message"]
        r = await s.http.post(
            "/v2/sandboxes",
            content=b'{"templateID": ',
            headers={**s.auth, "content-type": "application/json"},
        )
        assert r.status_code == 400
        assert r.json()["code"] == 400
        assert s.nodes["node1"].requests == {}


async def test_max_timeout_is_accepted(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create(timeout=s.settings.max_timeout)
        r = await s.http.get(f"/sandboxes/{sb['sandboxID']}", headers=s.auth)
        d = r.json()
        assert _ts(d["endAt"]) - _ts(d["startedAt"]) == timedelta(seconds=s.settings.max_timeout)


async def test_missing_or_wrong_api_key_is_401(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.get("/v2/sandboxes")
        assert r.status_code == 401 and r.json()["code"] == 401
        r = await s.http.post(
            "/v2/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": "e2b_" + "0" * 40}
        )
        assert r.status_code == 401
        assert r.json() == {"code": 401, "message": "Invalid API key"}


async def test_get_detail_has_every_required_field(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create(timeout=60, metadata={"owner": "me"})
        r = await s.http.get(f"/sandboxes/{sb['sandboxID']}", headers=s.auth)
        assert r.status_code == 200
        d = r.json()
        assert d["state"] == "running"
        assert (d["cpuCount"], d["memoryMB"], d["diskSizeMB"]) == (2, 512, 1024)
        assert d["envdVersion"] == "0.6.13"
        assert d["metadata"] == {"owner": "me"}
        assert d["envdAccessToken"] == sb["envdAccessToken"]
        assert d["domain"] == "shoal.test"
        assert d["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}
        assert d["clientID"] and d["templateID"] == "base" and d["alias"] == "base"
        assert _ts(d["endAt"]) - _ts(d["startedAt"]) == timedelta(seconds=60)


async def test_unknown_sandbox_is_404_everywhere(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        for method, path, body in [
            ("GET", "/sandboxes/nosuch", None),
            ("DELETE", "/sandboxes/nosuch", None),
            ("POST", "/sandboxes/nosuch/timeout", {"timeout": 10}),
            ("POST", "/sandboxes/nosuch/refreshes", {"duration": 10}),
            ("POST", "/v2/sandboxes/nosuch/connect", {"timeout": 10}),
            ("POST", "/sandboxes/nosuch/connect", {"timeout": 10}),
        ]:
            r = await s.http.request(method, path, json=body, headers=s.auth)
            assert r.status_code == 404, (method, path)
            assert r.json() == {"code": 404, "message": "sandbox nosuch not found"}


async def test_other_teams_sandbox_is_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create()
        other_key = "e2b_" + "1" * 40
        await s.store.create_team(Team("other", "other", s.clock()))
        await s.store.add_api_key(ApiKey(hash_key(other_key), "other", s.clock()))
        other = {"X-API-KEY": other_key}
        assert (await s.http.get(f"/sandboxes/{sb['sandboxID']}", headers=other)).status_code == 404
        r = await s.http.delete(f"/sandboxes/{sb['sandboxID']}", headers=other)
        assert r.status_code == 404
        assert (await s.http.get("/v2/sandboxes", headers=other)).json() == []
        assert (
            await s.http.get(f"/sandboxes/{sb['sandboxID']}", headers=s.auth)
        ).status_code == 200


async def test_kill_is_204_then_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create()
        sid = sb["sandboxID"]
        r = await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)
        assert r.status_code == 204 and r.content == b""
        assert sid in s.nodes["node1"].killed
        assert (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).status_code == 404
        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 404
        assert (await s.http.get("/v2/sandboxes", headers=s.auth)).json() == []


async def test_set_timeout_sets_end_at_and_can_shorten(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create(timeout=300)
        sid = sb["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/timeout", json={"timeout": 20}, headers=s.auth)
        assert r.status_code == 204
        d = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert _ts(d["endAt"]) == s.clock() + timedelta(seconds=20)
        r = await s.http.post(f"/sandboxes/{sid}/timeout", json={"timeout": -5}, headers=s.auth)
        assert r.status_code == 400
        r = await s.http.post(f"/sandboxes/{sid}/timeout", json={}, headers=s.auth)
        assert r.status_code == 400


async def test_connect_extends_only(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create(timeout=100)
        sid = sb["sandboxID"]
        r = await s.http.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 10}, headers=s.auth)
        assert r.status_code == 200
        assert r.json()["sandboxID"] == sid
        assert r.json()["envdAccessToken"] == sb["envdAccessToken"]
        d = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert _ts(d["endAt"]) == s.clock() + timedelta(seconds=100)
        r = await s.http.post(f"/sandboxes/{sid}/connect", json={"timeout": 500}, headers=s.auth)
        assert r.status_code == 200
        d = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert _ts(d["endAt"]) == s.clock() + timedelta(seconds=500)
        # v1 connect requires a timeout; v2 does not.
        assert (
            await s.http.post(f"/sandboxes/{sid}/connect", json={}, headers=s.auth)
        ).status_code == 400
        r = await s.http.post(f"/v2/sandboxes/{sid}/connect", json={}, headers=s.auth)
        assert r.status_code == 200


async def test_refreshes_extends(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sb = await s.create(timeout=10)
        sid = sb["sandboxID"]
        r = await s.http.post(f"/sandboxes/{sid}/refreshes", json={"duration": 60}, headers=s.auth)
        assert r.status_code == 204
        d = (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()
        assert _ts(d["endAt"]) == s.clock() + timedelta(seconds=60)


async def test_unknown_route_and_health(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.get("/v9/nothing", headers=s.auth)
        assert r.status_code == 404
        assert r.json()["code"] == 404 and isinstance(r.json()["message"], str)
        r = await s.http.put("/v2/sandboxes", headers=s.auth)
        assert r.status_code == 405 and r.json()["code"] == 405
        assert (await s.http.get("/health")).status_code == 200


async def test_no_nodes_is_503(make_stack: StackFactory) -> None:
    async with make_stack(nodes=[]) as s:
        r = await s.http.post("/v2/sandboxes", json={"templateID": "base"}, headers=s.auth)
        assert r.status_code == 503
        assert r.json()["code"] == 503 and "no nodes" in r.json()["message"]


async def test_node_failure_on_create_is_500_without_retry(make_stack: StackFactory) -> None:
    class Broken(FakeNode):
        async def _create(self, request):  # type: ignore[no-untyped-def]
            from starlette.responses import JSONResponse

            return JSONResponse({"code": 500, "message": "runtime exploded"}, status_code=500)

    node = Broken()
    async with make_stack(nodes=[node]) as s:
        r = await s.http.post("/v2/sandboxes", json={"templateID": "base"}, headers=s.auth)
        assert r.status_code == 500
        assert r.json()["message"] == "runtime exploded"
        assert r.headers["Should-Retry"] == "false"
        assert (await s.http.get("/v2/sandboxes", headers=s.auth)).json() == []
