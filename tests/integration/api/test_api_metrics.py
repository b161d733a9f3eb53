"""``GET /sandboxes/{id}/metrics`` and ``GET /sandboxes/metrics``: the wire shape, the
time range E2B's SDKs send, team scoping and the error answers, with a fake node holding
the samples."""

from __future__ import annotations

from datetime import datetime

from fakes.api_stack import StackFactory
from fakes.node_agent import FakeNode

from shoal.api.auth import hash_key
from shoal.store import ApiKey, Team
from shoal.wire.node.models import MetricSample

MIB = 1024 * 1024
FIELDS = {
    "timestamp",
    "timestampUnix",
    "cpuCount",
    "cpuUsedPct",
    "memUsed",
    "memTotal",
    "memCache",
    "diskUsed",
    "diskTotal",
}


def sample(ts: float, **kw: float) -> MetricSample:
    values: dict[str, float] = dict(
        cpu_count=2,
        cpu_used_pct=12.5,
        mem_used=40 * MIB,
        mem_total=512 * MIB,
        mem_cache=3 * MIB,
        disk_used=20 * MIB,
        disk_total=1000 * MIB,
    )
    values.update(kw)
    return MetricSample(timestamp=ts, **values)  # type: ignore[arg-type]


async def test_metrics_have_e2b_fields_and_default_to_the_sandbox_lifetime(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        sb = await s.create()
        sid = sb["sandboxID"]
        s.clock.advance(20)
        now = s.clock().timestamp()
        node = s.nodes["node1"]
        node.samples[sid] = [
            sample(now - 40),  # before the sandbox started: outside the default range
            sample(now - 10.25),
            sample(now - 5.5, mem_used=250 * MIB),
            sample(now + 5),  # after "now": outside it too
        ]
        r = await s.http.get(f"/sandboxes/{sid}/metrics", headers=s.auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [set(m) for m in body] == [FIELDS, FIELDS]
        first = body[0]
        assert first["timestampUnix"] == int(now - 10.25)
        assert datetime.fromisoformat(first["timestamp"]).timestamp() == now - 10.25
        assert first["timestamp"].endswith("Z")
        assert (first["cpuCount"], first["cpuUsedPct"]) == (2, 12.5)
        assert (first["memUsed"], first["memTotal"], first["memCache"]) == (
            40 * MIB,
            512 * MIB,
            3 * MIB,
        )
        assert (first["diskUsed"], first["diskTotal"]) == (20 * MIB, 1000 * MIB)
        assert body[1]["memUsed"] == 250 * MIB
        # No range given: from the sandbox's start to now, as E2B does.
        started = datetime.fromisoformat(
            (await s.http.get(f"/sandboxes/{sid}", headers=s.auth)).json()["startedAt"]
        )
        assert node.metric_queries[-1] == {
            "start": str(int(started.timestamp())),
            "end": str(int(now)),
        }


async def test_start_and_end_are_unix_seconds_passed_to_the_node(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        t = int(s.clock().timestamp())
        s.nodes["node1"].samples[sid] = [sample(t - 20 + 0.5), sample(t - 10 + 0.5), sample(t)]
        r = await s.http.get(
            f"/sandboxes/{sid}/metrics", params={"start": t - 15, "end": t - 5}, headers=s.auth
        )
        assert [m["timestampUnix"] for m in r.json()] == [t - 10]
        past = await s.http.get(
            f"/sandboxes/{sid}/metrics", params={"start": t - 7200, "end": t - 3600}, headers=s.auth
        )
        assert past.status_code == 200 and past.json() == []


async def test_bad_ranges_are_400(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        t = int(s.clock().timestamp())
        for params in ({"start": t, "end": t - 1}, {"start": -1}, {"end": "yesterday"}):
            r = await s.http.get(f"/sandboxes/{sid}/metrics", params=params, headers=s.auth)
            assert r.status_code == 400, (params, r.text)
            assert set(r.json()) == {"code", "message"} and r.json()["code"] == 400


async def test_unknown_killed_and_foreign_sandboxes_are_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.get("/sandboxes/nosuchsandbox/metrics", headers=s.auth)
        assert r.status_code == 404
        assert r.json() == {"code": 404, "message": "sandbox nosuchsandbox not found"}

        sid = (await s.create())["sandboxID"]
        other_key = "e2b_" + "2" * 40
        await s.store.create_team(Team("other", "other", s.clock()))
        await s.store.add_api_key(ApiKey(hash_key(other_key), "other", s.clock()))
        r = await s.http.get(f"/sandboxes/{sid}/metrics", headers={"X-API-KEY": other_key})
        assert r.status_code == 404

        assert (await s.http.delete(f"/sandboxes/{sid}", headers=s.auth)).status_code == 204
        assert (await s.http.get(f"/sandboxes/{sid}/metrics", headers=s.auth)).status_code == 404


async def test_a_sandbox_its_node_no_longer_has_is_404(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        del s.nodes["node1"].sandboxes[sid]  # died on the node; the store has not heard yet
        r = await s.http.get(f"/sandboxes/{sid}/metrics", headers=s.auth)
        assert r.status_code == 404


async def test_unreachable_node_is_503(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        s.nodes["node1"].down = True
        r = await s.http.get(f"/sandboxes/{sid}/metrics", headers=s.auth)
        assert r.status_code == 503
        assert set(r.json()) >= {"code", "message"}


async def test_bulk_metrics_newest_sample_per_visible_sandbox(make_stack: StackFactory) -> None:
    nodes = [FakeNode("node1"), FakeNode("node2")]
    async with make_stack(nodes) as s:
        ids = [(await s.create())["sandboxID"] for _ in range(4)]
        t = s.clock().timestamp()
        for node in nodes:
            for sid in node.sandboxes:
                node.samples[sid] = [sample(t - 5), sample(t, mem_used=len(sid) * MIB + 1)]
        fresh = ids[3]
        for node in nodes:
            node.samples.pop(fresh, None)  # not sampled yet
        killed = ids[2]
        assert (await s.http.delete(f"/sandboxes/{killed}", headers=s.auth)).status_code == 204

        wanted = [*ids, "nosuchsandbox"]
        r = await s.http.get(
            "/sandboxes/metrics", params={"sandbox_ids": ",".join(wanted)}, headers=s.auth
        )
        assert r.status_code == 200, r.text
        got = r.json()["sandboxes"]
        assert set(got) == {ids[0], ids[1]}
        for sid, metric in got.items():
            assert set(metric) == FIELDS
            assert metric["memUsed"] == len(sid) * MIB + 1
            assert metric["timestampUnix"] == int(t)

        other_key = "e2b_" + "3" * 40
        await s.store.create_team(Team("other", "other", s.clock()))
        await s.store.add_api_key(ApiKey(hash_key(other_key), "other", s.clock()))
        r = await s.http.get(
            "/sandboxes/metrics",
            params={"sandbox_ids": ",".join(ids)},
            headers={"X-API-KEY": other_key},
        )
        assert r.json() == {"sandboxes": {}}


async def test_bulk_metrics_limits(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        r = await s.http.get("/sandboxes/metrics", headers=s.auth)
        assert r.status_code == 400
        many = ",".join(f"s{i}" for i in range(101))
        r = await s.http.get("/sandboxes/metrics", params={"sandbox_ids": many}, headers=s.auth)
        assert r.status_code == 400
        assert "at most 100" in r.json()["message"]
        # A sandbox named "metrics" is not a thing; the route is the bulk one.
        r = await s.http.get("/sandboxes/metrics", params={"sandbox_ids": "x"}, headers=s.auth)
        assert r.json() == {"sandboxes": {}}
