"""``Start``: spawn a process in the sandbox and stream its events (e2b-compat §4.2)."""

from __future__ import annotations

import asyncio
import errno
import posixpath
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from connectrpc.request import RequestContext

from shoal.envd.auth import resolve_user
from shoal.envd.process.adopt import AdoptingSpawner, ProcessMeta, deadline_after, encode_metadata
from shoal.envd.process.stream import follow, keepalive_interval, timeout_seconds
from shoal.envd.process.table import RunningProcess
from shoal.envd.request import current_request
from shoal.envd.sandbox import EnvdSandbox, User
from shoal.errors import InvalidArgument
from shoal.runtime.process import SpawnError, SpawnRequest
from shoal.wire.envd import process_pb as pb

if TYPE_CHECKING:
    from shoal.envd.process.service import ProcessService

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH a child gets before sandbox and request variables (upstream passes envd's own)."""


def resolve_cwd(requested: str, user: User, default_workdir: str | None) -> str:
    """Upstream's rule: empty → default workdir; ``~`` → home; relative → under home.

    >>> resolve_cwd("src", User("user", 1000, 1000, "/home/user"), None)
    '/home/user/src'
    """
    path = requested or default_workdir or ""
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    if not posixpath.isabs(path):
        path = posixpath.join(user.home, path)
    return posixpath.normpath(path)


def child_env(
    user: User, sandbox_env: Mapping[str, str], request_env: Mapping[str, str]
) -> dict[str, str]:
    """PATH, HOME, USER, LOGNAME, then sandbox variables, then the request's (later wins)."""
    env = {"PATH": DEFAULT_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    env.update(sandbox_env)
    env.update(request_env)
    return env


def _check_text(config: pb.ProcessConfig) -> None:
    # Proto3 JSON strings can carry lone surrogates ("\udc80") that no exec can take.
    values = [config.cmd, *config.args, config.cwd or ""]
    for key, value in config.envs.items():
        values += (key, value)
    for value in values:
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"invalid UTF-8 in process config: {value!r}") from exc
    if "\0" in "".join(values):
        raise InvalidArgument("NUL byte in process config")


def _spawn_failure(exc: SpawnError, cwd: str, sandbox: EnvdSandbox, cmd: str) -> InvalidArgument:
    if exc.errno == errno.ENOENT and not (sandbox.rootfs / cwd.lstrip("/")).exists():
        return InvalidArgument(f"cwd '{cwd}' does not exist")
    return InvalidArgument(f"error starting process '{cmd}': {exc}")


async def start(
    svc: ProcessService, request: pb.StartRequest, ctx: RequestContext
) -> AsyncIterator[pb.StartResponse]:
    envd_request = current_request.get()
    sandbox = envd_request.sandbox
    headers = ctx.request_headers
    user = resolve_user(sandbox, headers.get("authorization"))
    timeout = timeout_seconds(headers)
    keepalive = keepalive_interval(headers)

    config = request.process if request.process is not None else pb.ProcessConfig()
    _check_text(config)
    cwd = resolve_cwd(config.cwd or "", user, sandbox.default_workdir)
    pty = None
    if request.pty is not None:
        size = request.pty.size
        pty = (size.cols, size.rows) if size is not None else (0, 0)
    # Upstream keeps a writable stdin unless the request says "stdin": false explicitly.
    stdin = request.stdin if request.has_field("stdin") else True
    spawn = SpawnRequest(
        argv=[config.cmd, *config.args],
        env=child_env(user, sandbox.env_vars, config.envs),
        cwd=cwd,
        uid=user.uid,
        gid=user.gid,
        groups=list(dict.fromkeys([user.gid, *user.groups])),
        pty=pty,
        stdin=bool(stdin) or pty is not None,
    )
    # Proto3 ``optional``: an absent tag reads as "" but must stay absent in List.
    tag = request.tag if request.has_field("tag") else None
    spawner = sandbox.spawner
    try:
        if isinstance(spawner, AdoptingSpawner):
            # What List reports, kept by the sandbox's init: survives an agent restart.
            meta = ProcessMeta(config, tag, pty is not None, deadline_after(timeout))
            handle = await spawner.spawn(spawn, metadata=encode_metadata(meta))
        else:
            handle = await spawner.spawn(spawn)
    except SpawnError as exc:
        raise _spawn_failure(exc, cwd, sandbox, config.cmd) from exc

    proc = RunningProcess(handle, config, tag, sandbox.spawner)
    sub = proc.subscribe()
    svc.table(sandbox).add(proc)
    deadline = None
    if timeout is not None:
        proc.kill_after(timeout)
        deadline = asyncio.get_running_loop().time() + timeout
    async for response in follow(
        proc,
        sub,
        envd_request,
        lambda event: pb.StartResponse(event=event),
        keepalive=keepalive,
        deadline=deadline,
    ):
        yield response
