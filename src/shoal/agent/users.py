"""Users and groups as a sandbox's own ``/etc/passwd`` and ``/etc/group`` define them."""

from __future__ import annotations

from shoal.envd.sandbox import User
from shoal.runtime.rootfs import RootFS


def parse_passwd(text: str) -> dict[str, tuple[int, int, str]]:
    users: dict[str, tuple[int, int, str]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or not parts[0] or parts[0].startswith("#"):
            continue
        try:
            users[parts[0]] = (int(parts[2]), int(parts[3]), parts[5] or "/")
        except ValueError:
            continue
    return users


def parse_groups(text: str, name: str) -> list[int]:
    gids: list[int] = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4:
            continue
        if name in parts[3].split(","):
            try:
                gids.append(int(parts[2]))
            except ValueError:
                continue
    return gids


def lookup_user(fs: RootFS, name: str) -> User | None:
    """Read the sandbox's files through its :class:`RootFS`: a planted symlink cannot make
    the host parse one of its own files, nor open one of its devices."""
    if not name or ":" in name or "\n" in name:
        return None
    try:
        passwd = fs.read_small("/etc/passwd", 1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    entry = parse_passwd(passwd).get(name)
    if entry is None:
        return None
    uid, gid, home = entry
    try:
        group = fs.read_small("/etc/group", 1 << 20).decode("utf-8", "replace")
        groups = parse_groups(group, name)
    except OSError:
        groups = []
    if gid not in groups:
        groups.insert(0, gid)
    return User(name=name, uid=uid, gid=gid, home=home, groups=groups)
