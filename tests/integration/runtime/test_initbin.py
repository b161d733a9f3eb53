"""Building shoal-init: once per source version, static, atomic."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from shoal.runtime.initbin import SOURCE, ensure_built


def _has_interpreter(binary: Path) -> bool:
    # An ELF program header of type PT_INTERP (3) means it needs a dynamic loader.
    data = binary.read_bytes()
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    types = [
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]
    return 3 in types


def test_builds_a_static_binary_named_by_the_source_hash(tmp_path: Path) -> None:
    path = ensure_built(tmp_path / "bin")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    assert path == tmp_path / "bin" / f"shoal-init-{digest}"
    assert path.stat().st_mode & 0o111
    assert not _has_interpreter(path)
    # nothing but the binary is left in the directory
    assert list(path.parent.iterdir()) == [path]
    # usage error: no socket name
    proc = subprocess.run([str(path)], capture_output=True, check=False)
    assert proc.returncode == 2 and b"usage" in proc.stderr


def test_second_call_is_a_no_op(tmp_path: Path) -> None:
    first = ensure_built(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert ensure_built(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


def test_module_entry_point_prints_the_path(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[3] / "src"
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.runtime.initbin", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )
    path = Path(proc.stdout.strip())
    assert path.parent == tmp_path and path.is_file()
