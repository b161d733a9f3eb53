"""What a failed system call on a sandbox file means to a client: one mapping, used by
the filesystem RPCs and ``/files`` alike.

    >>> os_error(FileNotFoundError(2, "No such file or directory"), "/home/user/x", "stat")
    NotFound('stat /home/user/x: no such file or directory')

The message reads like Go's ``*PathError`` (``<op> <path>: <reason>``), as upstream envd's do.
"""

from __future__ import annotations

import errno

from shoal.errors import (
    AlreadyExists,
    Forbidden,
    InvalidArgument,
    NoSpace,
    NotFound,
    ShoalError,
)


class FailedPrecondition(ShoalError):
    """E.g. a symlink cycle where a directory was expected (upstream: ``failed_precondition``)."""

    status, code = 400, "failed_precondition"


_BY_ERRNO: dict[int, type[ShoalError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOTEMPTY: AlreadyExists,
    errno.ENOTDIR: InvalidArgument,
    errno.EISDIR: InvalidArgument,
    errno.ENAMETOOLONG: InvalidArgument,
    errno.EINVAL: InvalidArgument,
    errno.ELOOP: InvalidArgument,
    errno.EACCES: Forbidden,
    errno.EPERM: Forbidden,
    errno.EROFS: Forbidden,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
}


def os_error(exc: OSError, path: str, op: str) -> ShoalError:
    """The :class:`~shoal.errors.ShoalError` for ``exc`` raised while doing ``op`` on
    ``path`` (a sandbox path: never a host one). Unknown errnos are internal errors;
    the original stays as ``__cause__``."""
    reason = (exc.strerror or str(exc)).lower()
    kind = _BY_ERRNO.get(exc.errno or 0, ShoalError)
    err = kind(f"{op} {path}: {reason}")
    err.__cause__ = exc
    return err
