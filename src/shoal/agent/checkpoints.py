"""Where a node keeps what it checkpointed: paused sandboxes and snapshots.

``<data_dir>/paused/<sandbox_id>/`` and ``<data_dir>/snapshots/<snapshot_id>/`` each hold::

    record.json   the sandbox as the agent knew it (its sandbox.json), plus ``memory``,
                  ``created_at``, ``checkpoint_id``; written last, so a directory without
                  it is an unfinished checkpoint (removed at start-up)
    image/        a memory checkpoint (``runtime/checkpoint.py``: CRIU images + disk), or
    disk.img      the disk alone (a sandbox paused without its memory)

Nothing here is a sandbox: a paused sandbox has no container, no mount and no process.

A checkpoint directory is self-contained (the template layer aside, which every node has
by name): :func:`export_archive` streams it as a GNU tar with sparse files (a disk image
of a GiB holding a few MiB travels as those MiB), :func:`import_archive` unpacks one into
another node's directory. That is how a paused sandbox moves to another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shoal.errors import AlreadyExists, InvalidArgument, NotFound, RuntimeFailure
from shoal.wire.node import CheckpointStatus

CHECKPOINT_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
"""Sandbox ids and the control plane's snapshot ids alike; never a path."""
RECORD = "record.json"
IMAGE = "image"
DISK = "disk.img"


@dataclass(frozen=True)
class Held:
    """A checkpoint this node holds."""

    checkpoint_id: str
    path: Path
    record: dict[str, Any]

    @property
    def memory(self) -> bool:
        return bool(self.record.get("memory"))

    @property
    def image(self) -> Path:
        return self.path / IMAGE

    @property
    def disk(self) -> Path:
        """The disk image a boot from this checkpoint starts with."""
        return self.image / DISK if self.memory else self.path / DISK

    def size_on_disk(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def status(self) -> CheckpointStatus:
        r = self.record
        return CheckpointStatus(
            checkpoint_id=self.checkpoint_id,
            sandbox_id=r["sandbox_id"],
            template_id=r["template_id"],
            memory=self.memory,
            size_bytes=self.size_on_disk(),
            created_at=datetime.fromisoformat(r["created_at"]),
            cpu_count=r["cpu_count"],
            memory_mb=r["memory_mb"],
            disk_mb=r["disk_mb"],
        )


class CheckpointDir:
    """One kind of checkpoint (paused sandboxes, or snapshots) of one node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, checkpoint_id: str) -> Path:
        if not CHECKPOINT_ID_RE.match(checkpoint_id):
            raise NotFound(f"checkpoint {checkpoint_id!r} not found")
        return self.root / checkpoint_id

    def get(self, checkpoint_id: str) -> Held | None:
        try:
            p = self.path(checkpoint_id)
            record = json.loads((p / RECORD).read_text())
        except (NotFound, OSError, ValueError):
            return None
        return Held(checkpoint_id, p, record)

    def __contains__(self, checkpoint_id: str) -> bool:
        return self.get(checkpoint_id) is not None

    def all(self) -> list[Held]:
        found = []
        for p in sorted(self.root.iterdir()):
            held = self.get(p.name) if p.is_dir() and not p.name.startswith(".") else None
            if held is not None:
                found.append(held)
        return found

    def begin(self, checkpoint_id: str) -> Path:
        """A new, empty directory for a checkpoint being made."""
        p = self.path(checkpoint_id)
        if (p / RECORD).exists():
            raise AlreadyExists(f"checkpoint {checkpoint_id} already exists")
        shutil.rmtree(p, ignore_errors=True)  # an unfinished earlier attempt
        p.mkdir()
        return p

    def commit(self, checkpoint_id: str, record: dict[str, Any]) -> Held:
        p = self.path(checkpoint_id)
        tmp = p / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(p / RECORD)
        return Held(checkpoint_id, p, record)

    def remove(self, checkpoint_id: str) -> bool:
        p = self.path(checkpoint_id)
        if not p.exists():
            return False
        shutil.rmtree(p, ignore_errors=True)
        return True

    def set_aside(self, checkpoint_id: str) -> Path | None:
        """Take a checkpoint out of this directory at once (a rename); the caller removes
        the returned path at leisure (what a crash leaves is swept at start-up)."""
        p = self.path(checkpoint_id)
        aside = self.root / f".gone-{checkpoint_id}-{uuid.uuid4().hex[:8]}"
        try:
            p.rename(aside)
        except FileNotFoundError:
            return None
        return aside

    def sweep(self) -> list[str]:
        """Remove unfinished checkpoints (no record) and ones set aside: what a crash left."""
        removed = []
        for p in self.root.iterdir():
            if p.is_dir() and (p.name.startswith(".gone-") or not (p / RECORD).exists()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


TAR = "tar"
CHUNK = 1 << 20


async def export_archive(held: Held) -> AsyncIterator[bytes]:
    """The checkpoint as a tar stream (sparse-aware, uncompressed: memory pages are
    incompressible noise as often as not, and the stream is node to node)."""
    proc = await asyncio.create_subprocess_exec(
        TAR, "--sparse", "--numeric-owner", "-C", str(held.path), "-cf", "-", ".",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(CHUNK):
            yield chunk
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise RuntimeFailure(f"could not archive checkpoint {held.checkpoint_id}: {err!r}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def import_archive(
    into: CheckpointDir, checkpoint_id: str, body: AsyncIterable[bytes]
) -> Held:
    """Unpack a checkpoint another node exported; nothing is left of it on failure."""
    dest = await asyncio.to_thread(into.begin, checkpoint_id)
    proc = await asyncio.create_subprocess_exec(
        # Only what an export holds: no absolute names, no ``..``, owners kept numerically
        # (the images belong to root and to the sandbox's mapped ids).
        TAR, "--sparse", "--numeric-owner", "--same-owner", "--no-overwrite-dir",
        "-C", str(dest), "-xf", "-",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        try:
            async for chunk in body:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        finally:
            proc.stdin.close()
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise InvalidArgument(f"not a checkpoint archive: {err.decode(errors='replace')}")
        held = into.get(checkpoint_id)
        if held is None:
            raise InvalidArgument("the archive holds no checkpoint record")
        if held.record.get("checkpoint_id") != checkpoint_id:
            raise InvalidArgument(
                f"the archive holds checkpoint {held.record.get('checkpoint_id')!r}, "
                f"not {checkpoint_id!r}"
            )
        return held
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(into.remove, checkpoint_id)
        raise
