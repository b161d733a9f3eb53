"""The bounded queue between a process's output pump and one stream."""

from __future__ import annotations

import asyncio

import pytest

from shoal.envd.process.subscriber import Subscriber, SubscriberClosed


async def test_put_waits_when_full_until_the_reader_catches_up() -> None:
    sub: Subscriber[int] = Subscriber(maxsize=2)
    assert await sub.put(1) and await sub.put(2)
    blocked = asyncio.create_task(sub.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # back-pressure
    assert await sub.get() == 1
    assert await blocked is True
    assert [await sub.get(), await sub.get()] == [2, 3]


async def test_slow_subscriber_is_dropped_after_its_timeout() -> None:
    sub: Subscriber[int] = Subscriber(maxsize=1, slow_timeout=0.05)
    await sub.put(1)
    assert await sub.put(2) is False
    assert sub.dropped and sub.closed
    assert await sub.get() == 1  # what was queued is still delivered
    with pytest.raises(SubscriberClosed):
        await sub.get()


async def test_get_times_out_with_none_and_final_items_bypass_the_bound() -> None:
    sub: Subscriber[str] = Subscriber(maxsize=1)
    assert await sub.get(0.01) is None
    await sub.put("data")
    sub.put_final("end")
    sub.close()
    assert [await sub.get(), await sub.get()] == ["data", "end"]
    with pytest.raises(SubscriberClosed):
        await sub.get(1)


async def test_close_wakes_a_waiting_reader() -> None:
    sub: Subscriber[int] = Subscriber()
    reader = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(SubscriberClosed):
        await reader
