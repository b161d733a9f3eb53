"""envd's ``filesystem.Filesystem`` Connect service (e2b-compat §4.3), run host-side.

Every path is resolved with :mod:`shoal.envd.paths` and touched only through the sandbox's
:class:`~shoal.runtime.rootfs.RootFS` (``openat2`` with ``RESOLVE_IN_ROOT``), so nothing code
in a sandbox plants (symlinks, ``..``) reaches a host file or another sandbox.

One module per RPC group: ``stat``, ``make_dir``, ``move``, ``list_dir``, ``remove``;
``entry`` builds ``EntryInfo``; ``watch`` holds watchers (WatchDir and the polling
CreateWatcher / GetWatcherEvents / RemoveWatcher).
"""

from shoal.envd.filesystem.service import FilesystemService

__all__ = ["FilesystemService"]
