"""Host-side file access inside a sandbox root never escapes it, whatever is planted there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.runtime.rootfs import RootFS


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "home" / "user").mkdir(parents=True)
    outside = tmp_path / "host-secret"
    outside.write_text("host data")
    # What hostile code in the sandbox could plant:
    (root / "home" / "user" / "host").symlink_to("/")
    (root / "home" / "user" / "up").symlink_to("../../../..")
    (root / "home" / "user" / "abs").symlink_to(str(outside))
    (root / "home" / "user" / "proc").symlink_to("/proc/1/root")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("user:x:1000:1000::/home/user:/bin/bash\n")
    return root, outside


def test_symlinks_resolve_inside_the_root(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with RootFS(str(root), uid_base=0) as fs:
        # "/" inside is the sandbox root: host/etc/passwd is the sandbox's passwd.
        fd = fs.open("/home/user/host/etc/passwd")
        try:
            assert os.read(fd, 100).startswith(b"user:x:1000")
        finally:
            os.close(fd)
        # An absolute link to a host path resolves below the root, where nothing is.
        with pytest.raises(FileNotFoundError):
            fs.open("/home/user/abs")
        # ".." never climbs out.
        with pytest.raises(FileNotFoundError):
            fs.open(f"/home/user/up{outside}")
        # Magic links are refused outright.
        with pytest.raises(OSError):
            fs.open("/home/user/proc/etc/hostname")


@pytest.mark.root
def test_makedirs_creates_parents_owned_by_the_user_and_stays_inside(
    tree: tuple[Path, Path],
) -> None:
    root, _ = tree
    with RootFS(str(root), uid_base=100000) as fs:
        assert fs.makedirs("/home/user/a/b/c", 1000, 1000) is True
        assert fs.makedirs("/home/user/a/b/c", 1000, 1000) is False
        for p in ("a", "a/b", "a/b/c"):
            st = (root / "home" / "user" / p).stat()
            assert (st.st_uid, st.st_gid) == (101000, 101000)
        # Through a planted link to "/", creation lands inside the root too.
        fs.makedirs("/home/user/host/tmp/made-here", 1000, 1000)
        assert (root / "tmp" / "made-here").is_dir()
        assert not Path("/tmp/made-here").exists()
        (root / "home" / "user" / "file").write_text("x")
        with pytest.raises(NotADirectoryError):
            fs.makedirs("/home/user/file/sub", 1000, 1000)
