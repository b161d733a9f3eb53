"""``/files`` against hostile sandboxes: symlinks and ``..`` planted by code inside never
reach a host file; FIFOs and the template's device nodes are refused, never opened; bad
input gets JSON errors; an upload cut off mid-body leaks nothing and the server stays up.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import InvalidArgumentException, NotFoundException, SandboxException
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

ROOT = "root"


@pytest.fixture
def host_secret() -> Iterator[tuple[str, str]]:
    """A file only the host has: ``(path, content)``."""
    content = "host secret " + secrets.token_hex(8)
    path = Path(f"/tmp/shoal-host-secret-{secrets.token_hex(4)}")
    path.write_text(content)
    yield str(path), content
    path.unlink(missing_ok=True)


def test_writes_through_a_symlink_to_root_land_in_the_sandbox(make_sandbox: Any) -> None:
    sbx = make_sandbox()
    name = f"shoal-escape-{secrets.token_hex(4)}"
    sbx.commands.run("ln -s / /home/user/host")
    info = sbx.files.write(f"host/etc/{name}", "written")
    assert info.path == f"/home/user/host/etc/{name}"
    assert sbx.commands.run(f"cat /etc/{name}").stdout == "written"
    assert not Path(f"/etc/{name}").exists()
    # Through a symlinked parent directory and a symlinked last component alike.
    sbx.commands.run(f"ln -s /etc/{name}-target /home/user/dangling", user=ROOT)
    sbx.files.write("dangling", "through a dangling link")
    assert sbx.commands.run(f"cat /etc/{name}-target").stdout == "through a dangling link"
    assert not Path(f"/etc/{name}-target").exists()


def test_reads_never_reach_host_files(make_sandbox: Any, host_secret: tuple[str, str]) -> None:
    sbx = make_sandbox()
    path, content = host_secret
    sbx.commands.run(f"ln -s / /home/user/host && ln -s {path} /home/user/leak")
    sbx.commands.run("ln -s /proc/1/root /home/user/p1 && ln -s /proc/self/root /home/user/ps")
    for attempt in (
        f"host{path}",
        "leak",
        f"../../..{path}",
        f"p1{path}",
        f"ps{path}",
        f"/proc/1/root{path}",
        f"/proc/self/root{path}",
    ):
        try:
            got = sbx.files.read(attempt)
        except (NotFoundException, InvalidArgumentException):
            continue
        assert content not in got, attempt
    # /etc/shadow through the magic links: never the host's.
    host_shadow = Path("/etc/shadow").read_text()
    for attempt in ("p1/etc/shadow", "/proc/1/root/etc/shadow", "host/proc/1/root/etc/shadow"):
        try:
            got = sbx.files.read(attempt, user=ROOT)
        except (NotFoundException, InvalidArgumentException):
            continue
        assert got != host_shadow, attempt


def test_symlink_swapped_parent_after_resolution_cannot_escape(make_sandbox: Any) -> None:
    """Uploads into a directory that the sandbox keeps swapping for a symlink to ``/``."""
    sbx = make_sandbox()
    name = f"shoal-race-{secrets.token_hex(4)}"
    sbx.commands.run(
        "mkdir -p /home/user/race/etc && "
        "nohup bash -c 'while :; do mv -T /home/user/race /home/user/race.d 2>/dev/null;"
        " ln -sfn / /home/user/race; rm -f /home/user/race; mv -T /home/user/race.d"
        " /home/user/race 2>/dev/null; done' >/dev/null 2>&1 &",
    )
    for _ in range(100):
        try:
            sbx.files.write(f"race/etc/{name}", "x")
        except SandboxException:
            pass
    assert not Path(f"/etc/{name}").exists()


def test_fifos_and_device_nodes_are_refused(make_sandbox: Any) -> None:
    sbx = make_sandbox()
    sbx.commands.run("mkfifo /home/user/fifo")
    # The template's own /dev nodes sit in the overlay under the container's /dev mount;
    # opened from the host they would be the host's /dev/zero, /dev/console...
    for path in ("/home/user/fifo", "/dev/zero", "/dev/console"):
        with pytest.raises(InvalidArgumentException):
            sbx.files.read(path, user=ROOT)
        with pytest.raises(InvalidArgumentException):
            sbx.files.write(path, "x", user=ROOT)


def test_bad_paths_get_json_400(make_sandbox: Any, e2e_server: ShoalServer) -> None:
    sbx = make_sandbox()
    headers = {"e2b-sandbox-id": sbx.sandbox_id, "x-access-token": sbx._envd_access_token or ""}
    with httpx.Client(base_url=e2e_server.sandbox_url, headers=headers, trust_env=False) as c:
        for path in ("a\x00b", "x" * 5000, "/home/user/" + "n" * 300):
            r = c.get("/files", params={"path": path})
            assert r.status_code == 400, (path[:20], r.text)
            assert r.json()["code"] == 400
            r = c.post("/files", params={"path": path}, files={"file": ("f", b"x")})
            assert r.status_code == 400, (path[:20], r.text)
        # A name that is not UTF-8 is written and read back byte for byte.
        r = c.post("/files?path=%FFraw.bin", files={"file": ("f", b"latin")})
        assert r.status_code == 200, r.text
        assert c.get("/files?path=%FFraw.bin").content == b"latin"
    assert (
        sbx.commands.run("ls /home/user | od -c | grep -c '377   r   a   w'").stdout.strip() == "1"
    )


def _fds_naming(pid: int, needle: str) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if needle in target:
            found.append(target)
    return found


def test_upload_cut_off_mid_body_leaks_nothing(make_sandbox: Any, e2e_server: ShoalServer) -> None:
    sbx = make_sandbox()
    assert e2e_server.proc is not None
    pid = e2e_server.proc.pid
    name = f"cut-{secrets.token_hex(4)}.bin"
    host, port = e2e_server.sandbox_url.removeprefix("http://").split(":")
    sent = 3 << 20
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            (
                f"POST /files?path={name} HTTP/1.1\r\nHost: {host}\r\n"
                f"E2b-Sandbox-Id: {sbx.sandbox_id}\r\nE2b-Sandbox-Port: 49983\r\n"
                f"X-Access-Token: {sbx._envd_access_token or ''}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n"
            ).encode()
        )
        s.sendall(b"z" * sent)
        # Wait until the server has written what it got, then hang up mid-body.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            size = sbx.commands.run(f"stat -c %s {name} 2>/dev/null || echo 0").stdout.strip()
            if int(size) >= sent - (1 << 20):
                break
            time.sleep(0.1)
    deadline = time.monotonic() + 30
    while _fds_naming(pid, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fds_naming(pid, name) == []
    # The partial file remains (as upstream); the server keeps serving.
    size = int(sbx.commands.run(f"stat -c %s {name}").stdout.strip())
    assert 0 < size <= sent
    sbx.files.write(name, "whole")
    assert sbx.files.read(name) == "whole"


def test_header_less_signed_url_for_a_killed_sandbox(make_sandbox: Any) -> None:
    sbx = make_sandbox(secure=True)
    sbx.files.write("k.txt", "k")
    url = sbx.download_url("k.txt")
    assert httpx.get(url, trust_env=False).text == "k"
    sbx.kill()
    r = httpx.get(url, trust_env=False)
    assert r.status_code in (401, 502)
    assert json.loads(r.text)["code"] == r.status_code
