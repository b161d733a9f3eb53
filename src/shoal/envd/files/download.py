"""``GET /files``: a file's bytes, streamed from an fd opened inside the sandbox's root.

At most one :data:`~shoal.envd.files.transfer.CHUNK` is in memory per download, gzip or
not; the fd is opened through :meth:`RootFS.open_regular` (``openat2`` with
``RESOLVE_IN_ROOT``, regular files only), never by a host path string.

gzip: the response is compressed when the client asks for gzip *specifically* (the SDK's
``gzip=True`` sends exactly ``Accept-Encoding: gzip``) or refuses identity. httpx's
default ``gzip, deflate`` gets identity: Accept-Encoding is advisory, and compressing
every download would cap large-file throughput at zlib's speed for no client benefit on
a local link. (Upstream envd compresses whenever gzip is acceptable; the bytes the SDK
returns are the same either way.)
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import urllib.parse
import zlib
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shoal.envd.files.transfer import CHUNK, Steps, os_error
from shoal.envd.sandbox import EnvdSandbox
from shoal.errors import ShoalError

GZIP_LEVEL = 1
"""Fast: a file download is bound by compression speed long before the link."""

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class NotAcceptable(ShoalError):
    status, code = 406, "invalid_argument"


def choose_encoding(accept: str | None) -> str | None:
    """``"gzip"`` or None (identity) for an ``Accept-Encoding`` value; see module doc.

    >>> choose_encoding("gzip"), choose_encoding("gzip, deflate"), choose_encoding(None)
    ('gzip', None, None)
    """
    if not accept or not accept.strip():
        return None
    qualities: dict[str, float] = {}
    for item in accept.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        qualities.setdefault("gzip" if coding == "x-gzip" else coding, q)
    star = qualities.get("*")
    gzip_q = qualities.get("gzip", star if star is not None else 0.0)
    identity_q = qualities.get("identity", star if star is not None else 1.0)
    others = {c for c, q in qualities.items() if q > 0 and c not in ("gzip", "identity", "*")}
    if gzip_q > 0 and (identity_q <= 0 or ("gzip" in qualities and not others)):
        return "gzip"
    if identity_q > 0:
        return None
    raise NotAcceptable("no acceptable encoding found, supported: [gzip]")


def content_disposition(name: str) -> str:
    """``inline; filename=…`` (RFC 6266; ``filename*`` for names that are not ASCII)."""
    if name and all(c in _TOKEN_CHARS for c in name):
        return f"inline; filename={name}"
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        return "inline; filename*=UTF-8''" + urllib.parse.quote(raw, safe="")
    escaped = "".join(f"\\{c}" if c in '"\\' else c for c in name if c.isprintable())
    return f'inline; filename="{escaped}"'


class _FileStream(StreamingResponse):
    """A streaming response that releases its file once the response is over, however it
    ends (finished, client gone, request cancelled because the sandbox died)."""

    def __init__(self, body: AsyncIterator[bytes], steps: Steps, **kwargs: object) -> None:
        super().__init__(body, **kwargs)  # type: ignore[arg-type]
        self._steps = steps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._steps.close()


async def download(
    sandbox: EnvdSandbox, path: str, accept_encoding: str | None
) -> StreamingResponse:
    """The response for ``GET /files`` of the resolved sandbox ``path``."""
    encoding = choose_encoding(accept_encoding)
    try:
        fd, st = await asyncio.to_thread(sandbox.fs.open_regular, path, os.O_RDONLY)
    except OSError as exc:
        raise os_error(exc, path, writing=False) from exc
    steps = Steps(lambda: os.close(fd))
    name = path.rsplit("/", 1)[-1]
    headers = {
        "content-disposition": content_disposition(name),
        "vary": "Accept-Encoding",
    }
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if encoding == "gzip":
        headers["content-encoding"] = "gzip"
        body = _gzip_chunks(fd, steps)
    else:
        headers["content-length"] = str(st.st_size)
        body = _chunks(fd, st.st_size, steps)
    return _FileStream(body, steps, headers=headers, media_type=media_type)


async def _chunks(fd: int, size: int, steps: Steps) -> AsyncIterator[bytes]:
    # Exactly the size announced in Content-Length: a file that grows meanwhile is cut
    # there; one that shrinks ends the body short, which the server turns into an
    # aborted response (the client must not take a truncated file for a whole one).
    remaining = size
    while remaining > 0:
        data = await steps.run(os.read, fd, min(CHUNK, remaining))
        if not data:
            return
        remaining -= len(data)
        yield data


async def _gzip_chunks(fd: int, steps: Steps) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def step() -> tuple[bytes, bool]:
        data = os.read(fd, CHUNK)
        if not data:
            return compressor.flush(), True
        return compressor.compress(data), False

    while True:
        out, done = await steps.run(step)
        if out:
            yield out
        if done:
            return
