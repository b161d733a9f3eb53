"""Shifting a root filesystem's owners into a sandbox's user namespace.

Sandboxes run in a user namespace whose root is host uid ``uid_base``. A template's files,
seen through that mapping, must look owned by root, ``user`` and so on, so on disk every
uid and gid is moved up by ``uid_base``. ``chown`` drops the setuid and setgid bits (and file
capabilities), which sudo needs, so both are put back afterwards. Hard links are shifted
once, not once per name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

ID_COUNT = 65536
"""Ids a sandbox's user namespace maps; an id at or past this cannot be shifted."""

_CAPABILITY_XATTR = "security.capability"


@dataclass
class ShiftStats:
    entries: int = 0
    size_bytes: int = 0
    """Apparent size of regular files, each inode counted once."""


def shift_ids(root: Path, uid_base: int) -> ShiftStats:
    """Add ``uid_base`` to the uid and gid of ``root`` and everything below it.

    Symlinks are changed themselves, never followed. Raises ``ValueError`` (before
    changing anything at that entry) for an id that the namespace cannot map, which also
    catches a tree that was shifted already.
    """
    stats = ShiftStats()
    seen: set[tuple[int, int]] = set()
    _shift(str(root), os.lstat(root), uid_base, seen, stats)
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                _shift(entry.path, st, uid_base, seen, stats)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return stats


def _shift(
    path: str, st: os.stat_result, base: int, seen: set[tuple[int, int]], stats: ShiftStats
) -> None:
    stats.entries += 1
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir and st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
    if stat.S_ISREG(st.st_mode):
        stats.size_bytes += st.st_size
    if st.st_uid >= ID_COUNT or st.st_gid >= ID_COUNT:
        raise ValueError(
            f"{path} is owned by {st.st_uid}:{st.st_gid}, outside the {ID_COUNT} ids "
            "a sandbox maps (already shifted?)"
        )
    is_link = stat.S_ISLNK(st.st_mode)
    caps = None
    if stat.S_ISREG(st.st_mode):
        try:
            caps = os.getxattr(path, _CAPABILITY_XATTR, follow_symlinks=False)
        except OSError:
            caps = None
    os.lchown(path, st.st_uid + base, st.st_gid + base)
    if not is_link and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        os.setxattr(path, _CAPABILITY_XATTR, caps, follow_symlinks=False)
