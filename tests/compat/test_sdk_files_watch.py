"""``sandbox.files.watch_dir`` through the official SDK against a live Shoal (e2b-compat §4.3).

The sync SDK polls (CreateWatcher / GetWatcherEvents / RemoveWatcher): every poll must
already hold what requests that completed before it caused. The async SDK streams
(WatchDir). Event sequences are upstream envd's.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from compat_helpers import unique, wait_for
from e2b import FilesystemEvent, FilesystemEventType, FileType
from e2b.exceptions import InvalidArgumentException, NotFoundException, SandboxException
from support.server import ShoalServer

CREATE, WRITE, CHMOD = (
    FilesystemEventType.CREATE,
    FilesystemEventType.WRITE,
    FilesystemEventType.CHMOD,
)
REMOVE, RENAME = FilesystemEventType.REMOVE, FilesystemEventType.RENAME


def seq(events: list[FilesystemEvent]) -> list[tuple[str, FilesystemEventType]]:
    return [(e.name, e.type) for e in events]


def inotify_fds(server: ShoalServer) -> int:
    assert server.proc is not None
    count = 0
    fd_dir = f"/proc/{server.proc.pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


# --- polling (sync SDK) ----------------------------------------------------------------


def test_upload_gives_create_chmod_write(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    d = unique("watch")
    shared_sandbox.files.make_dir(d)
    handle = shared_sandbox.files.watch_dir(d)
    shared_sandbox.files.write(f"{d}/up.txt", "content")
    assert seq(handle.get_new_events()) == [
        ("up.txt", CREATE),
        ("up.txt", CHMOD),
        ("up.txt", WRITE),
    ]
    # An overwrite: chown, then truncate and write.
    shared_sandbox.files.write(f"{d}/up.txt", "new content")
    events = seq(handle.get_new_events())
    assert events[0] == ("up.txt", CHMOD)
    assert ("up.txt", WRITE) in events and ("up.txt", CREATE) not in events
    handle.stop()


def test_command_writes_are_in_the_next_poll(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    d = unique("watch")
    shared_sandbox.commands.run(f"mkdir {d} && echo keep > {d}/f")
    handle = shared_sandbox.files.watch_dir(d)
    shared_sandbox.commands.run(f"echo hello > {d}/new.txt")
    assert seq(handle.get_new_events()) == [("new.txt", CREATE), ("new.txt", WRITE)]
    assert handle.get_new_events() == []
    shared_sandbox.commands.run(f"cd {d} && chmod 600 f && mv f g && rm g")
    assert seq(handle.get_new_events()) == [
        ("f", CHMOD),
        ("f", RENAME),
        ("g", CREATE),
        ("g", REMOVE),
    ]
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_recursive_sees_nested_and_later_directories(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    d = unique("rwatch")
    shared_sandbox.files.make_dir(f"{d}/nested")
    handle = shared_sandbox.files.watch_dir(d, recursive=True)
    shared_sandbox.files.write(f"{d}/nested/a.txt", "x")
    assert seq(handle.get_new_events()) == [
        ("nested/a.txt", CREATE),
        ("nested/a.txt", CHMOD),
        ("nested/a.txt", WRITE),
    ]
    shared_sandbox.files.make_dir(f"{d}/later")
    shared_sandbox.files.write(f"{d}/later/b.txt", "y")
    shared_sandbox.commands.run(f"mkdir {d}/later/deep")
    shared_sandbox.commands.run(f"echo z > {d}/later/deep/c.txt")
    events = seq(handle.get_new_events())
    assert events == [
        ("later", CREATE),
        ("later", CHMOD),  # MakeDir chowns what it creates
        ("later/b.txt", CREATE),
        ("later/b.txt", CHMOD),
        ("later/b.txt", WRITE),
        ("later/deep", CREATE),
        ("later/deep/c.txt", CREATE),
        ("later/deep/c.txt", WRITE),
    ]
    handle.stop()


def test_include_entry(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    d = unique("ewatch")
    shared_sandbox.files.make_dir(d)
    handle = shared_sandbox.files.watch_dir(d, include_entry=True)
    shared_sandbox.commands.run(f"printf 12345 > {d}/e.txt && rm {d}/gone 2>/dev/null; true")
    events = handle.get_new_events()
    assert seq(events) == [("e.txt", CREATE), ("e.txt", WRITE)]
    for event in events:
        assert event.entry is not None
        assert event.entry.name == "e.txt"
        assert event.entry.path == f"/home/user/{d}/e.txt"
        assert event.entry.type == FileType.FILE
        assert event.entry.owner == "user"
    # Entries are taken when the event is handled (as upstream): CREATE may see it empty.
    assert events[1].entry is not None and events[1].entry.size == 5
    shared_sandbox.commands.run(f"rm {d}/e.txt")
    (removed,) = handle.get_new_events()
    assert (removed.name, removed.type, removed.entry) == ("e.txt", REMOVE, None)
    handle.stop()


def test_watching_a_file_or_a_missing_directory(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    shared_sandbox.commands.run("echo x > watched_file.txt")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.watch_dir("watched_file.txt")
    with pytest.raises(NotFoundException):
        shared_sandbox.files.watch_dir("no_such_watch_dir")


def test_a_planted_symlink_resolves_inside_the_sandbox(shared_sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # /var/tmp on the host exists too; the watch must be on the sandbox's own /var/tmp.
    name = unique("sym")
    shared_sandbox.commands.run(f"ln -sfn / ~/{name}")
    handle = shared_sandbox.files.watch_dir(f"{name}/var/tmp")
    host_file = f"/var/tmp/{name}-host"
    with open(host_file, "w") as f:
        f.write("host")
    try:
        shared_sandbox.commands.run(f"echo in > /var/tmp/{name}-sandbox")
        assert seq(handle.get_new_events()) == [
            (f"{name}-sandbox", CREATE),
            (f"{name}-sandbox", WRITE),
        ]
    finally:
        os.unlink(host_file)
        handle.stop()
    shared_sandbox.commands.run(f"ln -sfn /proc/1/root ~/{name}-proc")
    with pytest.raises(SandboxException):
        shared_sandbox.files.watch_dir(f"{name}-proc/etc")


@pytest.mark.slow
def test_a_burst_of_ten_thousand_files(sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox.files.make_dir("burst")
    handle = sandbox.files.watch_dir("burst")
    burst = sandbox.commands.run(
        "cd burst && for i in $(seq 1 10000); do : > f$i; done", background=True
    )
    # The server keeps answering while the events pour in.
    for i in range(5):
        assert sandbox.commands.run(f"echo {i}").stdout == f"{i}\n"
    burst.wait()
    names = {e.name for e in handle.get_new_events() if e.type == CREATE}
    assert len(names) == 10000
    assert sandbox.commands.run("ls burst | wc -l").stdout.strip() == "10000"
    handle.stop()


def test_unknown_watcher_is_not_found(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    handle = shared_sandbox.files.watch_dir("/tmp")
    handle.stop()
    handle._closed = False  # ask the server again about the removed id
    with pytest.raises(NotFoundException):
        handle.get_new_events()
    with pytest.raises(NotFoundException):
        handle.stop()


# --- the WatchDir stream (async SDK) -----------------------------------------------------


async def test_stream_events_recursive_and_include_entry(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    await sbx.files.make_dir("sw")
    got: list[FilesystemEvent] = []
    seen = asyncio.Event()

    def on_event(e: FilesystemEvent) -> None:
        got.append(e)
        if e.name == "later/f.txt" and e.type == WRITE:
            seen.set()

    handle = await sbx.files.watch_dir("sw", on_event, recursive=True, include_entry=True)
    await sbx.files.make_dir("sw/later")
    await sbx.files.write("sw/later/f.txt", "abc")
    await asyncio.wait_for(seen.wait(), 30)
    await handle.stop()
    assert seq(got) == [
        ("later", CREATE),
        ("later", CHMOD),
        ("later/f.txt", CREATE),
        ("later/f.txt", CHMOD),
        ("later/f.txt", WRITE),
    ]
    assert got[0].entry is not None and got[0].entry.type == FileType.DIR
    assert got[-1].entry is not None and got[-1].entry.size == 3


async def test_stream_errors(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    await sbx.commands.run("echo x > f.txt")
    with pytest.raises(NotFoundException):
        await sbx.files.watch_dir("missing_dir", lambda e: None)
    with pytest.raises(InvalidArgumentException):
        await sbx.files.watch_dir("f.txt", lambda e: None)


async def test_watches_are_released_on_stop_and_on_kill(
    async_sandbox_factory, shoal_server: ShoalServer
) -> None:  # type: ignore[no-untyped-def]
    before = inotify_fds(shoal_server)
    sbx = await async_sandbox_factory()
    exits: list[Exception | None] = []
    ended = asyncio.Event()

    def on_exit(err: Exception | None) -> None:
        exits.append(err)
        ended.set()

    stopped = await sbx.files.watch_dir("/tmp", lambda e: None)
    assert inotify_fds(shoal_server) == before + 1
    await stopped.stop()
    await asyncio.to_thread(
        wait_for, lambda: inotify_fds(shoal_server) == before, what="inotify fd released"
    )

    await sbx.files.watch_dir("/home/user", lambda e: None, on_exit=on_exit, recursive=True)
    from e2b import Sandbox

    polling = await asyncio.to_thread(Sandbox.connect, sbx.sandbox_id)
    for _ in range(3):
        await asyncio.to_thread(polling.files.watch_dir, "/tmp")
    assert inotify_fds(shoal_server) == before + 1  # one inotify instance per sandbox
    await sbx.kill()
    await asyncio.wait_for(ended.wait(), 30)
    assert exits and exits[0] is not None  # the stream broke; it did not end cleanly
    assert inotify_fds(shoal_server) == before
