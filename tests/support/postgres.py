"""A private, throwaway PostgreSQL server for cluster tests (Debian's ``postgresql`` package).

``initdb`` into a scratch directory as the ``postgres`` user, listen on 127.0.0.1 on an
ephemeral port, trust authentication, one database per test module. Nothing is shared
with a system cluster the machine may run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.server import free_port, scratch_dir


def pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if (p / "bin" / "initdb").exists()), key=lambda p: int(p.name)
    )
    return versions[-1] / "bin" if versions else None


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:  # type: ignore[no-untyped-def]
    pw = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return subprocess.run(args, preexec_fn=demote, check=True, capture_output=True, **kwargs)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL (``postgresql+asyncpg://…``) of a fresh database."""
    binary = pg_bin()
    if binary is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup --test installs it)")
    base = scratch_dir("pg")
    data = base / "data"
    pw = pwd.getpwnam("postgres")
    os.chown(base, pw.pw_uid, pw.pw_gid)
    port = free_port()
    _as_postgres(
        [str(binary / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]
    )
    _as_postgres(
        [
            str(binary / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "pg.log"),
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "start",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _as_postgres(
                    [
                        str(binary / "createdb"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        "postgres",
                        "shoal",
                    ]
                )
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/shoal"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _as_postgres([str(binary / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)
