"""Real isolation (item 4 of the core issue), observed the way a user or an attacker would:
namespaces and ids, the network, and other sandboxes.

Every check runs a program inside a sandbox through the official SDK and looks at the result,
inside and, where it matters, on the host (namespace inodes, host pids and uids).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hoststate import find_host_pids, init_pid_of, node_id_of, proc_uid, wait_for
from sandbox_exec import py, sh
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

UID_BASE = 100000


# -- namespaces and ids ---------------------------------------------------------------

NAMESPACES = ["pid", "mnt", "net", "uts", "ipc", "cgroup", "user"]


def test_every_namespace_differs_from_the_host_and_from_other_sandboxes(
    box: Any, make_sandbox: Callable[..., Any]
) -> None:
    other = make_sandbox()
    cmd = " ; ".join(f"readlink /proc/self/ns/{ns}" for ns in NAMESPACES)
    rc, out, _ = sh(box, cmd)
    assert rc == 0
    inside = dict(zip(NAMESPACES, out.split(), strict=True))
    rc, out2, _ = sh(other, cmd)
    in_other = dict(zip(NAMESPACES, out2.split(), strict=True))
    host = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}
    for ns in NAMESPACES:
        assert inside[ns].startswith(f"{ns}:["), inside
        assert inside[ns] != host[ns], f"{ns} namespace is the host's"
        assert inside[ns] != in_other[ns], f"{ns} namespace is shared between sandboxes"


def test_root_inside_maps_to_the_unprivileged_id_base(box: Any) -> None:
    rc, out, _ = sh(box, "cat /proc/self/uid_map /proc/self/gid_map")
    assert rc == 0
    assert [line.split() for line in out.strip().splitlines()] == [
        ["0", str(UID_BASE), "65536"],
        ["0", str(UID_BASE), "65536"],
    ]


def test_a_root_process_inside_is_uid_100000_on_the_host(box: Any) -> None:
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    handle = box.commands.run(f"exec sleep {marker}", background=True, user="root")
    try:
        assert wait_for(lambda: len(find_host_pids(lambda c: c == ["sleep", marker])) == 1)
        (host_pid,) = find_host_pids(lambda c: c == ["sleep", marker])
        status = Path(f"/proc/{host_pid}/status").read_text()
        fields = {k: v.split() for k, v in (ln.split(":", 1) for ln in status.splitlines())}
        assert fields["Uid"] == [str(UID_BASE)] * 4
        assert fields["Gid"] == [str(UID_BASE)] * 4
        # The same process, as the sandbox numbers it: host pid first, sandbox pid last.
        assert fields["NSpid"][0] == str(host_pid)
        assert fields["NSpid"][-1] == str(handle.pid)
        assert proc_uid(host_pid) == UID_BASE
    finally:
        handle.kill()


def test_pid_1_is_shoal_init_and_ps_shows_only_the_sandbox(box: Any) -> None:
    rc, out, _ = sh(box, "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -eo pid=,ppid=,comm=")
    assert rc == 0
    first, *ps_lines = out.strip().splitlines()
    assert first.split()[0] == "/.shoal/init"
    rows = [line.split(None, 2) for line in ps_lines]
    assert rows[0][0] == "1"
    # Only init, the shell the SDK runs, and ps itself: nothing of the host's (the server,
    # the test runner, other sandboxes' processes) shows.
    comms = {r[2] for r in rows}
    assert comms <= {"init", "bash", "ps"}, rows
    assert len(rows) <= 3


# -- network ----------------------------------------------------------------------------


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP service on the host, on all addresses, accepting (and counting) connections."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            conn.sendall(b"host-secret\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join()
    srv.close()


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and not a["local"].startswith("127."):
                addrs.append(a["local"])
    return addrs


def test_only_loopback_inside(box: Any) -> None:
    rc, out, _ = sh(box, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert rc == 0
    assert out.split() == ["lo"]
    rc, out, _ = sh(box, "cat /proc/net/route | tail -n +2 | wc -l")
    assert out.strip() == "0", "the sandbox has routes"


def test_host_services_are_unreachable(
    box: Any, host_listener: int, e2e_server: ShoalServer
) -> None:
    # The service is really there: the host itself reaches it.
    with socket.create_connection(("127.0.0.1", host_listener), timeout=2) as c:
        assert c.recv(64) == b"host-secret\n"
    targets = [
        ("127.0.0.1", p) for p in (host_listener, e2e_server.api_port, e2e_server.sandbox_port)
    ]
    targets += [(addr, host_listener) for addr in host_addresses()]
    code = f"""
