"""Per-sandbox root filesystems: the template's read-only layer under a writable overlay.

Mounted with mount(2) directly (0.17 ms) rather than through mount(8) (2 ms), since this
sits on the create path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MNT_DETACH = 2
MS_NOSUID = 0x2
MS_NODEV = 0x4


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    # redirect_dir=on: renaming a directory that comes from the template layer works
    # (without it rename(2) fails with EXDEV and only tools that fall back to copying cope).
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},xino=off,redirect_dir=on"
    if _libc.mount(b"overlay", target.encode(), b"overlay", MS_NODEV, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Lazily unmount ``target``; a path that is not a mount point is fine."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err in (22, 2):  # EINVAL: not mounted; ENOENT: gone already
            return
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def is_mounted(target: str) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(" ", 6)
            if len(parts) > 4 and parts[4] == real:
                return True
    return False
