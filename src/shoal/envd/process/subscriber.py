"""A bounded queue between one process's output pump and one stream reading it.

Back-pressure policy: when a subscriber's queue is full, the pump waits for it, which
stops reading the process's fds, which fills the pipe, which blocks the process — the same
flow control a terminal gives. A subscriber that stays full for ``slow_timeout`` seconds is
dropped (its stream ends with ``resource_exhausted``) so one stuck client cannot freeze a
process for everyone. Memory per subscriber is bounded by ``maxsize`` chunks (each at most
one read, 32 KiB). Output produced while nobody is subscribed is discarded, as upstream envd
does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAXSIZE = 64
DEFAULT_SLOW_TIMEOUT = 30.0


class SubscriberClosed(Exception):
    """Raised by :meth:`Subscriber.get` once the subscriber is closed and drained."""


class Subscriber(Generic[T]):
    def __init__(
        self, maxsize: int = DEFAULT_MAXSIZE, slow_timeout: float = DEFAULT_SLOW_TIMEOUT
    ) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._slow_timeout = slow_timeout
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.dropped = False
        """True when the pump gave up on this subscriber for being too slow."""

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> bool:
        """Queue ``item``, waiting while the queue is full; False if the subscriber is gone."""
        while not self.closed and len(self._items) >= self._maxsize:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                async with asyncio.timeout(self._slow_timeout):
                    await fut
            except TimeoutError:
                self.dropped = True
                self.close()
            finally:
                if fut in self._putters:
                    self._putters.remove(fut)
        if self.closed:
            return False
        self._items.append(item)
        self._wake_getter()
        return True

    def put_final(self, item: T) -> None:
        """Queue a last item even when the queue is full (end of stream markers)."""
        if self.closed:
            return
        self._items.append(item)
        self._wake_getter()

    async def get(self, wait: float | None = None) -> T | None:
        """The next item, or None after ``wait`` seconds without one.

        Raises :class:`SubscriberClosed` once closed and nothing is left to read.
        """
        if not self._items:
            if self.closed:
                raise SubscriberClosed
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                if wait is None:
                    await fut
                else:
                    try:
                        async with asyncio.timeout(wait):
                            await fut
                    except TimeoutError:
                        return None
            finally:
                self._getter = None
            if not self._items:
                raise SubscriberClosed
        item = self._items.popleft()
        if self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
        return item

    def close(self) -> None:
        """Stop accepting items; a pending :meth:`get` still returns what was queued."""
        if self.closed:
            return
        self.closed = True
        self._wake_getter()
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)

    def _wake_getter(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
