"""Snapshots and fork through the official Python SDK (sync and async): create, list,
delete, sandboxes created from a snapshot (with and without memory), ``fork(count)``
(e2b-compat §2.4, the upstream ``test_snapshot_api`` and ``test_fork``, in our words)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from compat_helpers import unique, wait_for
from e2b import AsyncSandbox, Sandbox, SandboxNotFoundException

COUNTER = (
    "bash -c 'echo $$ > /tmp/counter.pid; i=0; "
    "while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done'"
)
# Whether the counter still counts (a pid alone could be reused by a fresh sandbox).
ALIVE = (
    "a=$(cat /tmp/counter); sleep 0.5; b=$(cat /tmp/counter); "
    '[ "$a" != "$b" ] && echo alive || echo gone'
)


@pytest.fixture
def snapshots() -> Iterator[list[str]]:
    """Snapshot ids a test made; deleted when it ends."""
    made: list[str] = []
    yield made
    for snapshot_id in made:
        with contextlib.suppress(Exception):
            Sandbox.delete_snapshot(snapshot_id)


def listed(**kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    paginator = Sandbox.list_snapshots(**kwargs)
    ids: list[str] = []
    while paginator.has_next:
        ids.extend(s.snapshot_id for s in paginator.next_items())
    return ids


def test_snapshot_list_and_delete_twice(sandbox_factory, snapshots) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    snap = sbx.create_snapshot()
    snapshots.append(snap.snapshot_id)
    assert snap.snapshot_id and snap.names == []
    assert sbx.is_running()  # the source keeps running

    assert snap.snapshot_id in listed()
    assert listed(sandbox_id=sbx.sandbox_id) == [snap.snapshot_id]
    assert [s.snapshot_id for s in sbx.list_snapshots().next_items()] == [snap.snapshot_id]

    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert snap.snapshot_id not in listed()


def test_named_snapshot_and_name_filter(sandbox_factory, snapshots) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    name = unique("snap")
    snap = Sandbox.create_snapshot(sbx.sandbox_id, name=name)
    snapshots.append(snap.snapshot_id)
    assert any(name in n for n in snap.names)
    assert listed(name=name) == [snap.snapshot_id]
    assert listed(name=f"{name}-does-not-exist") == []


def test_sandboxes_from_a_snapshot_are_independent_copies(sandbox_factory, snapshots) -> None:  # type: ignore[no-untyped-def]
    source = sandbox_factory(timeout=120)
    source.files.write("/home/user/shared.txt", "from the source")
    source.commands.run(COUNTER, background=True)
    wait_for(lambda: source.files.exists("/tmp/counter"), what="the counter to start")
    snap = source.create_snapshot()
    snapshots.append(snap.snapshot_id)

    one = sandbox_factory(template=snap.snapshot_id)
    two = sandbox_factory(template=snap.snapshot_id)
    assert len({source.sandbox_id, one.sandbox_id, two.sandbox_id}) == 3
    for copy in (one, two):
        assert copy.files.read("/home/user/shared.txt") == "from the source"
        # A memory snapshot: the counter the source was running runs in each copy.
        assert copy.commands.run(ALIVE).stdout == "alive\n"

    one.files.write("/home/user/shared.txt", "changed in one")
    assert two.files.read("/home/user/shared.txt") == "from the source"
    assert source.files.read("/home/user/shared.txt") == "from the source"
    one.commands.run("kill $(cat /tmp/counter.pid)")
    assert two.commands.run(ALIVE).stdout == "alive\n"
    assert source.commands.run(ALIVE).stdout == "alive\n"


def test_filesystem_snapshot_copies_files_but_no_processes(sandbox_factory, snapshots) -> None:  # type: ignore[no-untyped-def]
    source = sandbox_factory()
    source.files.write("/home/user/disk.txt", "disk only")
    source.commands.run(COUNTER, background=True)
    wait_for(lambda: source.files.exists("/tmp/counter"), what="the counter to start")
    snap = source.create_snapshot(mode="filesystem")
    snapshots.append(snap.snapshot_id)
    copy = sandbox_factory(template=snap.snapshot_id)
    assert copy.files.read("/home/user/disk.txt") == "disk only"
    assert copy.commands.run(ALIVE).stdout == "gone\n"


def test_fork_three_independent_copies(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    source = sandbox_factory(timeout=120)
    source.files.write("/home/user/state.txt", "before the fork")
    forks = source.fork(count=3, timeout=60)
    copies = [f for f in forks if isinstance(f, Sandbox)]
    try:
        assert len(forks) == 3 and len(copies) == 3, forks
        ids = {c.sandbox_id for c in copies}
        assert len(ids) == 3 and source.sandbox_id not in ids
        assert source.is_running()
        for i, copy in enumerate(copies):
            assert copy.is_running()
            assert copy.files.read("/home/user/state.txt") == "before the fork"
            copy.files.write("/home/user/state.txt", f"fork {i}")
        assert [c.files.read("/home/user/state.txt") for c in copies] == [
            "fork 0",
            "fork 1",
            "fork 2",
        ]
        assert source.files.read("/home/user/state.txt") == "before the fork"
    finally:
        for copy in copies:
            with contextlib.suppress(Exception):
                copy.kill()


def test_fork_of_a_killed_sandbox_is_not_found(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = sandbox_factory()
    sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        sbx.fork()


# async


async def test_async_snapshot_copy_and_delete(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    source = await async_sandbox_factory()
    await source.files.write("/home/user/async.txt", "async snapshot")
    snap = await source.create_snapshot(name=unique("async-snap"))
    try:
        copy = await async_sandbox_factory(template=snap.snapshot_id)
        assert await copy.files.read("/home/user/async.txt") == "async snapshot"
        page = await AsyncSandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items()
        assert [s.snapshot_id for s in page] == [snap.snapshot_id]
    finally:
        assert await AsyncSandbox.delete_snapshot(snap.snapshot_id) is True
    assert await AsyncSandbox.delete_snapshot(snap.snapshot_id) is False


async def test_async_fork_and_fork_of_killed(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    source = await async_sandbox_factory()
    await source.files.write("/home/user/f.txt", "forked")
    forks = await source.fork(count=2)
    copies = [f for f in forks if isinstance(f, AsyncSandbox)]
    try:
        assert len(copies) == 2, forks
        reads = await asyncio.gather(*(c.files.read("/home/user/f.txt") for c in copies))
        assert reads == ["forked", "forked"]
    finally:
        for copy in copies:
            with contextlib.suppress(Exception):
                await copy.kill()
    await source.kill()
    with pytest.raises(SandboxNotFoundException):
        await source.fork()
