"""Open sockets inside another network namespace without moving the event loop there.

A sandbox's abstract unix sockets and its loopback ports exist only in its network
namespace. ``setns(2)`` switches the namespace of the calling *thread*, and a socket keeps
the namespace it was created in for its whole life, so a short-lived thread joins the
namespace, creates and connects the socket, and hands the fd back. The event-loop thread
never calls ``setns``: everything else it does would silently happen in the sandbox.

    sock = await connect_tcp_in_netns("/proc/4242/ns/net", "127.0.0.1", 49983)
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 5.0
"""Seconds a connect inside a namespace may take (a full listen backlog blocks it)."""

_T = TypeVar("_T")
_libc: ctypes.CDLL | None = None


def _setns(fd: int, nstype: int) -> None:
    # os.setns exists only from Python 3.12 on.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


async def run_in_netns(netns_path: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a new thread that has joined the network namespace at ``netns_path``.

    The thread exits right after, so the namespace switch cannot leak to other work.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[_T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if fut.cancelled():
            if ok and isinstance(value, socket.socket):
                value.close()
            return
        if ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            fut.set_exception(value)

    def body() -> None:
        try:
            nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(nsfd, CLONE_NEWNET)
            finally:
                os.close(nsfd)
            result: object = fn()
        except BaseException as exc:
            outcome: tuple[bool, object] = (False, exc)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop closed meanwhile
            if outcome[0] and isinstance(outcome[1], socket.socket):
                outcome[1].close()

    threading.Thread(target=body, name="shoal-netns", daemon=True).start()
    return await fut


def _connect_blocking(family: int, sock_type: int, address: str | tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, sock_type | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_unix_in_netns(
    netns_path: str | None, abstract_name: str, sock_type: int
) -> socket.socket:
    """Connect to the abstract unix socket ``\\0<abstract_name>`` of a network namespace.

    ``netns_path`` None means the caller's own namespace. Returns a non-blocking socket.
    """
    address = "\0" + abstract_name
    if netns_path is None:
        sock = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock
    return await run_in_netns(
        netns_path, lambda: _connect_blocking(socket.AF_UNIX, sock_type, address)
    )


async def connect_tcp_in_netns(netns_path: str, host: str, port: int) -> socket.socket:
    """Connect a TCP socket to ``host:port`` as seen from inside a network namespace
    (typically the sandbox's own loopback). Returns a non-blocking socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = await run_in_netns(
        netns_path, lambda: _connect_blocking(family, socket.SOCK_STREAM, (host, port))
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
