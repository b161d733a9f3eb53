"""Per-sandbox disks (runtime/quota.py) on throwaway images: the limit holds, with ENOSPC,
through overlayfs too; statfs reports it; unmounting frees the loop device."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.errors import InvalidArgument
from shoal.runtime import overlay, quota
from shoal.runtime.quota import SandboxDisks

pytestmark = pytest.mark.root

MB = 1024 * 1024


def loop_backing(image: Path) -> list[str]:
    """Loop devices whose backing file is ``image``."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == str(image):
            found.append(dev.name)
    return found


def loop_direct_io(image: Path) -> bool:
    [dev] = loop_backing(image)
    return (Path("/sys/block") / dev / "loop" / "dio").read_text().strip() == "1"


def eventually(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def fill(path: Path, limit_mb: int) -> tuple[int, OSError | None]:
    """Write zeros to ``path`` until an error or ``limit_mb``; bytes written and the error."""
    written = 0
    chunk = b"\0" * MB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while written < limit_mb * MB:
            written += os.write(fd, chunk)
        os.fsync(fd)
    except OSError as exc:
        return written, exc
    finally:
        os.close(fd)
    return written, None


@pytest.fixture
def disks(tmp_path: Path) -> SandboxDisks:
    return SandboxDisks(tmp_path / "cache")


@pytest.fixture
def mounted(tmp_path: Path, disks: SandboxDisks) -> Iterator[Path]:
    """A 64 MB disk mounted at tmp_path/disk."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    disks.create(tmp_path / "disk.img", mnt, 64)
    yield mnt
    quota.unmount(mnt)


def test_writes_past_the_size_fail_with_enospc(mounted: Path, tmp_path: Path) -> None:
    written, err = fill(mounted / "big", 200)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC, err
    assert 56 * MB <= written <= 64 * MB
    st = os.statvfs(mounted)
    assert 56 <= st.f_blocks * st.f_frsize // MB <= 64  # less ext4 metadata
    assert st.f_bavail * st.f_frsize < MB
    # On the host the image holds what was written, not more.
    image = tmp_path / "disk.img"
    assert os.stat(image).st_size == 64 * MB
    assert os.stat(image).st_blocks * 512 <= 65 * MB
    assert loop_direct_io(image)


def test_the_limit_holds_through_overlayfs(mounted: Path, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "template-file").write_bytes(b"x" * (8 * MB))
    upper, work, merged = mounted / "upper", mounted / "work", tmp_path / "merged"
    for p in (upper, work, merged):
        p.mkdir()
    overlay.mount_overlay(str(lower), str(upper), str(work), str(merged))
    try:
        st = os.statvfs(merged)
        assert 56 <= st.f_blocks * st.f_frsize // MB <= 64  # less ext4 metadata
        # A template file is copied up into the disk and counts against it.
        with open(merged / "template-file", "ab") as f:
            f.write(b"y")
        assert (upper / "template-file").stat().st_size == 8 * MB + 1
        written, err = fill(merged / "big", 200)
        assert isinstance(err, OSError) and err.errno == errno.ENOSPC, err
        assert 48 * MB <= written <= 56 * MB
        # Deleting frees the space again.
        (merged / "big").unlink()
        written, err = fill(merged / "again", 16)
        assert err is None and written == 16 * MB
    finally:
        overlay.unmount(str(merged))


def test_disks_are_independent(disks: SandboxDisks, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    disks.create(tmp_path / "a.img", a, 32)
    disks.create(tmp_path / "b.img", b, 32)
    try:
        _, err = fill(a / "big", 100)
        assert err is not None and err.errno == errno.ENOSPC
        written, err = fill(b / "f", 16)
        assert err is None and written == 16 * MB
    finally:
        quota.unmount(a)
        quota.unmount(b)


def test_unmounting_detaches_the_loop_device(disks: SandboxDisks, tmp_path: Path) -> None:
    mnt, image = tmp_path / "m", tmp_path / "m.img"
    mnt.mkdir()
    disks.create(image, mnt, 32)
    assert len(loop_backing(image)) == 1
    assert overlay.is_mounted(str(mnt))
    quota.unmount(mnt)
    assert not overlay.is_mounted(str(mnt))
    assert eventually(lambda: loop_backing(image) == [])
    quota.unmount(mnt)  # idempotent
    quota.unmount(tmp_path / "missing")


def test_formatted_images_are_cached_and_copied_sparse(disks: SandboxDisks, tmp_path: Path) -> None:
    first = disks.formatted(1024)
    assert disks.formatted(1024) == first
    copy = tmp_path / "copy.img"
    quota.copy_sparse(first, copy)
    assert os.stat(copy).st_size == 1024 * MB
    assert os.stat(copy).st_blocks * 512 < 4 * MB
    with open(first, "rb") as f, open(copy, "rb") as g:
        assert f.read(MB) == g.read(MB)  # the superblock and group descriptors


def test_too_small_a_disk_is_refused(disks: SandboxDisks) -> None:
    with pytest.raises(InvalidArgument):
        disks.formatted(quota.MIN_DISK_MB - 1)
