"""``EntryInfo`` exactly as upstream envd builds it (e2b-compat §4.3).

From the ``lstat`` of the path: ``name``, ``path`` (as requested, symlinks not resolved),
``size``, ``permissions`` (Go's ``FileMode.String()``: ``Lrwxrwxrwx`` for a symlink),
``owner``/``group`` (names from the sandbox's own ``/etc/passwd`` and ``/etc/group``),
``modified_time``. From what the path finally resolves to (itself unless a symlink):
``type``, ``mode`` (permission bits only) and ``metadata`` (``user.e2b.*`` xattrs). A
symlink also gets ``symlink_target``, the absolute resolved path inside the sandbox; a
dangling or cyclic one has itself as target, type ``FILE_TYPE_UNSPECIFIED`` and mode 0, as
upstream reports it. ``is_symlink`` is never set (upstream does not have it).

All of it is blocking I/O: run it in a worker thread.
"""

from __future__ import annotations

import os
import posixpath
import stat

from protobuf.wkt import Timestamp

from shoal.runtime.oci import ID_RANGE
from shoal.runtime.rootfs import RootFS, fd_xattrs
from shoal.wire.envd import filesystem_pb as pb

METADATA_PREFIX = "user.e2b."
OVERFLOW_ID = 65534
"""What the kernel shows inside a user namespace for an id it does not map."""

# Go's os.FileMode type bits, in the order FileMode.String() prints them ("dalTLDpSugct?").
_GO_TYPE_LETTERS = "dalTLDpSugct?"
_RWX = "rwxrwxrwx"


def go_mode_string(st_mode: int) -> str:
    """``os.FileMode.String()`` of what Go's ``os.Lstat`` makes of ``st_mode``.

    >>> go_mode_string(0o100644), go_mode_string(0o40755), go_mode_string(0o120777)
    ('-rw-r--r--', 'drwxr-xr-x', 'Lrwxrwxrwx')
    >>> go_mode_string(0o41777), go_mode_string(0o104755), go_mode_string(0o20620)
    ('dtrwxrwxrwx', 'urwxr-xr-x', 'Dcrw--w----')
    """
    fmt = stat.S_IFMT(st_mode)
    letters = {
        stat.S_IFDIR: "d",
        stat.S_IFLNK: "L",
        stat.S_IFBLK: "D",
        stat.S_IFCHR: "Dc",
        stat.S_IFIFO: "p",
        stat.S_IFSOCK: "S",
    }.get(fmt, "")
    if st_mode & stat.S_ISUID:
        letters += "u"
    if st_mode & stat.S_ISGID:
        letters += "g"
    if st_mode & stat.S_ISVTX:
        letters += "t"
    # Go prints set type bits in one fixed order, whatever order we found them in.
    prefix = "".join(c for c in _GO_TYPE_LETTERS if c in letters) or "-"
    perms = "".join(c if st_mode & (1 << (8 - i)) else "-" for i, c in enumerate(_RWX))
    return prefix + perms


def file_type(st_mode: int) -> pb.FileType:
    if stat.S_ISREG(st_mode):
        return pb.FileType.FILE
    if stat.S_ISDIR(st_mode):
        return pb.FileType.DIRECTORY
    if stat.S_ISLNK(st_mode):
        return pb.FileType.SYMLINK
    return pb.FileType.UNSPECIFIED


