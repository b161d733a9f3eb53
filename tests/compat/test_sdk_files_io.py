"""``files.read`` / ``write`` / ``write_files`` and signed URLs through the official SDK
(sync and async), against a live server: envd's ``/files`` (e2b-compat §4.4, §4.5)."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import FileType, InvalidArgumentException, NotFoundException
from e2b.sandbox.filesystem.filesystem import WriteEntry
from support.server import ShoalServer


def test_write_and_read_formats(sandbox: Any) -> None:
    info = sandbox.files.write("io/a.txt", "héllo")
    assert (info.path, info.name, info.type, info.metadata) == (
        "/home/user/io/a.txt",
        "a.txt",
        FileType.FILE,
        None,
    )
    assert sandbox.files.read("io/a.txt") == "héllo"
    assert sandbox.files.read("/home/user/io/a.txt", format="bytes") == bytearray("héllo".encode())
    stream = sandbox.files.read("~/io/a.txt", format="stream")
    assert b"".join(stream) == "héllo".encode()
    out = sandbox.commands.run("stat -c '%a %U %G' io io/a.txt").stdout.split("\n")
    assert out[:2] == ["755 user user", "644 user user"]
    # Overwrite: truncated, mode and owner kept as the user's.
    sandbox.files.write("io/a.txt", b"x")
    assert sandbox.files.read("io/a.txt") == "x"
    # bytes, file-like (octet-stream) and root's files
    blob = bytes(range(256)) * 1000
    sandbox.files.write("io/blob.bin", io.BytesIO(blob))
    assert bytes(sandbox.files.read("io/blob.bin", format="bytes")) == blob
    root_file = sandbox.files.write("/root/r.txt", "r", user="root")
    assert root_file.path == "/root/r.txt"
    assert sandbox.commands.run("stat -c %U /root/r.txt", user="root").stdout.strip() == "root"


def test_gzip_both_ways(sandbox: Any) -> None:
    text = "compressible " * 10_000
    sandbox.files.write("gz.txt", text, gzip=True)
    assert sandbox.files.read("gz.txt") == text
    assert sandbox.files.read("gz.txt", gzip=True) == text
    assert bytes(sandbox.files.read("gz.txt", format="bytes", gzip=True)) == text.encode()
    infos = sandbox.files.write_files(
        [WriteEntry(path=f"gz{i}.txt", data=f"file {i}") for i in range(3)], gzip=True
    )
    assert [i.name for i in infos] == ["gz0.txt", "gz1.txt", "gz2.txt"]
    assert sandbox.files.read("gz2.txt") == "file 2"


def test_metadata_is_stored_replaced_and_cleared(sandbox: Any) -> None:
    info = sandbox.files.write("m.txt", "x", metadata={"Author": "me", "purpose": "test"})
    assert info.metadata == {"author": "me", "purpose": "test"}
    attrs = sandbox.commands.run(
        "python3 -c \"import os; print(sorted((n, os.getxattr('m.txt', n).decode())"
        " for n in os.listxattr('m.txt')))\""
    ).stdout.strip()
    assert attrs == "[('user.e2b.author', 'me'), ('user.e2b.purpose', 'test')]"
    info = sandbox.files.write("m.txt", "y", metadata={"stage": "2"}, use_octet_stream=True)
    assert info.metadata == {"stage": "2"}
    assert sandbox.files.write("m.txt", "z").metadata is None
    assert (
        sandbox.commands.run(
            "python3 -c \"import os; print(os.listxattr('m.txt'))\""
        ).stdout.strip()
        == "[]"
    )
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write("bad.txt", "x", metadata={"k": "v" * 5000})
    assert not sandbox.files.exists("bad.txt")


def test_write_files_many_and_duplicates(sandbox: Any) -> None:
    entries = [WriteEntry(path=f"many/d{i % 7}/f{i}.txt", data=f"content {i}") for i in range(100)]
    infos = sandbox.files.write_files(entries)
    assert [i.path for i in infos] == [f"/home/user/{e['path']}" for e in entries]
    counts = sandbox.commands.run("find many -type f | wc -l; cat many/d*/f*.txt | wc -c").stdout
    assert counts.split() == ["100", str(sum(len(f"content {i}") for i in range(100)))]
    assert sandbox.files.read("many/d3/f52.txt") == "content 52"
    with pytest.raises(InvalidArgumentException, match="same path"):
        sandbox.files.write_files(
            [WriteEntry(path="dup", data="1"), WriteEntry(path="dup", data="2")]
        )


def test_read_errors(sandbox: Any) -> None:
    with pytest.raises(NotFoundException):
        sandbox.files.read("does/not/exist.txt")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read("/home")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read("a\x00b")
    with pytest.raises(Exception) as info:
        sandbox.files.read("/etc/hostname", user="nobody-here")
    assert "nobody-here" in str(info.value)


def _urlopen(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_signed_urls_without_routing_headers(sandbox_factory: Any) -> None:
    sbx = sandbox_factory(secure=True)
    other = sandbox_factory(secure=True)  # the proxy must pick the right one
    sbx.files.write("signed.txt", "signed content")
    other.files.write("signed.txt", "the other sandbox")

    assert _urlopen(sbx.download_url("signed.txt")) == (200, b"signed content")
    assert _urlopen(sbx.download_url("signed.txt", "user", 120)) == (200, b"signed content")
    assert _urlopen(other.download_url("signed.txt", "user")) == (200, b"the other sandbox")

    status, body = _urlopen(sbx.download_url("signed.txt", "user", use_signature_expiration=-120))
    assert status == 401
    assert json.loads(body) == {"code": 401, "message": "signature is already expired"}

    # Tampering: another path under the same signature.
    url = sbx.download_url("signed.txt", "user").replace("signed.txt", "other.txt")
    status, body = _urlopen(url)
    assert status == 401 and json.loads(body)["code"] == 401

    # upload_url: multipart with httpx (no SDK headers at all), and a raw body.
    up = sbx.upload_url("uploaded/via-url.txt", "user", 120)
    r = httpx.post(up, files={"file": ("ignored-name", b"posted")}, trust_env=False)
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"path": "/home/user/uploaded/via-url.txt", "name": "via-url.txt", "type": "file"}
    ]
    assert sbx.files.read("uploaded/via-url.txt") == "posted"
    status, _ = _urlopen(
        sbx.upload_url("raw.txt"), b"raw body", {"Content-Type": "application/octet-stream"}
    )
    assert status == 200 and sbx.files.read("raw.txt") == "raw body"
    # A download signature does not allow an upload.
    status, _ = _urlopen(
        sbx.download_url("raw.txt"), b"x", {"Content-Type": "application/octet-stream"}
    )
    assert status == 401
    assert sbx.files.read("raw.txt") == "raw body"


def test_unsigned_files_request_without_headers_is_401(shoal_server: ShoalServer) -> None:
    status, body = _urlopen(f"{shoal_server.sandbox_url}/files?path=a.txt")
    assert status == 401
    assert json.loads(body) == {"code": 401, "message": "missing signature query parameter"}


async def test_async_sdk_files(async_sandbox_factory: Any) -> None:
    sbx = await async_sandbox_factory()
    info = await sbx.files.write("async/a.txt", "async text", metadata={"k": "v"})
    assert info.path == "/home/user/async/a.txt" and info.metadata == {"k": "v"}
    assert await sbx.files.read("async/a.txt") == "async text"
    assert await sbx.files.read("async/a.txt", gzip=True) == "async text"
    await sbx.files.write("async/b.bin", b"\x00\xff" * 1000, gzip=True)
    assert bytes(await sbx.files.read("async/b.bin", format="bytes")) == b"\x00\xff" * 1000
    chunks = [c async for c in await sbx.files.read("async/b.bin", format="stream")]
    assert b"".join(chunks) == b"\x00\xff" * 1000
    infos = await sbx.files.write_files(
        [WriteEntry(path=f"async/m{i}.txt", data=str(i)) for i in range(10)]
    )
    assert len(infos) == 10
    with pytest.raises(NotFoundException):
        await sbx.files.read("async/missing")


# --- big files: the server's memory stays flat ---------------------------------------------

BIG_MB = 900
"""Under the default 1024 MB sandbox disk, so a disk quota does not turn this into a 507."""
BLOCK = hashlib.sha256(b"shoal").digest() * (1 << 15)  # 1 MiB, not all one byte


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _blocks() -> Iterator[bytes]:
    for _ in range(BIG_MB):
        yield BLOCK


def test_big_upload_and_download_keep_server_memory_flat(
    sandbox: Any, shoal_server: ShoalServer
) -> None:
    assert shoal_server.proc is not None
    pid = shoal_server.proc.pid
    sandbox.files.write("warm.txt", "warm")  # first-use allocations happen before measuring
    sandbox.files.read("warm.txt")
    before = _rss_kib(pid)

    sandbox.files.write("big.bin", _blocks())  # an iterable: octet-stream, streamed
    after_upload = _rss_kib(pid)
    digest = hashlib.sha256()
    for _ in range(BIG_MB):
        digest.update(BLOCK)
    out = sandbox.commands.run("stat -c %s big.bin && sha256sum big.bin", timeout=120).stdout
    assert out.split()[0] == str(BIG_MB << 20)
    assert out.split()[1] == digest.hexdigest()

    got = hashlib.sha256()
    size = 0
    for chunk in sandbox.files.read("big.bin", format="stream"):
        got.update(chunk)
        size += len(chunk)
    after_download = _rss_kib(pid)
    assert (size, got.hexdigest()) == (BIG_MB << 20, digest.hexdigest())
    assert after_upload - before < 200 * 1024, (before, after_upload)
    assert after_download - before < 200 * 1024, (before, after_download)
