"""Which sandbox and port a data-plane request is for.

Like E2B's own proxy: the ``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port`` headers first (what
clients send with ``E2B_SANDBOX_URL``), then a ``<port>-<sandbox_id>.<domain>`` Host.
"""

from __future__ import annotations

from starlette.types import Scope

from shoal.ids import is_sandbox_id

ENVD_PORT = 49983
INTERPRETER_PORT = 49999


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value  # type: ignore[no-any-return]
    return None


def route_of(scope: Scope) -> tuple[str, int] | None:
    sandbox_id = _header(scope, b"e2b-sandbox-id")
    if sandbox_id is not None:
        port_raw = _header(scope, b"e2b-sandbox-port") or str(ENVD_PORT).encode()
        try:
            port = int(port_raw)
        except ValueError:
            return None
        sid = sandbox_id.decode("latin-1").strip()
        if not (0 < port < 65536) or not is_sandbox_id(sid):
            return (sid, port) if sid and 0 < port < 65536 else None
        return sid, port
    host = _header(scope, b"host")
    if host is None:
        return None
    label = host.decode("latin-1").split(":", 1)[0].split(".", 1)[0]
    port_s, sep, sid = label.partition("-")
    if not sep or not port_s.isdigit() or not is_sandbox_id(sid):
        return None
    port = int(port_s)
    if not 0 < port < 65536:
        return None
    return sid, port
