"""Running programs in a sandbox through the official SDK, whatever their exit code."""

from __future__ import annotations

import json
from typing import Any


def sh(sbx: Any, cmd: str, *, user: str | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``cmd`` in the sandbox; (exit code, stdout, stderr) whatever the exit code."""
    from e2b import CommandExitException

    try:
        r = sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as exc:
        return exc.exit_code, exc.stdout, exc.stderr
    return r.exit_code, r.stdout, r.stderr


def py(sbx: Any, code: str, *, user: str | None = None, timeout: float = 60) -> Any:
    """Run Python in the sandbox; its last stdout line is JSON, returned decoded."""
    cmd = "python3 - <<'PYEOF'\n" + code + "\nPYEOF"
    rc, out, err = sh(sbx, cmd, user=user, timeout=timeout)
    assert rc == 0, f"python in sandbox failed ({rc}): {err}"
    return json.loads(out.strip().splitlines()[-1])
