"""Per-sandbox disk limits: each sandbox's writable layer is its own ext4 filesystem of
``disk_mb``, a sparse image file on a loop device.

Past the limit, writes fail with ENOSPC ("No space left on device") whoever makes them:
code in the sandbox, or the agent writing into ``sandbox.rootfs`` for envd. ``statfs`` (so
``df``) inside the sandbox reports the limit as the size, since overlayfs answers statfs
from its upper layer. The node and other sandboxes never notice: a full sandbox has filled
only its own image, and the image holds no agent state.

Why not one filesystem with project quotas? XFS and ext4 project quotas need
``CONFIG_XFS_QUOTA`` / ``CONFIG_QFMT_V2``, which kernels built for micro-VMs (this one
included) leave out; btrfs qgroups answer EDQUOT and report the whole filesystem to
``df``. A filesystem per sandbox has neither gap and needs nothing but ``CONFIG_BLK_DEV_LOOP``
and ext4.

The create path stays near 1 ms: a formatted image of each size is made once with
``mkfs.ext4`` (a few ms, first use of a size only) and kept in ``<data_dir>/disks``; a
sandbox gets a sparse copy of it (about 150 KiB of metadata, 0.1 ms), attached with
``LOOP_CONFIGURE`` (0.5 ms) and mounted with mount(2) (0.5 ms). The loop device uses direct
I/O, so data is cached once (by the sandbox's filesystem) rather than twice, which also makes
it several times faster. It is created with autoclear: the device goes away by itself when
its filesystem is unmounted, and the image's blocks are freed when the sandbox directory is
removed. The images are sparse, so the node's disk is shared thinly: a sandbox occupies on
the host only what it has written, at most about ``disk_mb``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

from shoal.errors import InvalidArgument, RuntimeFailure
from shoal.runtime.mounts import MS_NODEV, mount, unmount

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
BLOCK_SIZE = 4096

MIN_DISK_MB = 16
"""Smaller ext4 filesystems are mostly metadata."""
MAX_CACHED_SIZES = 16
FORMAT_VERSION = 1
"""Part of the cached images' names: bump when the mkfs options change."""

MKFS_OPTIONS = [
    "-q",
    "-F",
    "-b", str(BLOCK_SIZE),
    # No blocks reserved for root: the sandbox may use all of disk_mb, and df shows it.
    "-m", "0",
    # No journal (no jbd2 thread per sandbox; a sandbox's disk does not outlive its host's
    # uptime) and no room reserved for online growth.
    "-O", "^has_journal,^resize_inode",
    # Inode tables are left unwritten (the sparse image reads as zeros); with the
    # noinit_itable mount option the kernel does not zero them in the background either.
    "-E", "lazy_itable_init=1,nodiscard",
]  # fmt: skip
MOUNT_OPTIONS = b"noinit_itable"


