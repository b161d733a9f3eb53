"""mount(2) and umount2(2) straight from libc: 0.17 ms instead of mount(8)'s 2 ms, which
matters on the create path (an overlay and a disk per sandbox)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
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

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 2


def mount(
    source: str, target: str | os.PathLike[str], fstype: str, flags: int, data: str | bytes
) -> None:
    raw = data.encode() if isinstance(data, str) else data
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, raw) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} ({fstype}) on {target}: {os.strerror(err)}")


def unmount(target: str | os.PathLike[str]) -> None:
    """Lazily unmount ``target``; a path that is not a mount point (or is gone) is fine."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def is_mounted(target: str | os.PathLike[str]) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(" ", 6)
            if len(parts) > 4 and parts[4] == real:
                return True
    return False
