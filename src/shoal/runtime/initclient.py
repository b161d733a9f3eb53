"""The node agent's side of ``shoal-init``: start, signal and watch processes in a sandbox.

``shoal-init`` (``runtime/init/shoal-init.c``) is pid 1 of every sandbox and listens on
the abstract SOCK_SEQPACKET socket ``\\0<name>`` inside the sandbox's network namespace.
One :class:`InitClient` holds one connection; any number of tasks may use it at once:
requests carry an id and replies are matched to them, so a hundred concurrent spawns
need no lock.

Wire format (one record per message, host byte order; the C file has the full table)::

    header  u32 op, u32 id
    SPAWN   1   u32 uid, gid, flags(1=pty, 2=stdin), u16 cols, rows,
                u32 ngroups, argc, envc, u32 groups[], then NUL-terminated
                cwd, argv..., "KEY=VALUE"...            -> SPAWNED | ERR
    SIGNAL  2   i32 pid, signum, u32 flags(1=group)     -> OK | ERR
    LIST    3                                           -> LIST
    STATUS  4   i32 pid, u32 flags(1=adopt)             -> STATUS
    SPAWNM  5   SPAWN's fields up to envc, u32 metalen, u32 groups[],
                metadata[metalen], then the strings     -> SPAWNED | ERR
    ADOPT   6   i32 pid                                 -> ADOPTED | ERR
    OK      0x81 i32 value
    ERR     0x82 i32 errno, ascii step name ("exec", "chdir", ...)
    SPAWNED 0x83 i32 pid, u32 nfds + SCM_RIGHTS [pty master] or [stdin w], stdout r, stderr r
    LIST    0x84 u32 n, i32 pids[n]
    STATUS  0x85 i32 state(0 unknown, 1 running, 2 exited), i32 code, i32 signal
    ADOPTED 0x86 i32 pid, u32 flags, u32 nfds, metadata + SCM_RIGHTS [pty master] or
                 stdout r, stderr r (new duplicates of the copies init keeps)
    EXIT    0x90 (id 0) i32 pid, i32 code (-1 if signalled), i32 signal (0 if exited)

Surviving the agent: init keeps its own copies of each live process's output read ends
(or pty master), so the process never sees EPIPE while no agent is connected (its writes
block once the pipe is full). A restarted agent lists the pids and calls
:meth:`InitClient.adopt_process` for each: new fds, the metadata blob given to
:meth:`InitClient.spawn`, and the process's exit events from then on. The stdin pipe of a
non-pty process is not kept by init: it reaches end of file when the agent goes away.

Usage::

    init = await connect_init("shoal-sbx1", "/proc/4242/ns/net")
    proc = await init.spawn(SpawnRequest(["echo", "hi"], {"PATH": "/bin"}, "/", 0, 0))
    status = await proc.wait()
    # after a restart, from a new connection:
    for pid in await init.list_pids():
        again = await init.adopt_process(pid)   # again.stdout, again.metadata, again.wait()
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno as errno_mod
import fcntl
import itertools
import os
import signal as signal_mod
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.errors import (
    Forbidden,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    RuntimeFailure,
    SandboxGone,
)
from shoal.runtime.netns import connect_unix_in_netns
from shoal.runtime.process import ExitStatus, SpawnError, SpawnRequest

if TYPE_CHECKING:
    from shoal.runtime.process import ProcessHandle, ProcessSpawner

OP_SPAWN, OP_SIGNAL, OP_LIST, OP_STATUS, OP_SPAWNM, OP_ADOPT = 1, 2, 3, 4, 5, 6
RP_OK, RP_ERR, RP_SPAWNED, RP_LIST, RP_STATUS, RP_ADOPTED = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86
EV_EXIT = 0x90
SPAWN_PTY, SPAWN_STDIN = 1, 2
ST_UNKNOWN, ST_RUNNING, ST_EXITED = 0, 1, 2

MAX_MSG = 1 << 20
"""Largest request shoal-init accepts (its MAX_MSG); must stay equal to the C constant."""
MAX_META = 64 * 1024
"""Largest metadata blob shoal-init keeps per process (its MAX_META)."""
_MAX_REPLY = MAX_META + 4096  # ADOPTED with the largest blob; LIST of 4096 pids is ~16 KiB
ADOPT_PENDING_WAIT = 5.0
"""How long :meth:`InitClient.adopt_process` retries a process whose exec is in flight."""
_ANC_SPACE = socket.CMSG_SPACE(4 * 4)
_READS_PER_WAKEUP = 256
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

_HDR = struct.Struct("=II")
_SPAWN = struct.Struct("=IIIHHIII")
_U32 = struct.Struct("=I")
_ADOPTED = struct.Struct("=iII")
_SIGNAL = struct.Struct("=iiI")
_STATUS_REQ = struct.Struct("=iI")
_I32 = struct.Struct("=i")
_SPAWNED = struct.Struct("=iI")
_TRIPLE = struct.Struct("=iii")


class ProtocolError(Exception):
    """shoal-init sent something this client does not understand."""


class InitTooOld(RuntimeFailure):
    """The sandbox runs a shoal-init from before ADOPT (it predates this Shoal)."""


def set_pty_size(fd: int, cols: int, rows: int) -> None:
    """Resize the terminal of a pty master (the process gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _exit_status(code: int, sig: int) -> ExitStatus:
    if sig:
        return ExitStatus(code=None, signal=sig)
    return ExitStatus(code=code, signal=None)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A sandbox that dies with nobody waiting must not log "exception never retrieved".
    if not fut.cancelled():
        fut.exception()


class InitProcess:
    """A process started (or adopted) through shoal-init; implements ``ProcessHandle``.

    With a pty, ``stdin`` and ``pty`` are the same fd (close it once). The caller owns
    every fd. ``metadata`` is the blob given to :meth:`InitClient.spawn` (as returned by
    :meth:`InitClient.adopt_process`; empty otherwise).
    """

    def __init__(
        self,
        pid: int,
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pty: int | None = None,
        metadata: bytes = b"",
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pty = pty
        self.metadata = metadata
        self._attached = False  # this connection handed out its fds (SPAWN or ADOPT)
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._exit.add_done_callback(_retrieve)

    @property
    def exit_status(self) -> ExitStatus | None:
        """How the process ended, or None while it runs (or if the sandbox went away)."""
        if self._exit.done() and not self._exit.exception():
            return self._exit.result()
        return None

    async def wait(self) -> ExitStatus:
        """Wait for the process to end; raises ``SandboxGone`` if the sandbox does first."""
        # shield: one waiter being cancelled must not cancel the others.
        return await asyncio.shield(self._exit)

    def close_fds(self) -> None:
        """Close every fd of this process this side still holds."""
        fds = {fd for fd in (self.stdin, self.stdout, self.stderr, self.pty) if fd is not None}
        _close_all(list(fds))
        self.stdin = self.stdout = self.stderr = self.pty = None

    def _finish(self, status: ExitStatus) -> None:
        if not self._exit.done():
            self._exit.set_result(status)

    def _gone(self, exc: BaseException) -> None:
        if not self._exit.done():
            self._exit.set_exception(exc)

    def __repr__(self) -> str:
        return f"<InitProcess pid={self.pid} status={self.exit_status}>"


_Convert = Callable[[int, bytes, list[int]], Any]
_Abandon = Callable[[Any], None] | None


class InitClient:
    """One connection to a sandbox's ``shoal-init``; implements ``ProcessSpawner``.

    When the connection breaks (the sandbox died or was killed) every pending and later
    call, and every ``wait()`` of a process still running, raises ``SandboxGone``;
    ``closed`` resolves and the ``on_close`` callbacks run.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._ids = itertools.count(1)
        # id -> (reply future, reply decoder run in the reader, cleanup if abandoned)
        self._requests: dict[int, tuple[asyncio.Future[Any], _Convert, _Abandon]] = {}
        self._procs: dict[int, InitProcess] = {}
        self._wq: deque[bytes] = deque()
        self._rbuf = bytearray(_MAX_REPLY)
        self._legacy = False  # init answered ENOSYS to SPAWNM: an init from before it
        self._lost: SandboxGone | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._on_close: list[Callable[[InitClient], None]] = []
        self._loop.add_reader(self._fd, self._on_readable)

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> asyncio.Future[None]:
        """Resolves when the connection ends, for whatever reason."""
        return self._closed

    @property
    def is_closed(self) -> bool:
        return self._lost is not None

    def on_close(self, callback: Callable[[InitClient], None]) -> None:
        """Call ``callback(client)`` once when the connection ends (now, if it has)."""
        if self._lost is not None:
            self._loop.call_soon(callback, self)
        else:
            self._on_close.append(callback)

    async def aclose(self) -> None:
        """Close the connection. Processes keep running in the sandbox; their exits stay
        queryable with :meth:`status` from a new connection. Idempotent."""
        self._lose(SandboxGone("connection to shoal-init closed"))

    async def __aenter__(self) -> InitClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _lose(self, exc: SandboxGone) -> None:
        if self._lost is not None:
            return
        self._lost = exc
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._wq.clear()
        self._sock.close()
        requests, self._requests = self._requests, {}
        for fut, _, _ in requests.values():
            if not fut.done():
                fut.set_exception(exc)
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            proc._gone(exc)
        self._closed.set_result(None)
        for cb in self._on_close:
            self._loop.call_soon(cb, self)
        self._on_close.clear()

    def _check_open(self) -> None:
        if self._lost is not None:
            raise SandboxGone(self._lost.message)

    # ------------------------------------------------------------------ the wire

    def _send(self, data: bytes) -> None:
        if not self._wq:
            try:
                self._sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno == errno_mod.EMSGSIZE:
                    raise SpawnError("request too large for shoal-init", errno_mod.E2BIG) from exc
                self._lose(SandboxGone(f"shoal-init connection failed: {exc}"))
                raise SandboxGone(f"shoal-init connection failed: {exc}") from exc
            self._loop.add_writer(self._fd, self._on_writable)
        self._wq.append(data)

    def _on_writable(self) -> None:
        while self._wq:
            try:
                self._sock.send(self._wq[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(SandboxGone(f"shoal-init connection failed: {exc}"))
                return
            self._wq.popleft()
        self._loop.remove_writer(self._fd)

    async def _request(
        self, op: int, body: bytes, convert: _Convert, abandon: _Abandon = None
    ) -> Any:
        self._check_open()
        rid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._send(_HDR.pack(op, rid) + body)
        self._requests[rid] = (fut, convert, abandon)
        return await fut

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                n, anc, flags, _addr = self._sock.recvmsg_into(
                    [self._rbuf], _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(SandboxGone(f"shoal-init connection failed: {exc}"))
                return
            fds: list[int] = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
                    fds.extend(arr)
            if n == 0:
                _close_all(fds)
                self._lose(SandboxGone("shoal-init went away (the sandbox died or was killed)"))
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_all(fds)
                self._lose(SandboxGone("shoal-init sent an oversized message"))
                return
            try:
                self._dispatch(bytes(self._rbuf[:n]), fds)
            except ProtocolError as exc:
                _close_all(fds)
                self._lose(SandboxGone(f"shoal-init protocol error: {exc}"))
                return

    def _dispatch(self, msg: bytes, fds: list[int]) -> None:
        if len(msg) < _HDR.size:
            raise ProtocolError("short message")
        op, rid = _HDR.unpack_from(msg)
        body = msg[_HDR.size :]
        if op == EV_EXIT:
            if len(body) != _TRIPLE.size:
                raise ProtocolError("bad EXIT")
            pid, code, sig = _TRIPLE.unpack(body)
            proc = self._procs.pop(pid, None)
            if proc is not None:
                proc._finish(_exit_status(code, sig))
            _close_all(fds)
            return
        entry = self._requests.pop(rid, None)
        if entry is None:
            _close_all(fds)
            return
        fut, convert, abandon = entry
        try:
            value = convert(op, body, fds)
        except (ProtocolError, struct.error) as exc:
            if not fut.done():
                fut.set_exception(SandboxGone(f"shoal-init protocol error: {exc}"))
            raise ProtocolError(str(exc)) from exc
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(value)
        elif abandon is not None:  # the caller stopped waiting
            abandon(value)

    def _kill_abandoned(self, proc: InitProcess | None) -> None:
        # Nobody will ever read its output or wait for it: do not leave it running.
        if proc is None:  # an older init refused SPAWNM: nothing was started
            return
        proc.close_fds()
        if proc.exit_status is None:
            with contextlib.suppress(SandboxGone, SpawnError):
                self._send(_HDR.pack(OP_SIGNAL, 0) + _SIGNAL.pack(proc.pid, signal_mod.SIGKILL, 1))

    @staticmethod
    def _error(op: int, body: bytes, fds: list[int]) -> tuple[int, str] | None:
        if op != RP_ERR:
            return None
        _close_all(fds)
        (err,) = _I32.unpack_from(body)
        return err, body[_I32.size :].decode("ascii", "replace")

    # ------------------------------------------------------------------ operations

    async def spawn(self, request: SpawnRequest, *, metadata: bytes = b"") -> InitProcess:
        """Start a process; raises ``SpawnError`` (ENOENT for a missing program or cwd).

        ``metadata`` (at most ``MAX_META`` bytes, opaque to init) is kept by init with the
        process and returned by :meth:`adopt_process`. An init too old to keep it starts
        the process without it.
        """
        if len(metadata) > MAX_META:
            raise SpawnError(f"metadata exceeds {MAX_META} bytes", errno_mod.E2BIG)
        with_meta = bool(metadata) and not self._legacy
        body = _encode_spawn(request, metadata if with_meta else None)
        pty = request.pty is not None
        want = 1 if pty else (3 if request.stdin else 2)

        def convert(op: int, rbody: bytes, fds: list[int]) -> InitProcess | None:
            err = self._error(op, rbody, fds)
            if err is not None:
                code, step = err
                if with_meta and code == errno_mod.ENOSYS and step == "op":
                    return None  # an older init: start it again without the metadata
                where = f"chdir to {request.cwd!r}" if step == "chdir" else step
                raise SpawnError(
                    f"cannot start {request.argv[0]!r}: {where}: {os.strerror(code)}", code
                )
            if op != RP_SPAWNED:
                raise ProtocolError(f"unexpected reply {op:#x} to SPAWN")
            pid, nfds = _SPAWNED.unpack(rbody)
            if nfds != want or len(fds) != want:
                _close_all(fds)
                raise ProtocolError(f"SPAWN reply carried {len(fds)} fds, wanted {want}")
            if pty:
                proc = InitProcess(pid, stdin=fds[0], pty=fds[0])
            elif request.stdin:
                proc = InitProcess(pid, stdin=fds[0], stdout=fds[1], stderr=fds[2])
            else:
                proc = InitProcess(pid, stdout=fds[0], stderr=fds[1])
            proc._attached = True
            # Registered here, in the reader, so an EXIT right behind this reply finds it.
            self._procs[pid] = proc
            return proc

        op = OP_SPAWNM if with_meta else OP_SPAWN
        result: InitProcess | None = await self._request(op, body, convert, self._kill_abandoned)
        if result is None:
            self._legacy = True
            return await self.spawn(request)
        return result

    async def signal(self, pid: int, signum: int, *, group: bool = True) -> bool:
        """Send ``signum`` to ``pid`` (to its process group when ``group``); False when
        there is no such process (or group)."""

        def convert(op: int, body: bytes, fds: list[int]) -> bool:
            err = self._error(op, body, fds)
            if err is None:
                return True
            if err[0] == errno_mod.ESRCH:
                return False
            if err[0] == errno_mod.EINVAL:
                raise InvalidArgument(f"invalid signal {signum}")
            raise RuntimeFailure(f"signal {signum} to {pid}: {os.strerror(err[0])}")

        if not 0 < pid < 2**31 or not 0 <= signum < 2**31:
            return False
        body = _SIGNAL.pack(pid, signum, 1 if group else 0)
        ok: bool = await self._request(OP_SIGNAL, body, convert)
        return ok

    async def list_pids(self) -> list[int]:
        """Pids of processes started through init that are still running."""

        def convert(op: int, body: bytes, fds: list[int]) -> list[int]:
            _close_all(fds)
            if op != RP_LIST:
                raise ProtocolError(f"unexpected reply {op:#x} to LIST")
            (n,) = struct.unpack_from("=I", body)
            return list(struct.unpack_from(f"={n}i", body, 4))

        pids: list[int] = await self._request(OP_LIST, b"", convert)
        return pids

    async def status(self, pid: int) -> ExitStatus | None:
        """How ``pid`` ended, or None while it still runs. Raises ``NotFound`` when init
        never started it or has forgotten it (it keeps the last 1024 exits)."""
        state, code, sig = await self._query(pid, adopt=False)
        if state == ST_RUNNING:
            return None
        return _exit_status(code, sig)

    async def adopt(self, pid: int) -> InitProcess:
        """A handle (without fds) whose ``wait()`` reports ``pid``'s exit: how an agent
        that reconnected after a restart follows processes it started before."""
        existing = self._procs.get(pid)
        if existing is not None:
            return existing

        def register(state: int, code: int, sig: int) -> InitProcess:
            proc = self._procs.get(pid) or InitProcess(pid)
            if state == ST_RUNNING:
                self._procs[pid] = proc
            else:
                proc._finish(_exit_status(code, sig))
            return proc

        result: InitProcess = await self._query(pid, adopt=True, then=register)
        return result

    async def adopt_process(self, pid: int) -> InitProcess:
        """Take over a running process another (gone) connection started: a handle with
        new duplicates of its output fds (``stdout``/``stderr``, or ``pty``, which is also
        its ``stdin``; a pipe stdin is never returned), its spawn ``metadata``, and its
        exit from now on.

        A process this connection already holds (spawned, or adopted before) gives back
        the same handle, without new fds. Raises ``NotFound`` when it is not running (or
        init never started it), ``Forbidden`` when this peer may not take it,
        ``InvalidStateTransition`` when another live connection owns it, and
        ``InitTooOld`` when the sandbox's init predates ADOPT.
        """
        if not 1 < pid < 2**31:
            raise NotFound(f"no process {pid} in this sandbox")
        deadline = self._loop.time() + ADOPT_PENDING_WAIT
        delay = 0.001
        while True:
            existing = self._procs.get(pid)
            if existing is not None and existing._attached:
                return existing
            result: tuple[InitProcess, bool] | None = await self._request(
                OP_ADOPT, _I32.pack(pid), self._adopted(pid), _drop_adopted
            )
            if result is not None:
                return result[0]
            # EAGAIN: its exec is still in flight
            if self._loop.time() > deadline:
                raise RuntimeFailure(f"process {pid} did not finish starting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _adopted(self, pid: int) -> _Convert:
        def convert(op: int, body: bytes, fds: list[int]) -> tuple[InitProcess, bool] | None:
            err = self._error(op, body, fds)
            if err is not None:
                code, step = err
                if code == errno_mod.ENOSYS and step == "op":
                    raise InitTooOld("this sandbox's shoal-init cannot hand processes over")
                if code == errno_mod.EAGAIN:
                    return None
                if code == errno_mod.ESRCH:
                    raise NotFound(f"no process {pid} in this sandbox")
                if code == errno_mod.EPERM:
                    raise Forbidden(f"process {pid} belongs to the node agent")
                if code == errno_mod.EBUSY:
                    raise InvalidStateTransition(f"process {pid} is owned by another client")
                raise RuntimeFailure(f"adopting process {pid}: {step}: {os.strerror(code)}")
            if op != RP_ADOPTED:
                _close_all(fds)
                raise ProtocolError(f"unexpected reply {op:#x} to ADOPT")
            got, flags, nfds = _ADOPTED.unpack_from(body)
            pty = bool(flags & SPAWN_PTY)
            want = 1 if pty else 2
            if got != pid or nfds != want or len(fds) != want:
                _close_all(fds)
                raise ProtocolError(f"ADOPT reply for {got} carried {len(fds)} fds, wanted {want}")
            metadata = body[_ADOPTED.size :]
            # Runs in the reader, before any EXIT behind this reply: register now.
            proc = self._procs.get(pid)
            if proc is not None and proc._attached:
                _close_all(fds)  # a concurrent adopt_process got there first
                return proc, False
            if proc is None:
                proc = InitProcess(pid)
            if pty:
                proc.stdin = proc.pty = fds[0]
            else:
                proc.stdout, proc.stderr = fds
            proc.metadata = metadata
            proc._attached = True
            self._procs[pid] = proc
            return proc, True

        return convert

    async def _query(
        self, pid: int, *, adopt: bool, then: Callable[[int, int, int], Any] | None = None
    ) -> Any:
        def convert(op: int, body: bytes, fds: list[int]) -> Any:
            _close_all(fds)
            if op != RP_STATUS:
                raise ProtocolError(f"unexpected reply {op:#x} to STATUS")
            state, code, sig = _TRIPLE.unpack(body)
            if state == ST_UNKNOWN:
                raise NotFound(f"no process {pid} in this sandbox")
            # Runs in the reader, before any EXIT queued behind this reply is handled.
            return then(state, code, sig) if then else (state, code, sig)

        if not 0 < pid < 2**31:
            raise NotFound(f"no process {pid} in this sandbox")
        return await self._request(OP_STATUS, _STATUS_REQ.pack(pid, 1 if adopt else 0), convert)


def _drop_adopted(result: tuple[InitProcess, bool] | None) -> None:
    # The caller of adopt_process stopped waiting: the fds it would have owned go, and a
    # later adopt_process asks init for new ones. (Its exit still lands on the handle.)
    if result is not None and result[1]:
        result[0].close_fds()
        result[0]._attached = False


def _cstr(value: str, what: str) -> bytes:
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise SpawnError(f"{what} contains a NUL byte", errno_mod.EINVAL)
    return raw + b"\0"


def _encode_spawn(req: SpawnRequest, metadata: bytes | None = None) -> bytes:
    """SPAWN's body, or SPAWNM's when ``metadata`` is given."""
    if not req.argv or not req.argv[0]:
        raise SpawnError("empty argv", errno_mod.EINVAL)
    if not req.cwd:
        raise SpawnError("empty cwd", errno_mod.EINVAL)
    for ident in (req.uid, req.gid, *req.groups):
        if not 0 <= ident < 0xFFFFFFFF:
            raise SpawnError(f"invalid uid/gid {ident}", errno_mod.EINVAL)
    parts = [_cstr(req.cwd, "cwd")]
    parts += [_cstr(arg, "argument") for arg in req.argv]
    for key, value in req.env.items():
        if not key or "=" in key:
            raise SpawnError(f"invalid environment variable name {key!r}", errno_mod.EINVAL)
        parts.append(_cstr(f"{key}={value}", "environment"))
    flags = 0
    cols = rows = 0
    if req.pty is not None:
        flags |= SPAWN_PTY
        cols, rows = (max(0, min(v, 0xFFFF)) for v in req.pty)
    if req.stdin:
        flags |= SPAWN_STDIN
    body = b"".join(
        [
            _SPAWN.pack(
                req.uid, req.gid, flags, cols, rows, len(req.groups), len(req.argv), len(req.env)
            ),
            b"" if metadata is None else _U32.pack(len(metadata)),
            struct.pack(f"={len(req.groups)}I", *req.groups),
            metadata or b"",
            *parts,
        ]
    )
    if _HDR.size + len(body) > MAX_MSG:
        raise SpawnError("argv and environment exceed 1 MiB", errno_mod.E2BIG)
    return body


async def connect_init(socket_name: str, netns_path: str | None = None) -> InitClient:
    """Connect to the ``shoal-init`` listening on ``\\0<socket_name>`` in the network
    namespace at ``netns_path`` (None: this process's own namespace).

    Raises ``ConnectionRefusedError`` while nothing listens there (init binds its socket
    a moment after the runtime starts it: callers retry) and ``FileNotFoundError`` when
    ``netns_path`` does not exist (the sandbox's process is gone).
    """
    sock = await connect_unix_in_netns(netns_path, socket_name, socket.SOCK_SEQPACKET)
    # A SEQPACKET record must fit the send buffer whole; SPAWN may be up to MAX_MSG.
    for opt in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, MAX_MSG + 4096)
            break
        except OSError:
            continue
    return InitClient(sock)


if TYPE_CHECKING:

    def _conforms(client: InitClient, proc: InitProcess) -> tuple[ProcessSpawner, ProcessHandle]:
        return client, proc  # mypy checks both against the contract's protocols
