"""Processes that outlive the node agent: what envd stores with each one, and taking
them back after a restart.

envd's process table lives in the agent's memory; the processes live in the sandbox. So
``Start`` hands the spawner an opaque metadata blob with everything ``List`` reports (the
config as the client sent it, the tag, pty or not) plus the ``Connect-Timeout-Ms``
deadline, and ``shoal-init`` keeps it with the process together with its own copies of
the output fds. A restarted agent calls :func:`adopt_processes` for each sandbox it
adopts: every process envd started that is still running gets a table entry again, with
new fds, a new output pump and its deadline re-armed; ``List``, ``Connect``, signals,
input to a pty and the ``end`` event work as before the restart.

What does not survive: output written while no agent ran stays in the pipe and is
discarded by the new pump unless a ``Connect`` subscribes first (as for any unobserved
output); the stdin pipe of a non-pty process is at end of file (init does not keep its
write end, so that ``CloseStdin`` can deliver EOF); processes that ended meanwhile are
gone (their ``Connect`` is ``not_found``).

Metadata format (JSON, at most :data:`shoal.runtime.initclient.MAX_META` bytes)::

    {"envd": 1, "cmd": "/bin/bash", "args": ["-l", "-c", "..."], "envs": {...},
     "cwd": "/home/user" | null, "tag": "name" | null, "pty": false,
     "deadline": 1712345678.9 | null}          # wall-clock seconds (Connect-Timeout-Ms)

A config too large for the limit is stored without ``envs``, then without ``args`` (and
with ``"truncated": true``), so ``List`` after a restart shows less, never something else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shoal.envd.process.table import ProcessTable, RunningProcess
from shoal.errors import Forbidden, InvalidStateTransition, NotFound, SandboxGone
from shoal.runtime.initclient import MAX_META, InitTooOld
from shoal.runtime.process import ProcessHandle, ProcessSpawner, SpawnRequest
from shoal.wire.envd import process_pb as pb

log = logging.getLogger(__name__)

VERSION = 1


class AdoptableHandle(ProcessHandle, Protocol):
    metadata: bytes
    """The blob given to :meth:`AdoptingSpawner.spawn`."""


@runtime_checkable
class AdoptingSpawner(ProcessSpawner, Protocol):
    """A spawner whose processes can be handed to a new agent (``InitClient`` is one)."""

    async def spawn(self, request: SpawnRequest, *, metadata: bytes = b"") -> ProcessHandle: ...

    async def list_pids(self) -> list[int]: ...

    async def adopt_process(self, pid: int) -> AdoptableHandle: ...


@dataclass(frozen=True)
class ProcessMeta:
    config: pb.ProcessConfig
    tag: str | None
    pty: bool
    deadline: float | None
    """Wall-clock time (``time.time()``) at which the process is to be killed, or None."""


def encode_metadata(meta: ProcessMeta, limit: int = MAX_META) -> bytes:
    """The blob for ``meta``: at most ``limit`` bytes (see the module doc for what goes
    first when it does not fit)."""
    record: dict[str, Any] = {
        "envd": VERSION,
        "cmd": meta.config.cmd,
        "args": list(meta.config.args),
        "envs": dict(meta.config.envs),
        "cwd": meta.config.cwd if meta.config.has_field("cwd") else None,
        "tag": meta.tag,
        "pty": meta.pty,
        "deadline": meta.deadline,
    }
    for drop in ((), ("envs",), ("envs", "args")):
        for key in drop:
            record.pop(key, None)
            record["truncated"] = True
        blob = json.dumps(record, separators=(",", ":")).encode()
        if len(blob) <= limit:
            return blob
    # Even cmd, cwd and tag do not fit: a process List cannot describe faithfully.
    return b""


def decode_metadata(blob: bytes) -> ProcessMeta | None:
    """What :func:`encode_metadata` stored; None for anything envd did not write."""
    if not blob:
        return None
    try:
        record = json.loads(blob)
        if not isinstance(record, dict) or record.get("envd") != VERSION:
            return None
        cmd, args, envs = record["cmd"], record.get("args", []), record.get("envs", {})
        cwd, tag, deadline = record.get("cwd"), record.get("tag"), record.get("deadline")
        if not (
            isinstance(cmd, str)
            and isinstance(args, list)
            and all(isinstance(a, str) for a in args)
            and isinstance(envs, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items())
            and (cwd is None or isinstance(cwd, str))
            and (tag is None or isinstance(tag, str))
            and (deadline is None or isinstance(deadline, int | float))
        ):
            return None
    except (ValueError, KeyError, RecursionError):
        return None
    config = pb.ProcessConfig(cmd=cmd, args=args, envs=envs, cwd=cwd)
    return ProcessMeta(config, tag, bool(record.get("pty")), deadline)


def deadline_after(timeout: float | None) -> float | None:
    """The wall-clock deadline of a request whose timeout is ``timeout`` seconds."""
    return time.time() + timeout if timeout is not None else None


async def adopt_into(table: ProcessTable, spawner: ProcessSpawner) -> list[int]:
    """Give every still-running process envd started through ``spawner`` a ``table``
    entry again; returns the pids taken. Idempotent: known pids are skipped."""
    if not isinstance(spawner, AdoptingSpawner):
        return []
    taken: list[int] = []
    try:
        pids = await spawner.list_pids()
    except SandboxGone:
        return taken
    for pid in sorted(pids):
        if table.knows(pid):
            continue
        try:
            handle = await spawner.adopt_process(pid)
        except NotFound:
            continue  # it ended in the meantime
        except InitTooOld:
            log.info("sandbox init predates process adoption; its processes stay unlisted")
            return taken
        except (Forbidden, InvalidStateTransition) as exc:
            log.info("not adopting pid %d: %s", pid, exc)
            continue
        except SandboxGone:
            return taken
        if table.knows(pid):  # a concurrent adoption registered it while we waited
            continue
        meta = decode_metadata(handle.metadata)
        if meta is None:
            # Not started by envd (e.g. by a tool inside the sandbox): not ours to list.
            _close(handle)
            continue
        proc = RunningProcess(handle, meta.config, meta.tag, spawner)
        table.add(proc)
        if meta.deadline is not None:
            proc.kill_after(meta.deadline - time.time())
        taken.append(pid)
    return taken


def _close(handle: ProcessHandle) -> None:
    # The spawner hands this same handle out again on a later adoption: leave no stale fd
    # numbers in it to be closed twice.
    fds = {handle.stdin, handle.stdout, handle.stderr, handle.pty}
    handle.stdin = handle.stdout = handle.stderr = handle.pty = None
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