def _config(backing_fd: int) -> bytes:
    """``struct loop_config``: fd, block_size, ``struct loop_info64``, 64 reserved bytes."""
    info = struct.pack(
        "=5Q4I64s64s32s2Q",
        0, 0, 0, 0, 0,  # device, inode, rdevice, offset, sizelimit (0: the whole file)
        0, 0, 0, LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,  # number, encrypt type/size, flags
        b"", b"", b"", 0, 0,
    )  # fmt: skip
    return struct.pack("=II", backing_fd, BLOCK_SIZE) + info + bytes(64)


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst`` keeping its holes: only the data is copied."""
    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fo, os.fstat(fi).st_size)
            offset = 0
            while True:
                try:
                    offset = os.lseek(fi, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no data past offset
                        break
                    raise
                end = os.lseek(fi, offset, os.SEEK_HOLE)
                while offset < end:
                    n = os.copy_file_range(fi, fo, end - offset, offset, offset)
                    if n == 0:
                        raise RuntimeFailure(f"{src} changed while being copied")
                    offset += n
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def attach_loop(image: Path) -> tuple[str, int]:
    """Attach ``image`` to a free loop device (direct I/O, autoclear).

    Returns the device path and an open fd of it: keep the fd until the filesystem is
    mounted, since with autoclear the device detaches as soon as nothing holds it."""
    ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(100):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            loop_fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(loop_fd, LOOP_CONFIGURE, _config(backing))
                finally:
                    os.close(backing)
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno == errno.EBUSY:  # another process took it first
                    continue
                raise
            return dev, loop_fd
    finally:
        os.close(ctl)
    raise RuntimeFailure("no free loop device")


def mount_image(image: Path, target: Path) -> None:
    """Mount the ext4 image ``image`` on ``target`` through a new loop device."""
    dev, loop_fd = attach_loop(image)
    try:
        mount(dev, target, "ext4", MS_NODEV, MOUNT_OPTIONS)
    finally:
        os.close(loop_fd)  # the mount holds the device now; without it, it detaches


def _mkfs_binary() -> str:
    found = shutil.which("mkfs.ext4") or next(
        (p for p in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeFailure("mkfs.ext4 not found (Debian package e2fsprogs)")
    return found


class SandboxDisks:
    """Makes and mounts per-sandbox disks; formatted images are cached in ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if not os.path.exists(LOOP_CONTROL):
            raise RuntimeFailure(
                f"{LOOP_CONTROL} is missing: sandboxes' disks need loop devices "
                "(CONFIG_BLK_DEV_LOOP)"
            )

    def formatted(self, size_mb: int) -> Path:
        """The cached empty ext4 image of ``size_mb``, made now if needed."""
        if size_mb < MIN_DISK_MB:
            raise InvalidArgument(f"disk size must be at least {MIN_DISK_MB} MB, not {size_mb}")
        path = self.cache_dir / f"ext4-v{FORMAT_VERSION}-{size_mb}mb.img"
        if path.exists():
            return path
        with self._lock:
            if path.exists():
                return path
            self._evict()
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.truncate(size_mb * 1024 * 1024)
                r = subprocess.run(
                    [_mkfs_binary(), *MKFS_OPTIONS, str(tmp)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if r.returncode != 0:
                    raise RuntimeFailure(f"mkfs.ext4 failed: {r.stderr.strip() or r.stdout}")
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return path

    def _evict(self) -> None:
        """Keep at most MAX_CACHED_SIZES formatted images (the oldest go)."""
        images = sorted(self.cache_dir.glob("ext4-*.img"), key=lambda p: p.stat().st_mtime)
        for old in images[: max(0, len(images) - MAX_CACHED_SIZES + 1)]:
            with contextlib.suppress(OSError):
                old.unlink()

    def create(self, image: Path, mount_point: Path, size_mb: int) -> None:
        """Make ``image`` (a new ``size_mb`` filesystem) and mount it on ``mount_point``."""
        copy_sparse(self.formatted(size_mb), image)
        mount_image(image, mount_point)


def loop_device_of(mount_point: Path) -> str | None:
    """The loop device mounted on ``mount_point`` (None if none is)."""
    real = os.path.realpath(mount_point)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            if head.split()[4] == real:
                source = tail.split()[1]
                return source if source.startswith("/dev/loop") else None
    return None


def release_image(mount_point: Path, image: Path, dest: Path, wait: float = 2.0) -> None:
    """Unmount the disk on ``mount_point`` (nothing may use it any more; mounts on top of
    it must be gone) and move its ``image`` to ``dest``, complete: the filesystem is synced
    first, and the image is moved only once its loop device let go of it (else copied)."""
    loop = loop_device_of(mount_point)
    if loop is not None:
        fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # ext4: fsync of a directory fd commits the journal
            _syncfs(fd)
        finally:
            os.close(fd)
    unmount(mount_point)
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file") if loop else None
    deadline = time.monotonic() + wait
    while backing is not None and backing.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if backing is None or not backing.exists():
        try:
            os.rename(image, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    copy_sparse(image, dest)  # synced, and nothing writes to it any more


_libc = ctypes.CDLL(None, use_errno=True)


FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def copy_frozen(mount_point: Path, image: Path, dest: Path) -> None:
    """Copy the image of a mounted disk consistently: FIFREEZE flushes the filesystem and
    holds every writer (in the sandbox and host-side alike) until it is thawed."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        try:
            copy_sparse(image, dest)
        finally:
            fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


__all__ = [
    "MIN_DISK_MB",
    "SandboxDisks",
    "attach_loop",
    "copy_frozen",
    "copy_sparse",
    "loop_device_of",
    "mount_image",
    "release_image",
    "unmount",
]
