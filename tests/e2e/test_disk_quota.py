"""Disk limit (item 3 of the files issue): a sandbox cannot write more than its
``diskSizeMB``. Past it, commands get "No space left on device"; ``df`` inside shows the limit;
other sandboxes and the host do not notice; killing the sandbox gives the space back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hoststate import wait_for
from sandbox_exec import sh
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]

MB = 1024 * 1024


def disk_mb(server: ShoalServer, sandbox_id: str) -> int:
    with server.api() as api:
        r = api.get(f"/sandboxes/{sandbox_id}")
        assert r.status_code == 200, r.text
        return int(r.json()["diskSizeMB"])


def image_of(server: ShoalServer, sandbox_id: str) -> Path:
    return server.data_dir / "sandboxes" / sandbox_id / "disk.img"


def loops_backed_by(directory: Path) -> list[str]:
    """Loop devices whose backing file lies in ``directory``."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(f"{directory}/"):
            found.append(dev.name)
    return found


def fill(sbx: Any, size_mb: int, *, path: str = "big", user: str | None = None) -> tuple[int, str]:
    """dd ``size_mb`` of zeros to ``path``; (exit code, stderr)."""
    rc, _out, err = sh(
        sbx, f"dd if=/dev/zero of={path} bs=1M count={size_mb} conv=fsync", user=user, timeout=120
    )
    return rc, err


def file_mb(sbx: Any, path: str) -> float:
    rc, out, err = sh(sbx, f"stat -c %s {path}")
    assert rc == 0, err
    return int(out) / MB


def test_writing_past_the_disk_size_fails_with_enospc_and_stops_at_the_limit(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx = make_sandbox()
    disk = disk_mb(e2e_server, sbx.sandbox_id)
    assert disk == 1024
    rc, err = fill(sbx, disk + 100)
    assert rc != 0
    assert "No space left on device" in err
    assert disk * 0.9 <= file_mb(sbx, "big") <= disk
    # The sandbox carries on, and deleting gives the space back.
    assert sh(sbx, "echo still-here")[1] == "still-here\n"
    rc, err = fill(sbx, 10, path="more")
    assert rc != 0 and "No space left on device" in err
    assert sh(sbx, "rm big more && echo x > small && cat small")[1] == "x\n"
    rc, err = fill(sbx, disk // 2, path="half")
    assert rc == 0, err


def test_root_in_the_sandbox_cannot_go_past_it_either(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx = make_sandbox()
    disk = disk_mb(e2e_server, sbx.sandbox_id)
    rc, _out, err = sh(sbx, f"fallocate -l {disk + 100}M /big", user="root")
    assert rc != 0 and "No space left on device" in err
    # (ext4 keeps what fallocate got before it failed.)
    assert sh(sbx, "rm /big", user="root")[0] == 0
    rc, err = fill(sbx, disk + 100, path="/var/big", user="root")
    assert rc != 0 and "No space left on device" in err
    assert file_mb(sbx, "/var/big") <= disk


def test_df_shows_the_disk_size(make_sandbox: Callable[..., Any], e2e_server: ShoalServer) -> None:
    sbx = make_sandbox()
    disk = disk_mb(e2e_server, sbx.sandbox_id)
    for where in ("/", "/home/user", "/tmp"):
        rc, out, err = sh(sbx, f"df -m --output=size,avail {where} | tail -1")
        assert rc == 0, err
        size, avail = (int(x) for x in out.split())
        assert disk * 0.95 <= size <= disk, (where, out)
        assert avail >= disk * 0.9, (where, out)


def test_a_full_sandbox_does_not_disturb_others_or_the_host(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    full, other = make_sandbox(), make_sandbox()
    disk = disk_mb(e2e_server, full.sandbox_id)
    rc, err = fill(full, disk + 100)
    assert rc != 0 and "No space left on device" in err
    # On the host the full sandbox occupies what it wrote, not more.
    image = image_of(e2e_server, full.sandbox_id)
    assert os.stat(image).st_blocks * 512 <= disk * MB
    # The other sandbox still has its whole disk.
    rc, err = fill(other, disk - 100)
    assert rc == 0, err
    assert file_mb(other, "big") == disk - 100
    # And the node still creates sandboxes and writes its own files.
    third = make_sandbox()
    assert sh(third, "echo fine > f && cat f")[1] == "fine\n"


def test_killing_a_sandbox_frees_its_space(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx = make_sandbox()
    disk = disk_mb(e2e_server, sbx.sandbox_id)
    rc, _ = fill(sbx, disk + 100)
    assert rc != 0
    directory = e2e_server.data_dir / "sandboxes" / sbx.sandbox_id
    assert len(loops_backed_by(directory)) == 1
    assert sbx.kill() is True
    assert not directory.exists()
    # The image's loop device goes once its filesystem is released; then its blocks are free.
    assert wait_for(lambda: loops_backed_by(directory) == [], timeout=30)
    # The next sandbox starts with its whole disk.
    nxt = make_sandbox()
    rc, _out, err = sh(nxt, "df -m --output=used / | tail -1")
    assert rc == 0 and int(_out) < 16, (_out, err)
    rc, err = fill(nxt, disk - 100)
    assert rc == 0, err


def test_the_limit_and_the_data_survive_a_restart(fresh_server: ShoalServer) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create()
    disk = disk_mb(fresh_server, sbx.sandbox_id)
    rc, err = fill(sbx, 100, path="kept")
    assert rc == 0, err
    fresh_server.stop()
    fresh_server.start()
    again = Sandbox.connect(sbx.sandbox_id)
    assert file_mb(again, "kept") == 100
    rc, err = fill(again, disk, path="big")
    assert rc != 0 and "No space left on device" in err
    directory = fresh_server.data_dir / "sandboxes" / sbx.sandbox_id
    assert again.kill() is True
    assert wait_for(lambda: loops_backed_by(directory) == [], timeout=30)
