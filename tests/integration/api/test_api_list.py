"""``GET /v2/sandboxes`` and v1 ``GET /sandboxes``: filters, order and paging."""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timedelta, timezone

from fakes.api_stack import Stack, StackFactory
from fakes.node_agent import FakeNode


def sdk_metadata(metadata: dict[str, str]) -> str:
    """The metadata filter exactly as the Python SDK builds it (paginator.py)."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    return urllib.parse.urlencode(quoted)


async def _ids(s: Stack, **params: object) -> list[str]:
    r = await s.http.get("/v2/sandboxes", params=params, headers=s.auth)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return [x["sandboxID"] for x in r.json()]


async def _create_spaced(s: Stack, n: int, **body: object) -> list[str]:
    ids = []
    for _ in range(n):
        ids.append((await s.create(**body))["sandboxID"])
        s.clock.advance(1)
    return ids


async def test_default_order_is_newest_first_and_asc_reverses(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        ids = await _create_spaced(s, 3)
        assert await _ids(s) == ids[::-1]
        assert await _ids(s, order="asc") == ids
        r = await s.http.get("/v2/sandboxes", params={"order": "up"}, headers=s.auth)
        assert r.status_code == 400


async def test_listed_sandbox_has_required_fields(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        await s.create(metadata={"a": "b"})
        (item,) = (await s.http.get("/v2/sandboxes", headers=s.auth)).json()
        required = {
            "templateID", "sandboxID", "clientID", "startedAt", "endAt",
            "cpuCount", "memoryMB", "diskSizeMB", "state", "envdVersion",
        }  # fmt: skip
        assert required <= set(item)
        assert item["metadata"] == {"a": "b"} and item["state"] == "running"


async def test_paging_with_limit_1_visits_every_sandbox_once(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        ids = await _create_spaced(s, 3)
        # two sandboxes with the same startedAt: ties break on sandboxID
        ids += [(await s.create())["sandboxID"] for _ in range(2)]
        for order in ("desc", "asc"):
            seen: list[str] = []
            token = None
            pages = 0
            while True:
                params: dict[str, object] = {"limit": 1, "order": order}
                if token:
                    params["nextToken"] = token
                r = await s.http.get("/v2/sandboxes", params=params, headers=s.auth)  # type: ignore[arg-type]
                assert r.status_code == 200
                pages += 1
                seen += [x["sandboxID"] for x in r.json()]
                token = r.headers.get("X-Next-Token")
                if not token:
                    break
            assert pages == 5
            assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_paging_is_stable_under_concurrent_inserts(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        ids = await _create_spaced(s, 4)
        r = await s.http.get("/v2/sandboxes", params={"limit": 2}, headers=s.auth)
        first = [x["sandboxID"] for x in r.json()]
        token = r.headers["X-Next-Token"]
        await _create_spaced(s, 2)  # newer than everything: must not shift the next page
        r = await s.http.get(
            "/v2/sandboxes", params={"limit": 2, "nextToken": token}, headers=s.auth
        )
        assert first + [x["sandboxID"] for x in r.json()] == ids[::-1]
        assert "X-Next-Token" not in r.headers


async def test_limit_bounds_and_bad_token_are_400(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"nextToken": "%%%"}):
            r = await s.http.get("/v2/sandboxes", params=params, headers=s.auth)
            assert r.status_code == 400, params
            assert r.json()["code"] == 400
        assert (await s.http.get("/v2/sandboxes", params={"limit": 100}, headers=s.auth)).is_success


async def test_state_filter_comma_and_repeated(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        sid = (await s.create())["sandboxID"]
        assert await _ids(s, state="running") == [sid]
        assert await _ids(s, state="paused") == []
        assert await _ids(s, state="running,paused") == [sid]
        r = await s.http.get("/v2/sandboxes?state=paused&state=running", headers=s.auth)
        assert [x["sandboxID"] for x in r.json()] == [sid]
        r = await s.http.get("/v2/sandboxes", params={"state": "dead"}, headers=s.auth)
        assert r.status_code == 400


async def test_metadata_filter_decodes_sdk_encoding(make_stack: StackFactory) -> None:
    tricky = {"a&b": "c=d", "with space": "x y+z", "ключ": "значение ✓", "p%20q": "100%"}
    async with make_stack() as s:
        match = (await s.create(metadata={**tricky, "extra": "1"}))["sandboxID"]
        await s.create(metadata={"a&b": "c=d"})
        await s.create(metadata={})
        assert await _ids(s, metadata=sdk_metadata(tricky)) == [match]
        assert len(await _ids(s, metadata=sdk_metadata({"a&b": "c=d"}))) == 2
        assert await _ids(s, metadata=sdk_metadata({"a&b": "c"})) == []
        r = await s.http.get(
            "/sandboxes", params={"metadata": sdk_metadata(tricky)}, headers=s.auth
        )
        assert [x["sandboxID"] for x in r.json()] == [match]
        r = await s.http.get("/v2/sandboxes", params={"metadata": "novalue"}, headers=s.auth)
        assert r.status_code == 400


async def test_started_after_is_inclusive_and_accepts_offsets(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        ids = await _create_spaced(s, 3)
        d = (await s.http.get(f"/sandboxes/{ids[1]}", headers=s.auth)).json()
        started = d["startedAt"]  # e.g. 2026-01-01T10:00:00.123456Z
        assert await _ids(s, startedAfter=started, order="asc") == ids[1:]
        assert started.endswith("Z")
        as_plus_one = datetime.fromisoformat(started).astimezone(timezone(timedelta(hours=1)))
        assert await _ids(s, startedAfter=as_plus_one.isoformat(), order="asc") == ids[1:]
        r = await s.http.get("/v2/sandboxes", params={"startedAfter": "yesterday"}, headers=s.auth)
        assert r.status_code == 400


async def test_template_filter(make_stack: StackFactory) -> None:
    async with make_stack(nodes=[FakeNode(templates=("base", "code-interpreter-v1"))]) as s:
        base = (await s.create())["sandboxID"]
        ci = (await s.create(templateID="code-interpreter-v1"))["sandboxID"]
        assert await _ids(s, template="base") == [base]
        assert await _ids(s, template="code-interpreter-v1") == [ci]
        assert await _ids(s, template="other") == []


async def test_v1_list_shows_running_only(make_stack: StackFactory) -> None:
    async with make_stack() as s:
        keep = (await s.create())["sandboxID"]
        gone = (await s.create())["sandboxID"]
        assert (await s.http.delete(f"/sandboxes/{gone}", headers=s.auth)).status_code == 204
        r = await s.http.get("/sandboxes", headers=s.auth)
        assert r.status_code == 200
        assert [x["sandboxID"] for x in r.json()] == [keep]
        assert r.json()[0]["state"] == "running"
