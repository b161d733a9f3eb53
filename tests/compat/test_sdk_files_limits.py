"""Files at the limits through the official Python SDK (sync and async) against a live server:
a full sandbox disk (507 → ``NotEnoughSpaceException``, ENOSPC for commands, nothing
noticed by other sandboxes), many files in one upload, empty files, awkward path names, and
a sandbox killed in the middle of an upload (the SDK raises, the server keeps no fd).

Big uploads are generated while they stream (a file object or an iterator): the test holds
one block at a time, and the server's memory must stay flat too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from compat_helpers import wait_for
from e2b import (
    AsyncSandbox,
    FileType,
    NotEnoughSpaceException,
    NotFoundException,
    Sandbox,
    SandboxNotRunningException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry
from e2b.sandbox_async.filesystem.filesystem import AsyncWriteEntry
from support.server import ShoalServer

MIB = 1 << 20
DISK_MB = 1024
"""The default ``diskSizeMB`` of a sandbox."""
UPLOAD = 1 << 30
"""One GiB: more than the sandbox's whole disk can take."""
OVERSIZED = UPLOAD + 512 * MIB
"""Half a GiB past what the disk can take: still being sent when the disk fills, whatever
the socket buffers and the server's read-ahead hold at that moment."""
BLOCK = hashlib.sha256(b"limits").digest() * (MIB // 32)  # 1 MiB, not all one byte
RSS_SLACK_KIB = 200 * 1024


# --- helpers -----------------------------------------------------------------------------


def server_pid(server: ShoalServer) -> int:
    assert server.proc is not None
    return server.proc.pid


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_targets(pid: int) -> list[str]:
    out = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            out.append(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return out


def fds_into(pid: int, sandbox_id: str) -> list[str]:
    """The server's fds on files of this sandbox (its overlay, disk or directory)."""
    return [t for t in fd_targets(pid) if sandbox_id in t]


def file_fds_into(pid: int, sandbox_id: str) -> list[str]:
    """Like :func:`fds_into`, without the root directory fd a live sandbox's RootFS holds."""
    return [t for t in fds_into(pid, sandbox_id) if not t.endswith(f"/{sandbox_id}/rootfs")]


class PatternFile(io.RawIOBase):
    """A read-only file object of ``size`` bytes made of :data:`BLOCK`, generated on read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, len(BLOCK))
        start = self.served % len(BLOCK)
        chunk = (BLOCK[start:] + BLOCK[:start])[:n]
        buffer[:n] = chunk
        self.left -= n
        self.served += n
        return n


def df_kib(sbx: Sandbox) -> tuple[int, int]:
    """(size, available) of the sandbox's root filesystem in KiB, as ``df`` inside shows it."""
    out = sbx.commands.run("df -k --output=size,avail / | tail -1").stdout.split()
    return int(out[0]), int(out[1])


async def adf_kib(sbx: AsyncSandbox) -> tuple[int, int]:
    out = (await sbx.commands.run("df -k --output=size,avail / | tail -1")).stdout.split()
    return int(out[0]), int(out[1])


# --- a full disk -------------------------------------------------------------------------


def test_a_1_5_gib_upload_fills_the_disk_and_gets_507(
    sandbox: Any, shoal_server: ShoalServer
) -> None:
    pid = server_pid(shoal_server)
    size_kib, free_kib = df_kib(sandbox)
    assert DISK_MB * 1024 * 0.95 < size_kib <= DISK_MB * 1024, size_kib  # df shows diskSizeMB
    sandbox.files.write("warm.txt", "warm")  # first-use allocations happen before measuring
    before = rss_kib(pid)

    upload = PatternFile(OVERSIZED)
    with pytest.raises(NotEnoughSpaceException) as info:
        sandbox.files.write("big.bin", upload)  # a file object: octet-stream, streamed
    assert "/home/user/big.bin" in str(info.value)
    assert rss_kib(pid) - before < RSS_SLACK_KIB, (before, rss_kib(pid))
    # The server read no more than the disk took (plus what was in flight), not the whole
    # upload: it answered 507 and stopped reading.
    assert upload.served < OVERSIZED

    # The sandbox still works, and is full: the partial file stays, as upstream envd leaves it.
    assert sandbox.commands.run("echo alive").stdout == "alive\n"
    _, free_kib = df_kib(sandbox)
    assert free_kib < 1024, free_kib
    written = int(sandbox.commands.run("stat -c %s big.bin").stdout)
    assert written > 900 * MIB, written
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write("more.bin", BLOCK * 4)  # multipart, 4 MiB

    # Deleting the file frees the space (no fd of the server keeps it allocated).
    sandbox.files.remove("big.bin")
    _, free_kib = df_kib(sandbox)
    assert free_kib > 900 * 1024, free_kib
    info2 = sandbox.files.write("after.bin", BLOCK * 8)
    assert info2.path == "/home/user/after.bin"
    assert sandbox.commands.run("stat -c %s after.bin").stdout.strip() == str(8 * MIB)
    assert not file_fds_into(pid, sandbox.sandbox_id)


async def test_async_1_gib_upload_gets_507(
    async_sandbox_factory: Any, shoal_server: ShoalServer
) -> None:
    pid = server_pid(shoal_server)
    sbx = await async_sandbox_factory()
    await sbx.files.write("warm.txt", "warm")
    before = rss_kib(pid)
    sent = 0

    async def blocks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(UPLOAD // MIB):
            sent += MIB
            yield BLOCK

    with pytest.raises(NotEnoughSpaceException) as info:
        await sbx.files.write("big.bin", blocks())
    assert "/home/user/big.bin" in str(info.value)
    assert rss_kib(pid) - before < RSS_SLACK_KIB
    assert (await sbx.commands.run("echo alive")).stdout == "alive\n"
    _, free_kib = await adf_kib(sbx)
    assert free_kib < 1024, free_kib
    await sbx.files.remove("big.bin")
    _, free_kib = await adf_kib(sbx)
    assert free_kib > 900 * 1024, free_kib
    assert (await sbx.files.write("after.txt", "fits")).path == "/home/user/after.txt"


def test_multipart_and_write_files_past_the_disk(sandbox: Any) -> None:
    # Leave ~8 MiB, then upload more than that in one multipart request of several files.
    sandbox.commands.run("fallocate -l $(( $(df -k --output=avail / | tail -1) - 8192 ))K fill")
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write("one.bin", BLOCK * 16)
    sandbox.files.remove("one.bin")  # what it wrote before the disk was full
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write_files(
            [WriteEntry(path=f"many/{i}.bin", data=BLOCK * 4) for i in range(4)]
        )
    # The files before the one that did not fit are whole.
    assert sandbox.files.read("many/0.bin", format="bytes") == bytearray(BLOCK * 4)
    sandbox.files.remove("fill")
    assert len(sandbox.files.write_files([WriteEntry(path="ok.bin", data=BLOCK)])) == 1


def test_a_command_past_the_disk_gets_enospc_and_other_sandboxes_do_not_notice(
    sandbox_factory: Any,
) -> None:
    full = sandbox_factory()
    other = sandbox_factory()
    result = full.commands.run(
        f"dd if=/dev/zero of=fill bs=1M count={DISK_MB + 100} 2>&1; echo exit=$?", timeout=120
    )
    assert "No space left on device" in result.stdout, result.stdout
    assert result.stdout.rstrip().endswith("exit=1"), result.stdout
    _, free_kib = df_kib(full)
    assert free_kib < 1024, free_kib
    # The other sandbox has its whole disk, and writes as usual.
    size_kib, free_kib = df_kib(other)
    assert free_kib > size_kib - 64 * 1024, (size_kib, free_kib)
    out = other.commands.run("dd if=/dev/zero of=f bs=1M count=100 2>&1 && sync && stat -c %s f")
    assert out.stdout.rstrip().endswith(str(100 * MIB)), out.stdout
    assert other.files.write("ok.txt", "ok").path == "/home/user/ok.txt"
    # The full one recovers once its own file is gone.
    full.commands.run("rm fill")
    assert full.files.write("ok.txt", "ok").path == "/home/user/ok.txt"


# --- many files, empty files, awkward names ------------------------------------------------


def test_write_files_with_500_entries(sandbox: Any) -> None:
    entries = [
        WriteEntry(path=f"five/d{i % 10}/f{i:03}.txt", data=f"{i}:" + "x" * i) for i in range(500)
    ]
    infos = sandbox.files.write_files(entries)
    assert [i.path for i in infos] == [f"/home/user/{e['path']}" for e in entries]
    assert all(i.type == FileType.FILE for i in infos)
    out = sandbox.commands.run("find five -type f | wc -l; cat five/d*/f*.txt | wc -c").stdout
    assert out.split() == ["500", str(sum(len(f"{i}:") + i for i in range(500)))]
    assert sandbox.files.read("five/d7/f437.txt") == "437:" + "x" * 437
    assert len(sandbox.files.list("five", depth=2)) == 510


async def test_async_write_files_with_500_entries(async_sandbox_factory: Any) -> None:
    sbx = await async_sandbox_factory()
    entries = [
        AsyncWriteEntry(path=f"five/f{i:03}.bin", data=bytes([i % 256]) * 3) for i in range(500)
    ]
    infos = await sbx.files.write_files(entries)
    assert [i.name for i in infos] == [f"f{i:03}.bin" for i in range(500)]
    out = (await sbx.commands.run("ls five | wc -l; cat five/* | wc -c")).stdout
    assert out.split() == ["500", "1500"]
    assert bytes(await sbx.files.read("five/f300.bin", format="bytes")) == bytes([300 % 256]) * 3


def test_read_an_empty_file(sandbox: Any) -> None:
    sandbox.commands.run("touch touched")
    sandbox.files.write("written", "")
    for path in ("touched", "written"):
        assert sandbox.files.read(path) == ""
        assert sandbox.files.read(path, format="bytes") == bytearray()
        assert b"".join(sandbox.files.read(path, format="stream")) == b""
        assert sandbox.files.read(path, gzip=True) == ""
        assert sandbox.files.get_info(path).size == 0
    assert sandbox.commands.run("stat -c '%s %a %U' written").stdout == "0 644 user\n"


async def test_async_read_an_empty_file(async_sandbox_factory: Any) -> None:
    sbx = await async_sandbox_factory()
    await sbx.files.write("empty", b"")
    assert await sbx.files.read("empty") == ""
    assert bytes(await sbx.files.read("empty", format="bytes")) == b""
    assert [c async for c in await sbx.files.read("empty", format="stream")] in ([], [b""])
    assert (await sbx.files.get_info("empty")).size == 0


AWKWARD_DIR = "dir with  spaces/ünïcödé ✓"
AWKWARD_NAME = "naïve файл 文件 #1 %20 ?.txt"


def _urlopen(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_paths_with_spaces_and_unicode(sandbox_factory: Any) -> None:
    sbx = sandbox_factory(secure=True)
    path = f"{AWKWARD_DIR}/{AWKWARD_NAME}"
    full = f"/home/user/{path}"
    info = sbx.files.write(path, "content ✓")
    assert (info.path, info.name) == (full, AWKWARD_NAME)
    assert sbx.files.read(path) == "content ✓"
    assert sbx.files.read(full, format="bytes") == bytearray("content ✓".encode())
    assert sbx.files.exists(path)
    entry = sbx.files.get_info(path)
    assert (entry.path, entry.name, entry.size) == (full, AWKWARD_NAME, len("content ✓".encode()))
    assert [e.name for e in sbx.files.list(AWKWARD_DIR)] == [AWKWARD_NAME]
    # The shell sees the same name.
    assert sbx.commands.run("ls 'dir with  spaces'/*/").stdout == f"{AWKWARD_NAME}\n"

    # Signed URLs carry the raw path; a plain client percent-encodes it on the way.
    status, body = _urlopen(sbx.download_url(path, "user", 60))
    assert (status, body) == (200, "content ✓".encode())
    status, body = _urlopen(sbx.upload_url(f"{AWKWARD_DIR}/up ✓.bin"), b"raw \xff")
    assert status == 200, body
    assert json.loads(body) == [
        {"path": f"/home/user/{AWKWARD_DIR}/up ✓.bin", "name": "up ✓.bin", "type": "file"}
    ]
    assert sbx.files.read(f"{AWKWARD_DIR}/up ✓.bin", format="bytes") == bytearray(b"raw \xff")
    # A URL whose path was altered (here: decoded differently) does not pass.
    url = sbx.download_url(path, "user")
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    query["path"] = [path.replace("✓", "v")]
    tampered = parts._replace(query=urllib.parse.urlencode(query, doseq=True)).geturl()
    assert _urlopen(tampered)[0] == 401

    moved = sbx.files.rename(path, f"{AWKWARD_DIR}/renamed é.txt")
    assert moved.path == f"/home/user/{AWKWARD_DIR}/renamed é.txt"
    sbx.files.remove(AWKWARD_DIR)
    assert not sbx.files.exists(AWKWARD_DIR)


async def test_async_paths_with_spaces_and_unicode(async_sandbox_factory: Any) -> None:
    sbx = await async_sandbox_factory()
    path = f"{AWKWARD_DIR}/{AWKWARD_NAME}"
    info = await sbx.files.write(path, b"\x00bytes", use_octet_stream=True)
    assert info.path == f"/home/user/{path}"
    assert bytes(await sbx.files.read(path, format="bytes")) == b"\x00bytes"
    assert [e.name for e in await sbx.files.list(AWKWARD_DIR)] == [AWKWARD_NAME]
    await sbx.files.remove(path)
    with pytest.raises(NotFoundException):
        await sbx.files.read(path)


# --- a sandbox killed during an upload ---------------------------------------------------------


def test_killed_during_an_upload(sandbox_factory: Any, shoal_server: ShoalServer) -> None:
    pid = server_pid(shoal_server)
    sbx = sandbox_factory()
    sbx.files.write("warm.txt", "warm")
    fds_before = len(fd_targets(pid))
    halfway = threading.Event()
    killed = threading.Event()
    outcome: dict[str, Any] = {}

    def blocks() -> Iterator[bytes]:
        for i in range(UPLOAD // MIB):
            if i == 64:
                halfway.set()
                killed.wait(60)  # the rest goes to a sandbox that is gone
            yield BLOCK

    def upload() -> None:
        try:
            outcome["result"] = sbx.files.write("dying.bin", blocks())
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert halfway.wait(60)
    # The server is writing the file now: one fd on it (what must go away).
    wait_for(lambda: file_fds_into(pid, sbx.sandbox_id), within=30, what="the upload's fd")
    assert Sandbox.kill(sbx.sandbox_id) is True
    killed.set()
    thread.join(120)
    assert not thread.is_alive()
    assert "result" not in outcome, outcome
    # The body's connection breaks; the SDK's health probe then says the sandbox is gone.
    assert isinstance(outcome["error"], SandboxNotRunningException), repr(outcome["error"])
    assert "killed" in str(outcome["error"])
    wait_for(lambda: not fds_into(pid, sbx.sandbox_id), within=30, what="fds released")
    # Connections of the aborted request are closed too; a few keep-alive sockets may remain.
    wait_for(lambda: len(fd_targets(pid)) <= fds_before + 4, within=30, what="fd count back")


async def test_async_killed_during_an_upload(
    async_sandbox_factory: Any, shoal_server: ShoalServer
) -> None:
    pid = server_pid(shoal_server)
    sbx = await async_sandbox_factory()
    await sbx.files.write("warm.txt", "warm")
    halfway = asyncio.Event()
    killed = asyncio.Event()

    async def blocks() -> AsyncIterator[bytes]:
        for i in range(UPLOAD // MIB):
            if i == 64:
                halfway.set()
                await asyncio.wait_for(killed.wait(), 60)
            yield BLOCK

    task = asyncio.create_task(sbx.files.write("dying.bin", blocks()))
    await asyncio.wait_for(halfway.wait(), 60)
    for _ in range(300):
        if file_fds_into(pid, sbx.sandbox_id):
            break
        await asyncio.sleep(0.1)
    assert file_fds_into(pid, sbx.sandbox_id), "the upload's fd"
    assert await AsyncSandbox.kill(sbx.sandbox_id) is True
    killed.set()
    with pytest.raises(SandboxNotRunningException, match="killed"):
        await asyncio.wait_for(task, 120)
    for _ in range(300):
        if not fds_into(pid, sbx.sandbox_id):
            break
        await asyncio.sleep(0.1)
    assert not fds_into(pid, sbx.sandbox_id)
