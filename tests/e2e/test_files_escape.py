"""The filesystem RPCs (Stat, ListDir, MakeDir, Move, Remove) never leave the sandbox.

envd serves them host-side, as root. Code in the sandbox plants symlinks to ``/``, to
``/proc/1/root``, to ``../../..`` and to host paths, and swaps directories for symlinks
while the server walks them; every operation through those must touch only the
sandbox's own files. Checked on the host: canary files stay, host paths stay unchanged,
and another sandbox's files stay out of reach.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_exec import sh
from support.server import ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]


@pytest.fixture
def canary() -> Iterator[Path]:
    """A host directory holding a file; no sandbox has anything at this path."""
    directory = Path(f"/tmp/shoal-canary-{secrets.token_hex(6)}")
    directory.mkdir()
    (directory / "canary.txt").write_text("host data\n")
    (directory / "sub").mkdir()
    (directory / "sub" / "deep.txt").write_text("deep host data\n")
    yield directory
    for path in sorted(directory.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    directory.rmdir()


def host_snapshot(canary: Path) -> dict[str, Any]:
    return {
        "root": sorted(os.listdir("/")),
        "hostname": Path("/etc/hostname").read_bytes(),
        "canary": sorted(str(p.relative_to(canary)) for p in canary.rglob("*")),
        "canary_text": (canary / "canary.txt").read_text(),
    }


def plant(sbx: Any, canary: Path) -> None:
    rc, _, err = sh(
        sbx,
        "cd /home/user && ln -s / host && ln -s /proc/1/root p && ln -s ../../.. x"
        f" && ln -s {canary} abs && ln -s {canary}/canary.txt absfile",
    )
    assert rc == 0, err


def test_stat_and_list_through_planted_links_see_only_the_sandbox(
    make_sandbox: Callable[..., Any], canary: Path
) -> None:
    sbx = make_sandbox()
    plant(sbx, canary)
    before = host_snapshot(canary)

    inside_root = sorted(sh(sbx, "ls -A /")[1].split())
    for through in ("host", "x"):
        listed = sbx.files.list(through)
        assert sorted(e.name for e in listed if "/" not in e.name) == inside_root
        assert all(e.path.startswith(f"/home/user/{through}/") for e in listed)
    # The host's /etc/hostname is not the sandbox's: sizes differ or contents do.
    inside_hostname = sh(sbx, "stat -c %s /etc/hostname")[1].strip()
    assert sbx.files.get_info("host/etc/hostname").size == int(inside_hostname)
    assert sbx.files.get_info("host").symlink_target == "/"
    assert sbx.files.get_info("x").symlink_target == "/"
    # /proc/1/root is a magic link inside; from the host's view of the root it is nothing.
    assert sbx.files.get_info("p").type is None
    assert sbx.files.exists("p/etc/hostname") is False
    # Absolute links to host paths resolve inside the sandbox, where nothing is.
    # (The links themselves exist, as links: lstat, like upstream.)
    for path in ("abs/canary.txt", "abs/sub", f"host{canary}", f"x{canary}/canary.txt"):
        assert sbx.files.exists(path) is False, path
    assert sbx.files.get_info("abs").symlink_target == "/home/user/abs"  # dangling
    with pytest.raises(Exception, match=r"not found|does not exist|no such"):
        sbx.files.list(f"host{canary}")
    with pytest.raises(Exception, match=r"not found|does not exist|no such"):
        sbx.files.list("abs", depth=3)
    deep = sbx.files.list("host/home", depth=4)
    assert all(e.path.startswith("/home/user/host/home/") for e in deep)
    assert host_snapshot(canary) == before


def test_remove_through_planted_links_removes_only_sandbox_files(
    make_sandbox: Callable[..., Any], canary: Path
) -> None:
    sbx = make_sandbox()
    plant(sbx, canary)
    before = host_snapshot(canary)

    sbx.files.remove("host/etc/hostname")
    assert sh(sbx, "test -e /etc/hostname")[0] != 0  # the sandbox's own file went
    for path in (
        f"host{canary}/canary.txt",
        f"x{canary}",
        "abs/canary.txt",
        "abs/sub",
        "absfile",  # removes the link itself
        "abs",
        "p/etc",
        "p",
    ):
        sbx.files.remove(path)
    sbx.files.remove("host")  # the link, not what it points at
    sbx.files.remove("x")
    left = sh(sbx, "ls -A /home/user")[1].split()
    assert not {"host", "x", "p", "abs", "absfile"} & set(left)
    assert {"etc", "usr", "home"} <= set(sh(sbx, "ls /")[1].split())
    assert host_snapshot(canary) == before


def test_move_and_make_dir_through_planted_links_land_in_the_sandbox(
    make_sandbox: Callable[..., Any], canary: Path
) -> None:
    sbx = make_sandbox()
    plant(sbx, canary)
    before = host_snapshot(canary)
    name = f"moved-{secrets.token_hex(4)}"

    sh(sbx, "printf payload > /home/user/f.txt")
    info = sbx.files.rename("f.txt", f"host/tmp/{name}")
    assert info.path == f"/home/user/host/tmp/{name}"
    assert sh(sbx, f"cat /tmp/{name}")[1] == "payload"
    assert not Path(f"/tmp/{name}").exists()
    with pytest.raises(Exception, match=r"not found|does not exist|no such"):
        sbx.files.rename(f"host{canary}/canary.txt", "stolen.txt")
    # Moving a dangling link moves the link; its host-looking target is not touched.
    sbx.files.rename("absfile", "renamed-link")
    assert sh(sbx, "readlink /home/user/renamed-link")[1].strip() == f"{canary}/canary.txt"
    # Parents a move creates, and make_dir, resolve "host" and "abs" inside the sandbox,
    # where the canary's path can exist too: as the sandbox's own directory.
    assert sh(sbx, f"mkdir -p {canary}")[0] == 0
    sh(sbx, "printf x > /home/user/g.txt")
    sbx.files.rename("g.txt", f"abs/new/{name}.txt")
    assert sh(sbx, f"cat {canary}/new/{name}.txt")[1] == "x"
    assert sbx.files.make_dir(f"host{canary}/made/deeper") is True
    assert sbx.files.make_dir("x/made-at-root") is True
    assert sh(sbx, f"test -d {canary}/made/deeper && test -d /made-at-root")[0] == 0
    assert not Path("/made-at-root").exists()
    assert host_snapshot(canary) == before


def test_another_sandboxs_files_are_unreachable(
    make_sandbox: Callable[..., Any], e2e_server: ShoalServer
) -> None:
    sbx, other = make_sandbox(), make_sandbox()
    secret = f"secret-{secrets.token_hex(4)}"
    assert sh(other, f"printf top-secret > /home/user/{secret}")[0] == 0
    other_root = e2e_server.data_dir / "sandboxes" / other.sandbox_id / "rootfs"
    assert (other_root / "home" / "user" / secret).read_text() == "top-secret"
    assert sh(sbx, f"ln -s {other_root} /home/user/other && ln -s / /home/user/host")[0] == 0
    for path in (
        f"{other_root}/home/user/{secret}",
        f"other/home/user/{secret}",
        f"/home/user/host{other_root}/home/user/{secret}",
    ):
        assert sbx.files.exists(path) is False, path
        sbx.files.remove(path)
    with pytest.raises(Exception, match=r"not found|does not exist|no such"):
        sbx.files.rename(f"other/home/user/{secret}", "stolen")
    assert (other_root / "home" / "user" / secret).read_text() == "top-secret"
    assert [e.name for e in other.files.list("/home/user") if e.name == secret] == [secret]


def test_swapping_directories_for_symlinks_during_walks_never_escapes(
    make_sandbox: Callable[..., Any], canary: Path
) -> None:
    """A loop in the sandbox keeps turning ``race/d`` (a directory tree) into a symlink
    to the host canary's path and back, while the server lists and removes it."""
    sbx = make_sandbox()
    before = host_snapshot(canary)
    swap = (
        "cd /home/user && mkdir -p race && cd race && end=$((SECONDS+30)); "
        "while [ $SECONDS -lt $end ]; do "
        "mkdir -p d/sub/subsub && touch d/f d/sub/g d/sub/subsub/h; rm -rf d; "
        f"ln -sfn {canary} d; ln -sfn {canary}/sub d/sub 2>/dev/null; rm -f d; "
        "mkdir -p d && ln -sfn / d/sub; rm -rf d; done"
    )
    handle = sbx.commands.run(swap, background=True, timeout=60)
    try:
        for _ in range(150):
            try:
                entries = sbx.files.list("race", depth=4)
            except Exception:
                entries = []
            for e in entries:
                assert e.path.startswith("/home/user/race/")
                assert "canary" not in e.name and "deep" not in e.name
            try:
                sbx.files.remove("race/d")
            except Exception:
                pass
            try:
                sbx.files.remove("race/d/sub")
            except Exception:
                pass
    finally:
        handle.kill()
    assert host_snapshot(canary) == before
    assert "etc" in sh(sbx, "ls /")[1].split()