import json, socket
out = {{}}
for host, port in {targets!r}:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[f"{{host}}:{{port}}"] = "connected: " + s.recv(64).decode(errors="replace")
    except OSError as e:
        out[f"{{host}}:{{port}}"] = e.errno
    finally:
        s.close()
print(json.dumps(out))
"""
    for user in ("user", "root"):
        result = py(box, code, user=user)
        for target, outcome in result.items():
            host = target.rsplit(":", 1)[0]
            # The sandbox's own loopback refuses (nothing listens there); any other address has
            # no route at all: no packet leaves the sandbox's namespace.
            expected = 111 if host.startswith("127.") else 101  # ECONNREFUSED / ENETUNREACH
            assert outcome == expected, f"{user} -> {target}: {outcome}"


def test_abstract_sockets_of_the_host_and_of_other_sandboxes_are_out_of_reach(
    box: Any, make_sandbox: Callable[..., Any]
) -> None:
    other = make_sandbox()
    name = f"shoal-e2e-{secrets.token_hex(4)}"
    host_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_sock.bind("\0" + name)
    host_sock.listen(1)
    try:
        code = f"""
import json, socket
out = {{}}
for name in [{name!r}, "shoal-init-{other.sandbox_id}"]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\\0" + name)
        out[name] = "connected"
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""
        result = py(box, code, user="root")
        assert result == {name: 111, f"shoal-init-{other.sandbox_id}": 111}
    finally:
        host_sock.close()


# -- other sandboxes ------------------------------------------------------------------


def test_another_sandboxs_processes_and_files_are_invisible(
    box: Any, make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    other = make_sandbox()
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    secret_file = f"/tmp/secret-{secrets.token_hex(4)}"
    assert sh(other, f"echo top-secret > {secret_file}", user="root")[0] == 0
    handle = other.commands.run(f"exec sleep {marker}", background=True, user="root")
    try:
        assert wait_for(lambda: len(find_host_pids(lambda c: c == ["sleep", marker])) == 1)
        (host_pid,) = find_host_pids(lambda c: c == ["sleep", marker])
        other_rootfs = e2e_server.data_dir / "sandboxes" / other.sandbox_id / "rootfs"
        assert (other_rootfs / secret_file.lstrip("/")).read_text() == "top-secret\n"
        rc, out, _ = sh(box, "ps -eo args=", user="root")
        assert marker not in out
        for path in (secret_file, f"{other_rootfs}{secret_file}", f"/proc/{host_pid}/root"):
            rc, _, err = sh(box, f"cat {path}", user="root")
            assert rc != 0, f"{path} readable from another sandbox"
        # Killing it by its host pid does nothing: that pid does not exist in this sandbox.
        rc, _, err = sh(box, f"kill -9 {host_pid}", user="root")
        assert rc != 0 and "No such process" in err
        assert sh(other, f"kill -0 {handle.pid}", user="root")[0] == 0
    finally:
        handle.kill()


def test_host_pid_of_init_is_in_the_sandboxs_cgroup(box: Any, e2e_server: ShoalServer) -> None:
    pid = init_pid_of(e2e_server.data_dir, box.sandbox_id)
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/shoal/{node_id_of(e2e_server.data_dir)}/{box.sandbox_id}" in cgroup
    assert proc_uid(pid) == UID_BASE
