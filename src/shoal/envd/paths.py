"""Path resolution as envd does it, for every filesystem RPC and ``/files``.

``~`` and ``~/x`` are the run-as user's home; an empty path is the sandbox's default
working directory (the user's home when the template sets none); a relative path is
joined to the user's **home** (not a cwd); the result is absolute and lexically clean.

    >>> resolve("a.txt", home="/home/user", workdir=None)
    '/home/user/a.txt'
    >>> resolve("~/x/../y", home="/home/user", workdir=None)
    '/home/user/y'

The result is what clients see (``EntryInfo.path``); it is opened on the host only through
:mod:`shoal.runtime.rootfs`, inside the sandbox's own root.
"""

from __future__ import annotations

import posixpath

from shoal.errors import InvalidArgument

MAX_PATH = 4096


def resolve(path: str, *, home: str, workdir: str | None) -> str:
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise InvalidArgument(f"path is longer than {MAX_PATH} bytes")
    if path == "":
        path = workdir or home
    elif path == "~":
        path = home
    elif path.startswith("~/"):
        path = posixpath.join(home, path[2:])
    elif not path.startswith("/"):
        path = posixpath.join(home, path)
    clean = posixpath.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it a meaning); Linux gives it none.
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    return clean
