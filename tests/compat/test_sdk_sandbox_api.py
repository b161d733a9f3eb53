"""The control plane as the sync SDK sees it: create, info, list, connect, timeouts, kill.

Mirrors the intent of the upstream suite's ``api_sync/test_sbx_*`` and
``sandbox_sync/test_{create,connect,kill,timeout}`` (e2b-compat §2, §6.1), in our words.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from compat_helpers import unique, wait_for
from e2b import (
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)
from support.server import ShoalServer

DEFAULT_TIMEOUT_S = 300
ENVD_VERSION = "0.6.13"


def lifetime(info) -> float:  # type: ignore[no-untyped-def]
    return (info.end_at - info.started_at).total_seconds()


def remaining(sbx: Sandbox) -> float:
    return (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()


def list_all(query: SandboxQuery | None = None, **kwargs) -> list:  # type: ignore[no-untyped-def]
    paginator = Sandbox.list(query=query, **kwargs)
    items = []
    while paginator.has_next:
        items.extend(paginator.next_items())
    return items


# create and info


def test_create_with_defaults(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    assert sbx.sandbox_id.isalnum() and sbx.sandbox_id.islower()
    assert "-" not in sbx.sandbox_id
    assert sbx._envd_access_token, "2.63 sandboxes are always secured: a token must come back"

    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.template_id == "base" or info.name == "base"
    assert info.state == SandboxState.RUNNING
    assert info.envd_version == ENVD_VERSION
    assert info.cpu_count > 0
    assert info.memory_mb > 0
    assert info.started_at.tzinfo is not None
    assert info.end_at > info.started_at
    # No timeout given: the server's default, 300 s.
    assert abs(lifetime(info) - DEFAULT_TIMEOUT_S) < 5


def test_create_with_timeout_metadata_and_envs(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    metadata = {"owner": "compat", "k&=": "v w/ü"}
    sbx = sandbox_factory(timeout=123, metadata=metadata, envs={"FOO": "bar baz", "EMPTY": ""})

    info = sbx.get_info()
    assert info.metadata == metadata
    assert abs(lifetime(info) - 123) < 5

    result = sbx.commands.run('printf "%s|%s|%s" "$FOO" "${EMPTY-unset}" "$HOME"')
    assert result.stdout == "bar baz||/home/user"


def test_sandbox_env_vars_are_set_in_every_command(sandbox) -> None:  # type: ignore[no-untyped-def]
    info = sandbox.get_info()
    out = sandbox.commands.run(
        'printf "%s\\n%s\\n%s\\n" "$E2B_SANDBOX" "$E2B_SANDBOX_ID" "$E2B_TEMPLATE_ID"'
    ).stdout.splitlines()
    assert out == ["true", sandbox.sandbox_id, info.template_id]
    # Also for root, and with per-command envs on top (the command's own wins).
    out = sandbox.commands.run(
        'printf "%s %s" "$E2B_SANDBOX_ID" "$E2B_SANDBOX"', user="root", envs={"E2B_SANDBOX": "x"}
    ).stdout
    assert out == f"{sandbox.sandbox_id} x"


def test_create_unknown_template_is_an_sdk_error(shoal_server: ShoalServer) -> None:
    name = unique("no-such-template")
    with pytest.raises(SandboxException) as exc_info:
        Sandbox.create(template=name)
    err = exc_info.value
    assert err.status_code in (400, 404)
    assert name in str(err)
    # Nothing was left running for it.
    assert all(s.template_id != name for s in list_all())


def test_bad_api_key_is_rejected(shoal_server: ShoalServer) -> None:
    bad = "e2b_" + "0" * 40
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key=bad)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key=bad).next_items()
    with httpx.Client(base_url=shoal_server.api_url, trust_env=False) as raw:
        for headers in ({"X-API-KEY": bad}, {}):
            r = raw.get("/v2/sandboxes", headers=headers)
            assert r.status_code == 401
            body = r.json()
            assert body["code"] == 401 and isinstance(body["message"], str) and body["message"]


# kill


def test_kill_returns_true_then_false(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    other = sandbox_factory()
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert Sandbox.kill(other.sandbox_id) is True
    assert Sandbox.kill(other.sandbox_id) is False
    assert Sandbox.kill(unique("nope").replace("-", "")) is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert sbx.is_running() is False


# list


def test_list_filters_by_metadata_and_state(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    tag = unique("list")
    tricky = {"tag": tag, "a&b=c": "x=y&z", "sp ace": "ü ñ ✓", "pct%2F": "%20/?#"}
    mine = sandbox_factory(metadata=tricky)
    other = sandbox_factory(metadata={"tag": tag, "a&b=c": "different"})

    found = list_all(SandboxQuery(metadata=tricky))
    assert [s.sandbox_id for s in found] == [mine.sandbox_id]
    assert found[0].metadata == tricky
    assert found[0].state == SandboxState.RUNNING

    both = list_all(SandboxQuery(metadata={"tag": tag}))
    assert {s.sandbox_id for s in both} == {mine.sandbox_id, other.sandbox_id}

    running = list_all(SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING]))
    assert {s.sandbox_id for s in running} == {mine.sandbox_id, other.sandbox_id}
    paused = list_all(SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED]))
    assert paused == []

    other.kill()
    after = list_all(SandboxQuery(metadata={"tag": tag}))
    assert [s.sandbox_id for s in after] == [mine.sandbox_id]


def test_list_pages_with_limit_and_order(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    tag = unique("page")
    created = [sandbox_factory(metadata={"tag": tag}).sandbox_id for _ in range(3)]

    paginator = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
    assert paginator.has_next
    pages = []
    while paginator.has_next:
        pages.append(paginator.next_items())
    assert [len(p) for p in pages] == [1, 1, 1]
    newest_first = [p[0].sandbox_id for p in pages]
    assert newest_first == list(reversed(created))
    with pytest.raises(Exception, match="No more items"):
        paginator.next_items()

    asc = [s.sandbox_id for s in list_all(SandboxQuery(metadata={"tag": tag}), order="asc")]
    assert asc == created
    desc = [s.sandbox_id for s in list_all(SandboxQuery(metadata={"tag": tag}), order="desc")]
    assert desc == list(reversed(created))

    paged_asc = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2, order="asc")
    first = paged_asc.next_items()
    assert [s.sandbox_id for s in first] == created[:2]
    assert paged_asc.has_next and paged_asc.next_token
    assert [s.sandbox_id for s in paged_asc.next_items()] == created[2:]
    assert not paged_asc.has_next


def test_list_filters_by_start_time_and_template(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    tag = unique("when")
    first = sandbox_factory(metadata={"tag": tag})
    between = first.get_info().started_at
    second = sandbox_factory(metadata={"tag": tag})
    mine = {"tag": tag}

    after = list_all(SandboxQuery(metadata=mine, started_after=between))
    # startedAfter is inclusive.
    assert {s.sandbox_id for s in after} == {first.sandbox_id, second.sandbox_id}
    later = second.get_info().started_at
    assert [s.sandbox_id for s in list_all(SandboxQuery(metadata=mine, started_after=later))] == [
        second.sandbox_id
    ]
    future = datetime.now(UTC) + timedelta(minutes=5)
    assert list_all(SandboxQuery(metadata=mine, started_after=future)) == []
    # A naive datetime is local time, as the SDK documents.
    naive = (datetime.now() - timedelta(minutes=5)).replace(tzinfo=None)
    assert len(list_all(SandboxQuery(metadata=mine, started_after=naive))) == 2

    template = first.get_info().template_id
    assert len(list_all(SandboxQuery(metadata=mine, template=template))) == 2
    assert list_all(SandboxQuery(metadata=mine, template=unique("other"))) == []


# connect and timeouts


def test_connect_extends_but_never_shortens(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=60)
    assert remaining(sbx) < 65

    same = Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert same.sandbox_id == sbx.sandbox_id
    assert remaining(sbx) > 500
    assert same.commands.run("echo via-connect").stdout == "via-connect\n"

    # A shorter timeout leaves the end where it was.
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert remaining(sbx) > 500
    sbx.connect(timeout=20)
    assert remaining(sbx) > 500

    # The instance variant extends too.
    sbx.connect(timeout=1200)
    assert remaining(sbx) > 1100


def test_connect_to_a_killed_sandbox_fails(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        sbx.connect()


def test_set_timeout_moves_the_end_both_ways(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=60)
    sbx.set_timeout(900)
    assert remaining(sbx) > 800
    sbx.set_timeout(30)  # set_timeout may shorten, unlike connect
    assert remaining(sbx) < 35
    Sandbox.set_timeout(sbx.sandbox_id, 400)
    assert 300 < remaining(sbx) < 405


def test_set_timeout_zero_ends_the_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    sbx.set_timeout(0)
    wait_for(lambda: not sbx.is_running(), within=10, what="sandbox to stop after set_timeout(0)")
    with pytest.raises(SandboxNotFoundException):
        sbx.get_info()
    with pytest.raises(SandboxNotFoundException):
        sbx.set_timeout(30)
    assert sbx.kill() is False


def test_short_timeout_expires_on_its_own(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory(timeout=2)
    assert sbx.commands.run("echo alive").stdout == "alive\n"
    wait_for(lambda: not sbx.is_running(), within=15, what="sandbox to expire")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    listed = list_all(SandboxQuery(metadata={"test": "test_short_timeout_expires_on_its_own"}))
    assert sbx.sandbox_id not in {s.sandbox_id for s in listed}


# raw REST shapes (v1 endpoints are what SDKs up to 2.50 and the upstream suite use)

SANDBOX_REQUIRED = {"templateID", "sandboxID", "clientID", "envdVersion"}
DETAIL_REQUIRED = {
    "templateID",
    "sandboxID",
    "clientID",
    "startedAt",
    "endAt",
    "cpuCount",
    "memoryMB",
    "diskSizeMB",
    "state",
    "envdVersion",
}


def test_v1_create_and_connect_with_raw_http(shoal_server: ShoalServer) -> None:
    with shoal_server.api() as api:
        r = api.post(
            "/sandboxes",
            json={
                "templateID": "base",
                "timeout": 30,
                "metadata": {"via": "v1"},
                "envVars": {"V1": "yes"},
                "secure": True,
            },
        )
        assert r.status_code == 201, r.text
        created = r.json()
        sandbox_id = created["sandboxID"]
        try:
            assert SANDBOX_REQUIRED <= created.keys()
            assert created["envdVersion"] == ENVD_VERSION
            assert created["envdAccessToken"]

            # v1 connect needs a timeout and extends.
            r = api.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 600})
            assert r.status_code in (200, 201), r.text
            connected = r.json()
            assert SANDBOX_REQUIRED <= connected.keys()
            assert connected["sandboxID"] == sandbox_id
            assert connected["envdAccessToken"] == created["envdAccessToken"]

            # v2 connect, as the 2.63 SDK sends it.
            r = api.post(f"/v2/sandboxes/{sandbox_id}/connect", json={"timeout": 10})
            assert r.status_code == 200, r.text
            assert r.json()["sandboxID"] == sandbox_id

            r = api.get(f"/sandboxes/{sandbox_id}")
            assert r.status_code == 200
            detail = r.json()
            assert DETAIL_REQUIRED <= detail.keys()
            assert detail["metadata"] == {"via": "v1"}
            assert detail["state"] == "running"
            ends = datetime.fromisoformat(detail["endAt"].replace("Z", "+00:00"))
            assert (ends - datetime.now(UTC)).total_seconds() > 500

            # The sandbox the raw call made is usable from the SDK.
            sbx = Sandbox.connect(sandbox_id)
            assert sbx.commands.run("echo $V1").stdout == "yes\n"

            listed = api.get("/v2/sandboxes", params={"metadata": "via=v1"}).json()
            assert [s["sandboxID"] for s in listed] == [sandbox_id]
            assert DETAIL_REQUIRED <= listed[0].keys()
        finally:
            assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204
        assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 404


def test_v1_connect_requires_a_timeout(sandbox) -> None:  # type: ignore[no-untyped-def]
    server_url = sandbox.connection_config.api_url
    with httpx.Client(
        base_url=server_url,
        headers={"X-API-KEY": sandbox.connection_config.api_key},
        trust_env=False,
    ) as api:
        r = api.post(f"/sandboxes/{sandbox.sandbox_id}/connect", json={})
        assert r.status_code == 400
        assert r.json()["code"] == 400


def test_errors_have_code_and_message(shoal_server: ShoalServer) -> None:
    with shoal_server.api() as api:
        cases = [
            api.get("/sandboxes/doesnotexist0000000"),
            api.delete("/sandboxes/doesnotexist0000000"),
            api.post("/sandboxes/doesnotexist0000000/timeout", json={"timeout": 5}),
            api.post("/v2/sandboxes/doesnotexist0000000/connect", json={"timeout": 5}),
            api.post(
                "/v2/sandboxes",
                content=b"{not json",
                headers={"Content-Type": "application/json"},
            ),
            api.post("/v2/sandboxes", json={"timeout": 5}),  # no templateID
        ]
        expected = [404, 404, 404, 404, 400, 400]
        for r, status in zip(cases, expected, strict=True):
            assert r.status_code == status, (r.request.url, r.text)
            assert r.headers["content-type"].startswith("application/json")
            body = r.json()
            assert body["code"] == status
            assert isinstance(body["message"], str) and body["message"]


def test_health(shoal_server: ShoalServer) -> None:
    r = httpx.get(f"{shoal_server.api_url}/health", trust_env=False)
    assert r.status_code == 200
