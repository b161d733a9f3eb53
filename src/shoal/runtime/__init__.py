"""Runtime: the only part of Shoal that touches namespaces, cgroups, mounts and the OCI runtime.

See ``docs/ARCHITECTURE.md`` (Runtime) for the pieces: OCI bundles run by ``crun``,
per-sandbox overlay root filesystems, and ``shoal-init``, the tiny pid 1 of every
sandbox that spawns processes on the node agent's behalf.
"""
