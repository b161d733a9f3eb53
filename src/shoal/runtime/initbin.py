"""Build the ``shoal-init`` binary from its C source, once per source version.

The binary is bind-mounted into every sandbox, so it is linked statically: it must run
whatever libc (or none) the template's root filesystem has. The file name carries a hash
of the source, so an upgraded Shoal never runs a stale init and several versions can sit
side by side while old sandboxes still use theirs.

    $ python -m shoal.runtime.initbin /var/lib/shoal/bin
    /var/lib/shoal/bin/shoal-init-3f1c0d9a2b4e
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from shoal.errors import RuntimeFailure

SOURCE = Path(__file__).with_name("init") / "shoal-init.c"
CFLAGS = ["-O2", "-Wall", "-Wextra"]


def binary_name(source: bytes) -> str:
    return f"shoal-init-{hashlib.sha256(source).hexdigest()[:12]}"


def ensure_built(dest_dir: Path) -> Path:
    """Return the path of the ``shoal-init`` built from the current source, compiling it
    into ``dest_dir`` first when it is not there yet. Safe to call concurrently: the
    compiler writes a temporary file that is renamed into place."""
    source = SOURCE.read_bytes()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / binary_name(source)
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        errors = []
        # Static first: the sandbox's root filesystem may not have a matching libc.
        for link in (["-static"], []):
            proc = subprocess.run(
                ["gcc", *CFLAGS, *link, "-o", str(tmp), str(SOURCE)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip())
        else:
            raise RuntimeFailure(
                "cannot compile shoal-init (is gcc installed?): " + "\n".join(errors)
            )
        tmp.chmod(0o755)
        tmp.rename(target)
    except FileNotFoundError as exc:
        raise RuntimeFailure("cannot compile shoal-init: gcc not found") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shoal.runtime.initbin <dest_dir>", file=sys.stderr)
        return 2
    try:
        print(ensure_built(Path(argv[0])))
    except RuntimeFailure as exc:
        print(exc.message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