def text(value: str) -> str:
    """``value`` safe for a proto string: bytes that are not UTF-8 (file names on disk can
    be anything; Python hands them over as surrogate escapes) become U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def sandbox_id(host_id: int, uid_base: int) -> int:
    """The id the sandbox sees for a host uid/gid (its overflow id when unmapped)."""
    inside = host_id - uid_base
    return inside if 0 <= inside < ID_RANGE else OVERFLOW_ID


class Names:
    """User and group names as the sandbox's own ``/etc/passwd`` and ``/etc/group`` give
    them (first entry wins, as Go's lookup does); the numeric id when there is none.
    Read once, lazily, per request."""

    def __init__(self, fs: RootFS, uid_base: int) -> None:
        self._fs = fs
        self._uid_base = uid_base
        self._users: dict[int, str] | None = None
        self._groups: dict[int, str] | None = None

    def owner(self, host_uid: int) -> str:
        if self._users is None:
            self._users = self._read("/etc/passwd")
        uid = sandbox_id(host_uid, self._uid_base)
        return self._users.get(uid, str(uid))

    def group(self, host_gid: int) -> str:
        if self._groups is None:
            self._groups = self._read("/etc/group")
        gid = sandbox_id(host_gid, self._uid_base)
        return self._groups.get(gid, str(gid))

    def _read(self, path: str) -> dict[int, str]:
        try:
            content = self._fs.read_small(path, 4 << 20).decode("utf-8", "replace")
        except OSError:
            return {}
        return parse_ids(content)


def parse_ids(content: str) -> dict[int, str]:
    """``id → name`` of a passwd or group file.

    >>> parse_ids("root:x:0:0::/root:/bin/bash\\n# c\\nuser:x:1000:1000::/home/user:/bin/sh\\n")
    {0: 'root', 1000: 'user'}
    """
    ids: dict[int, str] = {}
    for line in content.splitlines():
        parts = line.split(":")
        if len(parts) < 3 or not parts[0] or parts[0].startswith(("#", "+", "-")):
            continue
        try:
            ids.setdefault(int(parts[2]), parts[0])
        except ValueError:
            continue
    return ids


def metadata(fd: int) -> dict[str, str]:
    """``user.e2b.<key>`` xattrs as ``{key: value}``; entries that are not UTF-8 (possible
    when set from inside the sandbox) are skipped, as upstream does."""
    found: dict[str, str] = {}
    for key, value in fd_xattrs(fd, METADATA_PREFIX).items():
        try:
            key.encode("utf-8")
            found[key] = value.decode("utf-8")
        except UnicodeError:
            continue
    return found


def build(
    fs: RootFS,
    path: str,
    fd: int,
    st: os.stat_result,
    real: str,
    names: Names,
) -> pb.EntryInfo:
    """The entry for ``path``, whose ``O_PATH | O_NOFOLLOW`` fd is ``fd`` and ``lstat``
    is ``st``; ``real`` is where it is in the sandbox (``path`` itself, or below a listed
    directory's resolved path), from which a symlink is resolved."""
    target: str | None = None
    meta: dict[str, str] = {}
    if stat.S_ISLNK(st.st_mode):
        try:
            tfd = fs.open(real, os.O_PATH)
        except OSError:
            # Dangling or cyclic: upstream's EvalSymlinks fails, it keeps the path itself.
            kind, perm, target = pb.FileType.UNSPECIFIED, 0, path
        else:
            try:
                tst = os.fstat(tfd)
                kind, perm = file_type(tst.st_mode), stat.S_IMODE(tst.st_mode) & 0o777
                target = fs.path_of(tfd) or path
                meta = metadata(tfd)
            finally:
                os.close(tfd)
    else:
        kind, perm = file_type(st.st_mode), stat.S_IMODE(st.st_mode) & 0o777
        meta = metadata(fd)
    entry = pb.EntryInfo(
        name=text(posixpath.basename(path) or "/"),
        type=kind,
        path=text(path),
        size=st.st_size,
        mode=perm,
        permissions=go_mode_string(st.st_mode),
        owner=names.owner(st.st_uid),
        group=names.group(st.st_gid),
        modified_time=Timestamp(
            seconds=st.st_mtime_ns // 1_000_000_000, nanos=st.st_mtime_ns % 1_000_000_000
        ),
        metadata=meta,
    )
    if target is not None:
        entry.symlink_target = text(target)
    return entry


def entry_for(fs: RootFS, path: str, names: Names) -> pb.EntryInfo:
    """The entry for the sandbox path ``path`` (``lstat``: a last symlink is described,
    not followed). Raises ``OSError`` (``ENOENT`` when there is nothing there)."""
    fd = fs.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        return build(fs, path, fd, st, path, names)
    finally:
        os.close(fd)
