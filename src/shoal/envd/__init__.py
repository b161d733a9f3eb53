"""envd-compatible services for every sandbox on a node: Connect ``process.Process``
(and later ``filesystem.Filesystem``), ``/health`` and ``/files``.

They run in the node agent, not inside the sandbox: processes are started inside the
sandbox by its ``shoal-init`` through a :class:`shoal.runtime.process.ProcessSpawner`.
Requests name their sandbox with the ``E2b-Sandbox-Id`` header set by the proxy.
"""
