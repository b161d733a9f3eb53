"""Watchers against a real inotify on a host directory standing in for a sandbox's root.

The registry's RPC methods are called directly (no HTTP); what they return is what the
Connect layer sends. Files are changed from the test itself, as a sandbox process would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from fakes.envd_sandbox import current_user

from shoal.envd.filesystem import watch as watch_mod
from shoal.envd.filesystem import watcher as watcher_mod
from shoal.envd.filesystem.context import FsCall
from shoal.envd.filesystem.watch import WatcherRegistry
from shoal.envd.request import EnvdRequest, current_request
from shoal.errors import InvalidArgument, NotFound, RateLimited, SandboxGone, ShoalError
from shoal.runtime.rootfs import RootFS
from shoal.wire.envd import filesystem_pb as pb

ET = pb.EventType


class Sandbox:
    """Just what the watchers use of a sandbox: id, ``fs``, ``uid_base``."""

    def __init__(self, sandbox_id: str, root: Path) -> None:
        self.sandbox_id = sandbox_id
        self.rootfs = root
        self.fs = RootFS(str(root), uid_base=0)
        self.uid_base = 0
        self.default_workdir: str | None = None


class Headers(dict[str, str]):
    pass


class Ctx:
    def __init__(self, **headers: str) -> None:
        self.request_headers = Headers({k.replace("_", "-"): v for k, v in headers.items()})


def inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


def kernel_queue_limit() -> int:
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        return int(f.read())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "home/user/dir").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def call(root: Path) -> Iterator[FsCall]:
    sbx = Sandbox("sbx-watch", root)
    yield FsCall(sbx, current_user("/home/user"))  # type: ignore[arg-type]
    sbx.fs.close()


@pytest.fixture
async def registry() -> AsyncIterator[WatcherRegistry]:
    before = inotify_fds()
    reg = WatcherRegistry()
    yield reg
    reg.close()
    assert inotify_fds() == before


async def poll(reg: WatcherRegistry, call: FsCall, wid: str) -> list[tuple[str, ET]]:
    res = await reg.get_watcher_events(call, pb.GetWatcherEventsRequest(watcher_id=wid))
    return [(e.name, e.type) for e in res.events]


async def create(reg: WatcherRegistry, call: FsCall, path: str = "dir", **kw: bool) -> str:
    res = await reg.create_watcher(call, pb.CreateWatcherRequest(path=path, **kw))
    return res.watcher_id


def write(path: Path, data: str = "hello") -> None:
    with open(path, "w") as f:
        f.write(data)


async def test_new_file_is_create_then_write(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    wid = await create(registry, call)
    write(root / "home/user/dir/a.txt")
    assert await poll(registry, call, wid) == [("a.txt", ET.CREATE), ("a.txt", ET.WRITE)]
    assert await poll(registry, call, wid) == []


async def test_upload_like_sequence_is_create_chmod_write(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    # What /files does for a new file: create, chown to the user, write.
    wid = await create(registry, call)
    path = root / "home/user/dir/up.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchown(fd, os.getuid(), os.getgid())
    os.write(fd, b"data")
    os.close(fd)
    assert await poll(registry, call, wid) == [
        ("up.bin", ET.CREATE),
        ("up.bin", ET.CHMOD),
        ("up.bin", ET.WRITE),
    ]


async def test_chmod_rename_remove(registry: WatcherRegistry, call: FsCall, root: Path) -> None:
    d = root / "home/user/dir"
    write(d / "f")
    wid = await create(registry, call, "~/dir")
    (d / "f").chmod(0o600)
    (d / "f").rename(d / "g")
    (d / "g").unlink()
    assert await poll(registry, call, wid) == [
        ("f", ET.CHMOD),
        ("f", ET.RENAME),
        ("g", ET.CREATE),
        ("g", ET.REMOVE),
    ]


async def test_non_recursive_ignores_nested_files(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    (root / "home/user/dir/sub").mkdir()
    wid = await create(registry, call)
    write(root / "home/user/dir/sub/x")
    assert await poll(registry, call, wid) == []


async def test_recursive_sees_existing_and_later_directories(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    d = root / "home/user/dir"
    (d / "old").mkdir()
    wid = await create(registry, call, recursive=True)
    write(d / "old/f")
    assert await poll(registry, call, wid) == [("old/f", ET.CREATE), ("old/f", ET.WRITE)]

    (d / "new").mkdir()
    assert await poll(registry, call, wid) == [("new", ET.CREATE)]
    write(d / "new/f")
    (d / "new/deeper").mkdir()
    events = await poll(registry, call, wid)  # as between two requests: the watch is added
    write(d / "new/deeper/g")
    assert events + await poll(registry, call, wid) == [
        ("new/f", ET.CREATE),
        ("new/f", ET.WRITE),
        ("new/deeper", ET.CREATE),
        ("new/deeper/g", ET.CREATE),
        ("new/deeper/g", ET.WRITE),
    ]


async def test_recursive_announces_what_a_new_tree_already_holds(
    registry: WatcherRegistry, call: FsCall, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # ``mv tree here``: the tree's content existed before any watch could see it.
    outside = root / "home/user/tree"
    (outside / "b/c").mkdir(parents=True)
    write(outside / "a")
    write(outside / "b/c/z")
    wid = await create(registry, call, recursive=True)
    outside.rename(root / "home/user/dir/tree")
    assert await poll(registry, call, wid) == [
        ("tree", ET.CREATE),
        ("tree/a", ET.CREATE),
        ("tree/b", ET.CREATE),
        ("tree/b/c", ET.CREATE),
        ("tree/b/c/z", ET.CREATE),
    ]
    write(root / "home/user/dir/tree/b/c/z", "more")
    assert await poll(registry, call, wid) == [("tree/b/c/z", ET.WRITE)]


async def test_recursive_directory_moved_out_stops_reporting(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    d = root / "home/user/dir"
    (d / "sub").mkdir()
    wid = await create(registry, call, recursive=True)
    (d / "sub").rename(root / "home/user/gone")
    write(root / "home/user/gone/x")
    assert await poll(registry, call, wid) == [("sub", ET.RENAME)]


async def test_recursive_directory_renamed_inside_keeps_reporting_new_names(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    d = root / "home/user/dir"
    (d / "sub").mkdir()
    wid = await create(registry, call, recursive=True)
    (d / "sub").rename(d / "moved")
    assert await poll(registry, call, wid) == [("sub", ET.RENAME), ("moved", ET.CREATE)]
    write(d / "moved/x")
    assert await poll(registry, call, wid) == [("moved/x", ET.CREATE), ("moved/x", ET.WRITE)]


async def test_removed_watched_directory(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    d = root / "home/user/dir"
    (d / "sub").mkdir()
    wid = await create(registry, call, recursive=True)
    shutil.rmtree(d)
    assert await poll(registry, call, wid) == [("sub", ET.REMOVE), (".", ET.REMOVE)]


async def test_include_entry(registry: WatcherRegistry, call: FsCall, root: Path) -> None:
    wid = await create(registry, call, include_entry=True)
    write(root / "home/user/dir/e.txt", "12345")
    (root / "home/user/dir/e.txt").unlink()
    write(root / "home/user/dir/k.txt", "abc")
    res = await registry.get_watcher_events(call, pb.GetWatcherEventsRequest(watcher_id=wid))
    by = [(e.name, e.type, e.entry) for e in res.events]
    # e.txt was gone by the time the events were read: no entry, as upstream.
    assert [(n, t, en is None) for n, t, en in by] == [
        ("e.txt", ET.CREATE, True),
        ("e.txt", ET.WRITE, True),
        ("e.txt", ET.REMOVE, True),
        ("k.txt", ET.CREATE, False),
        ("k.txt", ET.WRITE, False),
    ]
    entry = by[-1][2]
    assert entry is not None
    assert (entry.name, entry.path, entry.size, entry.type) == (
        "k.txt",
        "/home/user/dir/k.txt",
        3,
        pb.FileType.FILE,
    )


async def test_watch_errors(registry: WatcherRegistry, call: FsCall, root: Path) -> None:
    write(root / "home/user/file")
    with pytest.raises(NotFound):
        await create(registry, call, "missing")
    with pytest.raises(InvalidArgument):
        await create(registry, call, "file")
    with pytest.raises(InvalidArgument):
        await create(registry, call, "file/below")
    with pytest.raises(NotFound):
        await poll(registry, call, "wdoesnotexist")
    with pytest.raises(NotFound):
        await registry.remove_watcher(call, pb.RemoveWatcherRequest(watcher_id="nope"))


async def test_symlink_to_host_resolves_inside_the_sandbox(
    registry: WatcherRegistry, call: FsCall, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    host = tmp_path_factory.mktemp("host-dir")
    (root / "etc").mkdir()
    # An absolute link to a host directory means the sandbox's own directory of that name.
    os.symlink(str(host), root / "home/user/host")
    os.makedirs(root / str(host).lstrip("/"))
    wid = await create(registry, call, "/home/user/host")
    write(host / "on-host")
    write(root / str(host).lstrip("/") / "in-sandbox")
    assert await poll(registry, call, wid) == [("in-sandbox", ET.CREATE), ("in-sandbox", ET.WRITE)]
    os.symlink("/proc/1/root", root / "home/user/proc")
    with pytest.raises(ShoalError):
        await create(registry, call, "/home/user/proc")


async def test_recursive_does_not_follow_planted_symlinks(
    registry: WatcherRegistry, call: FsCall, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    host = tmp_path_factory.mktemp("host-tree")
    os.symlink(str(host), root / "home/user/dir/link")
    wid = await create(registry, call, recursive=True)
    (host / "sub").mkdir()
    write(host / "secret")
    os.symlink("/", root / "home/user/dir/later")
    assert await poll(registry, call, wid) == [("later", ET.CREATE)]


async def test_remove_watcher_releases_everything(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    before = inotify_fds()
    wid = await create(registry, call, recursive=True)
    assert inotify_fds() == before + 1
    await registry.remove_watcher(call, pb.RemoveWatcherRequest(watcher_id=wid))
    assert inotify_fds() == before
    with pytest.raises(NotFound):
        await poll(registry, call, wid)


async def test_watchers_share_one_inotify_per_sandbox(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    before = inotify_fds()
    a = await create(registry, call)
    b = await create(registry, call, "~", recursive=True)
    assert inotify_fds() == before + 1
    await registry.remove_watcher(call, pb.RemoveWatcherRequest(watcher_id=a))
    write(root / "home/user/dir/x")
    assert await poll(registry, call, b) == [("dir/x", ET.CREATE), ("dir/x", ET.WRITE)]


async def test_watcher_limit(
    registry: WatcherRegistry, call: FsCall, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_mod, "MAX_WATCHERS_PER_SANDBOX", 2)
    await create(registry, call)
    await create(registry, call)
    with pytest.raises(RateLimited):
        await create(registry, call)


async def test_watched_directory_limit(
    registry: WatcherRegistry, call: FsCall, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_mod, "MAX_WATCHES_PER_SANDBOX", 3)
    for name in "abcd":
        (root / "home/user/dir" / name).mkdir()
    with pytest.raises(RateLimited):
        await create(registry, call, recursive=True)
    (root / "home/user/dir/d").rmdir()
    (root / "home/user/dir/c").rmdir()
    wid = await create(registry, call, recursive=True)
    (root / "home/user/dir/c").mkdir()
    with pytest.raises(ShoalError, match="too many watched directories"):
        await poll(registry, call, wid)


async def test_queue_bound_fails_the_watcher(
    registry: WatcherRegistry, call: FsCall, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_mod, "MAX_QUEUED_EVENTS", 5)
    wid = await create(registry, call)
    for i in range(6):
        os.close(os.open(root / f"home/user/dir/f{i}", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(ShoalError, match="overflow") as info:
        await poll(registry, call, wid)
    assert info.value.code == "internal"


@pytest.mark.slow
async def test_kernel_queue_overflow_fails_the_watcher(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    wid = await create(registry, call)
    limit = kernel_queue_limit()
    d = root / "home/user/dir"
    # Nothing reads while this runs (the loop is blocked here), so the kernel queue fills.
    for i in range(limit + 10):
        os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(ShoalError, match="overflow"):
        await poll(registry, call, wid)


@pytest.mark.slow
async def test_a_burst_keeps_the_loop_responsive(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    wid = await create(registry, call)
    d = root / "home/user/dir"
    n = 10_000

    def burst() -> None:
        for i in range(n):
            os.close(os.open(d / f"b{i}", os.O_CREAT | os.O_WRONLY))

    ticks = 0
    done = asyncio.ensure_future(asyncio.to_thread(burst))
    while not done.done():
        ticks += 1
        await asyncio.sleep(0.001)
    await done
    names = {name for name, kind in await poll(registry, call, wid) if kind == ET.CREATE}
    assert len(names) == n
    assert ticks > 0


# ---- the WatchDir stream -------------------------------------------------------------


class Stream:
    """Drives ``watch_dir`` as the Connect layer does, inside an envd request."""

    def __init__(self, reg: WatcherRegistry, call: FsCall, ctx: Ctx, **req: object) -> None:
        self.request = EnvdRequest(call.sandbox)
        token = current_request.set(self.request)
        try:
            self.gen = reg.watch_dir(call, pb.WatchDirRequest(**req), ctx)  # type: ignore[arg-type]
        finally:
            current_request.reset(token)

    async def next(self) -> pb.WatchDirResponse:
        token = current_request.set(self.request)
        try:
            return await asyncio.wait_for(anext(self.gen), 30)
        finally:
            current_request.reset(token)

    async def kind(self) -> str:
        event = (await self.next()).event
        assert event is not None
        return event.field


async def test_stream_start_events_keepalive_and_disconnect(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    before = inotify_fds()
    s = Stream(registry, call, Ctx(keepalive_ping_interval="0.05"), path="dir", recursive=True)
    assert await s.kind() == "start"
    write(root / "home/user/dir/s.txt")
    first = (await s.next()).event
    assert first is not None and first.field == "filesystem"
    assert (first.value.name, first.value.type) == ("s.txt", ET.CREATE)
    second = (await s.next()).event
    assert second is not None and second.value.type == ET.WRITE
    assert await s.kind() == "keepalive"
    assert inotify_fds() == before + 1
    s.request.mark_disconnected()
    with pytest.raises(StopAsyncIteration):
        await s.next()
    assert inotify_fds() == before


async def test_stream_errors_before_start(registry: WatcherRegistry, call: FsCall) -> None:
    s = Stream(registry, call, Ctx(), path="missing")
    with pytest.raises(NotFound):
        await s.next()


async def test_stream_deadline(registry: WatcherRegistry, call: FsCall) -> None:
    s = Stream(registry, call, Ctx(connect_timeout_ms="50"), path="dir")
    assert await s.kind() == "start"
    with pytest.raises(ConnectError) as info:
        while True:
            await s.next()
    assert info.value.code == Code.DEADLINE_EXCEEDED


async def test_sandbox_gone_aborts_streams_and_drops_polling_watchers(
    registry: WatcherRegistry, call: FsCall, root: Path
) -> None:
    before = inotify_fds()
    wid = await create(registry, call)
    s = Stream(registry, call, Ctx(), path="dir")
    assert await s.kind() == "start"
    registry.forget(call.sandbox.sandbox_id)
    assert inotify_fds() == before
    with pytest.raises(SandboxGone):
        await s.next()
    with pytest.raises(NotFound):
        await poll(registry, call, wid)


async def test_stream_ids_are_not_pollable(registry: WatcherRegistry, call: FsCall) -> None:
    s = Stream(registry, call, Ctx(), path="dir")
    assert await s.kind() == "start"
    (stream_id,) = registry._sandboxes[call.sandbox.sandbox_id].watchers
    with pytest.raises(NotFound):
        await poll(registry, call, stream_id)
    await s.gen.aclose()


async def test_names_that_are_not_utf8(registry: WatcherRegistry, call: FsCall, root: Path) -> None:
    wid = await create(registry, call, include_entry=True)
    raw = os.path.join(os.fsencode(root / "home/user/dir"), b"bad-\xff.txt")
    fd = os.open(raw, os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
    res = await registry.get_watcher_events(call, pb.GetWatcherEventsRequest(watcher_id=wid))
    assert [(e.name, e.type) for e in res.events] == [
        ("bad-\ufffd.txt", ET.CREATE),
        ("bad-\ufffd.txt", ET.WRITE),
    ]
    # The entry is still found: the name is looked up by its real bytes.
    assert all(e.entry is not None and e.entry.size >= 0 for e in res.events)
    assert res.events[0].name.encode()  # valid UTF-8 on the wire


async def test_node_out_of_inotify_instances(
    registry: WatcherRegistry, call: FsCall, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(watch_mod, "Inotify", refuse)
    with pytest.raises(RateLimited):
        await create(registry, call)
    assert registry._sandboxes == {}
