"""``POST /files``: multipart (one part per file, named ``file``) or a raw octet-stream body.

The body streams straight into the target fds: it is read in batches of at most
:data:`~shoal.envd.files.transfer.CHUNK` bytes, each handed to a worker thread that
decompresses (``Content-Encoding: gzip``), parses (``python-multipart``'s streaming
parser) and writes it while the next batch is received. Nothing holds a whole file.

Per file, as upstream envd: the destination is the part's filename (relative → the user's
home, directories kept) or the ``path`` query parameter; parents are created owned by the
user; the file is created ``0644`` (an existing file keeps its mode), chowned to the user,
emptied, written, and its metadata replaced. The same destination twice in one request is
a 400 (files before it stay written). An upload cut off mid-body leaves the file written
so far, as upstream does; its fd is released either way.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from shoal.envd.files import metadata as meta
from shoal.envd.files.transfer import CHUNK, NO_SPACE, Steps, os_error
from shoal.envd.paths import resolve
from shoal.envd.sandbox import EnvdSandbox, User
from shoal.errors import InvalidArgument, NoSpace, ShoalError
from shoal.runtime.rootfs import replace_xattrs

FILE_PART = b"file"


def display(text: str) -> str:
    """``text`` safe for a JSON body: bytes that were not UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _Writer:
    """Thread side of one upload: the files written so far and the one being written."""

    def __init__(
        self,
        sandbox: EnvdSandbox,
        user: User,
        metadata: dict[str, str],
        path_override: str | None,
    ) -> None:
        self.sandbox = sandbox
        self.user = user
        self.metadata = metadata
        self.xattrs = meta.as_xattrs(metadata)
        self.path_override = path_override
        self.entries: list[dict[str, Any]] = []
        self._paths: set[str] = set()
        self._fd = -1
        self._path = ""

    def begin(self, raw_path: str) -> None:
        path = resolve(
            self.path_override if self.path_override is not None else raw_path,
            home=self.user.home,
            workdir=self.sandbox.default_workdir,
        )
        if path in self._paths:
            message = (
                f"you cannot upload multiple files to the same path '{display(path)}' in one"
                " upload request, only the first specified file was uploaded"
            )
            raise InvalidArgument(message)
        self._paths.add(path)
        self._path = path
        try:
            self._fd = self.sandbox.fs.create_file(path, self.user.uid, self.user.gid)
        except OSError as exc:
            raise os_error(exc, path, writing=True) from exc

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise NoSpace(
                        f"not enough disk space available to write '{display(self._path)}'"
                    ) from exc
                raise os_error(exc, self._path, writing=True) from exc
            view = view[n:]

    def end(self) -> None:
        try:
            replace_xattrs(self._fd, meta.XATTR_PREFIX, self.xattrs)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise NoSpace("not enough space for file metadata") from exc
            raise os_error(exc, self._path, writing=True) from exc
        finally:
            self.release()
        entry: dict[str, Any] = {
            "path": display(self._path),
            "name": display(self._path.rsplit("/", 1)[-1]),
            "type": "file",
        }
        if self.metadata:
            entry["metadata"] = dict(self.metadata)
        self.entries.append(entry)

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _Gunzip:
    """Streaming ``Content-Encoding: gzip`` decoder (several members allowed, as Go's
    reader does); output goes to ``sink`` in pieces of at most :data:`CHUNK` bytes, so a
    small body that inflates hugely never sits in memory."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> None:
        while data:
            self._started = True
            try:
                out = self._d.decompress(data, CHUNK)
                if out:
                    self._sink(out)
                while self._d.unconsumed_tail:
                    out = self._d.decompress(self._d.unconsumed_tail, CHUNK)
                    if out:
                        self._sink(out)
            except zlib.error as exc:
                raise InvalidArgument(f"error decompressing request body: {exc}") from exc
            data = b""
            if self._d.eof and self._d.unused_data:
                data = self._d.unused_data
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def finish(self) -> None:
        if self._started and not self._d.eof:
            raise InvalidArgument("error decompressing request body: unexpected EOF")


class _Multipart:
    """Feeds a multipart body to :class:`_Writer`, one file per part named ``file``."""

    def __init__(self, boundary: bytes, writer: _Writer) -> None:
        self._writer = writer
        self._active = False
        self._ended = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        callbacks: dict[str, Callable[..., None]] = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except ShoalError:
            raise
        except Exception as exc:  # the parser's own errors: a malformed body
            raise InvalidArgument(f"error reading form: {exc}") from exc

    def finish(self) -> None:
        if not self._ended:
            raise InvalidArgument("error reading form: unexpected end of multipart body")

    def _part_begin(self) -> None:
        self._headers = {}
        self._active = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != FILE_PART:
            return
        filename = options.get(b"filename", b"").decode("utf-8", "surrogateescape")
        self._writer.begin(filename)
        self._active = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._active:
            self._writer.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        if self._active:
            self._active = False
            self._writer.end()

    def _end(self) -> None:
        self._ended = True


async def upload(
    sandbox: EnvdSandbox,
    user: User,
    query: dict[str, str],
    headers: list[tuple[bytes, bytes]],
    body: AsyncIterator[bytes],
) -> list[dict[str, Any]]:
    """Write the files of one ``POST /files`` request; returns the response entries."""
    header = {name.lower(): value for name, value in reversed(headers)}  # first wins
    metadata = meta.from_headers(headers)
    content_type = header.get(b"content-type", b"").decode("latin-1")
    media_type, options = parse_options_header(content_type)
    path_param = query.get("path")
    writer = _Writer(sandbox, user, metadata, path_param)
    finish_format: Callable[[], None]
    if media_type == b"application/octet-stream":
        if path_param is None:
            raise InvalidArgument("path query parameter is required for raw body upload")
        started = False

        def raw(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                writer.begin("")
            writer.write(data)

        sink: Callable[[bytes], None] = raw

        def finish_raw() -> None:
            if not started:
                writer.begin("")
            writer.end()

        finish_format = finish_raw
    elif media_type.startswith(b"multipart/"):
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidArgument("error parsing multipart form: no boundary")
        parser = _Multipart(boundary, writer)
        sink, finish_format = parser.feed, parser.finish
    else:
        raise InvalidArgument(
            f"unsupported content type: {content_type}, expected multipart/form-data or"
            " application/octet-stream"
        )
    encoding = header.get(b"content-encoding", b"").decode("latin-1").strip().lower()
    gunzip: _Gunzip | None = None
    if encoding in ("gzip", "x-gzip"):
        gunzip = _Gunzip(sink)
        sink = gunzip.feed
    elif encoding not in ("", "identity"):
        raise InvalidArgument(f"unsupported Content-Encoding: {encoding}, supported: [gzip]")

    def finish() -> None:
        if gunzip is not None:
            gunzip.finish()
        finish_format()

    steps = Steps(writer.release)
    try:
        await _pump(body, steps, sink)
        await steps.run(finish)
    finally:
        steps.close()
    return writer.entries


async def _pump(body: AsyncIterator[bytes], steps: Steps, sink: Callable[[bytes], None]) -> None:
    """Receive the next batch while a worker thread writes the previous one."""
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in body:
            if not chunk:
                continue
            batch.append(chunk)
            size += len(chunk)
            if size >= CHUNK:
                if pending is not None:
                    await pending
                pending = steps.submit(sink, b"".join(batch))
                batch, size = [], 0
        if pending is not None:
            await pending
            pending = None
        if batch:
            await steps.run(sink, b"".join(batch))
    finally:
        if pending is not None:
            if pending.done():
                if not pending.cancelled():
                    pending.exception()  # retrieved: whatever ended the pump is reported
            else:
                pending.cancel()  # the step still finishes in its thread; Steps waits
