"""Shifting owners into the sandbox's id range keeps links, hard links and setuid intact."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoal.template.ownership import shift_ids

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root"),
]

BASE = 100000


def _tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "home/user").mkdir(parents=True)
    sudo = root / "usr/bin/sudo"
    sudo.write_bytes(b"\x7fELF")
    sudo.chmod(0o4755)
    wall = root / "usr/bin/wall"
    wall.write_bytes(b"x" * 10)
    os.chown(wall, 0, 5)
    wall.chmod(0o2755)
    shared = root / "usr/bin/git"
    shared.write_bytes(b"g" * 100)
    os.link(shared, root / "usr/bin/git-upload-pack")
    os.chown(root / "home/user", 1000, 1000)
    (root / "home/user/.bashrc").write_text("# rc\n")
    os.chown(root / "home/user/.bashrc", 1000, 1000)
    os.symlink("/usr/bin/sudo", root / "usr/bin/sudo-link")
    os.symlink("/nowhere", root / "dangling")
    os.lchown(root / "dangling", 1000, 1000)
    setgid_dir = root / "var/mail"
    setgid_dir.mkdir(parents=True)
    os.chown(setgid_dir, 0, 8)
    setgid_dir.chmod(0o2775)


def test_every_entry_moves_by_uid_base_and_special_bits_survive(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    _tree(root)

    stats = shift_ids(root, BASE)

    def owner(rel: str) -> tuple[int, int]:
        st = os.lstat(root / rel) if rel else os.lstat(root)
        return st.st_uid, st.st_gid

    assert owner("") == (BASE, BASE)
    assert owner("home/user") == (BASE + 1000, BASE + 1000)
    assert owner("home/user/.bashrc") == (BASE + 1000, BASE + 1000)
    assert owner("usr/bin/sudo") == (BASE, BASE)
    assert stat.S_IMODE(os.stat(root / "usr/bin/sudo").st_mode) == 0o4755
    assert owner("usr/bin/wall") == (BASE, BASE + 5)
    assert stat.S_IMODE(os.stat(root / "usr/bin/wall").st_mode) == 0o2755
    assert owner("var/mail") == (BASE, BASE + 8)
    assert stat.S_IMODE(os.stat(root / "var/mail").st_mode) == 0o2775
    # Symlinks are changed themselves; their targets (absolute, host paths) are not followed.
    assert owner("usr/bin/sudo-link") == (BASE, BASE)
    assert owner("dangling") == (BASE + 1000, BASE + 1000)
    assert os.readlink(root / "usr/bin/sudo-link") == "/usr/bin/sudo"
    # A hard link is one inode: shifted once, not once per name.
    assert owner("usr/bin/git") == (BASE, BASE)
    assert owner("usr/bin/git-upload-pack") == (BASE, BASE)
    assert stats.entries == 14  # every name, hard links included
    assert stats.size_bytes == 4 + 10 + 100 + 5


def test_a_shifted_tree_is_refused_rather_than_shifted_twice(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "f").write_text("x")
    shift_ids(root, BASE)
    with pytest.raises(ValueError, match="already shifted"):
        shift_ids(root, BASE)
    assert os.lstat(root / "f").st_uid == BASE
