"""Two node agents behind one control plane and one proxy (item 6 of the core issue).

The control plane runs without a local agent, on a real PostgreSQL server (the store of a
cluster); two stand-alone ``shoal agent`` processes join it by heartbeat. Sandboxes created
through the SDK land on both nodes, physically (their directories and containers are on
the node that the API names), and every one of them answers through the single proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from support.postgres import postgres_server
from support.server import ShoalAgentProcess, ShoalServer, scratch_dir, sdk_env

pytestmark = [pytest.mark.root, pytest.mark.sdk]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ShoalServer, list[ShoalAgentProcess]]]:
    with postgres_server() as db_url:
        yield from _cluster(db_url)


def _cluster(db_url: str) -> Iterator[tuple[ShoalServer, list[ShoalAgentProcess]]]:
    server = ShoalServer(
        scratch_dir("cp"), extra_env={"SHOAL_LOCAL_AGENT": "false", "SHOAL_DATABASE_URL": db_url}
    )
    server.start()
    agents = [
        ShoalAgentProcess(server, scratch_dir(f"node{i}"), node_id=f"node{i}test") for i in (1, 2)
    ]
    try:
        for a in agents:
            a.start()
        wait_for_nodes(server, agents)
        with sdk_env(server):
            yield server, agents
    finally:
        server.kill_all_sandboxes()
        for a in agents:
            a.stop()
        server.stop()
        for a in agents:
            # The agents' sandboxes were killed through the API; their data dirs are empty.
            leftover = (
                list((a.data_dir / "sandboxes").iterdir())
                if (a.data_dir / "sandboxes").exists()
                else []
            )
            assert leftover == [], f"{a.node_id} left {leftover}"


def wait_for_nodes(
    server: ShoalServer, agents: list[ShoalAgentProcess], timeout: float = 30
) -> None:
    """Both nodes must be able to take a sandbox: the API answers 503 until one has joined."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    with server.api() as api:
        while time.monotonic() < deadline and seen != {a.node_id for a in agents}:
            for a in agents:
                if a.proc is not None and a.proc.poll() is not None:
                    raise RuntimeError(f"agent {a.node_id} exited:\n{a.log()}")
            r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 30})
            if r.status_code == 201:
                body = r.json()
                seen.add(body["clientID"])
                api.delete(f"/sandboxes/{body['sandboxID']}")
            else:
                time.sleep(0.3)
    assert seen == {a.node_id for a in agents}, f"nodes seen: {seen}\n{server.log()}"


def test_sandboxes_spread_over_both_nodes_and_answer_through_the_proxy(cluster) -> None:  # type: ignore[no-untyped-def]
    from e2b import Sandbox

    server, agents = cluster
    sandboxes = [Sandbox.create(timeout=60) for _ in range(6)]
    try:
        with server.api() as api:
            placed = {s.sandbox_id: api.get(f"/sandboxes/{s.sandbox_id}").json() for s in sandboxes}
        nodes = {}
        for s in sandboxes:
            r = httpx.post(
                f"{server.api_url}/v2/sandboxes/{s.sandbox_id}/connect",
                json={"timeout": 60},
                headers={"X-API-KEY": server.api_key},
                trust_env=False,
            )
            assert r.status_code == 200, r.text
            nodes[s.sandbox_id] = r.json()["clientID"]
        assert set(nodes.values()) == {"node1test", "node2test"}
        by_id = {a.node_id: a for a in agents}
        for s in sandboxes:
            # Physically on the node the API names, and on no other.
            owner = by_id[nodes[s.sandbox_id]]
            other = next(a for a in agents if a is not owner)
            assert (owner.data_dir / "sandboxes" / s.sandbox_id).is_dir()
            assert not (other.data_dir / "sandboxes" / s.sandbox_id).exists()
            # Reachable through the one proxy address.
            out = s.commands.run("echo $E2B_SANDBOX_ID; hostname").stdout.split()
            assert out[0] == s.sandbox_id
            assert placed[s.sandbox_id]["state"] == "running"
    finally:
        for s in sandboxes:
            s.kill()
    for s in sandboxes:
        assert not s.is_running()


def test_a_port_inside_a_remote_sandbox_answers_through_the_proxy(cluster) -> None:  # type: ignore[no-untyped-def]
    from e2b import Sandbox

    server, _ = cluster
    sbx = Sandbox.create(timeout=60)
    try:
        sbx.commands.run("mkdir -p /tmp/www && echo served-from-sandbox > /tmp/www/index.html")
        sbx.commands.run("cd /tmp/www && python3 -m http.server 8000", background=True)
        deadline = time.monotonic() + 10
        body = ""
        while time.monotonic() < deadline:
            r = httpx.get(
                f"{server.sandbox_url}/index.html",
                headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"},
                trust_env=False,
            )
            if r.status_code == 200:
                body = r.text
                break
            time.sleep(0.1)
        assert body == "served-from-sandbox\n"
    finally:
        sbx.kill()


ECHO_HEADERS = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8001), H).serve_forever()
"""


def test_the_node_token_never_reaches_a_sandbox(cluster) -> None:  # type: ignore[no-untyped-def]
    """The proxy authenticates to remote agents with the node token; code in the sandbox
    must not be able to read it from the requests forwarded to its ports."""
    from e2b import Sandbox

    server, _ = cluster
    sbx = Sandbox.create(timeout=60)
    try:
        sbx.commands.run(f"cat > /tmp/echo.py <<'PY'\n{ECHO_HEADERS}\nPY")
        sbx.commands.run("python3 /tmp/echo.py", background=True)
        deadline = time.monotonic() + 10
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            r = httpx.get(
                f"{server.sandbox_url}/",
                headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8001"},
                trust_env=False,
            )
            if r.status_code == 200:
                seen = r.json()
                break
            time.sleep(0.1)
        assert seen.get("e2b-sandbox-id") == sbx.sandbox_id
        assert "x-shoal-node-token" not in seen
        assert server.node_token not in str(seen)
    finally:
        sbx.kill()
