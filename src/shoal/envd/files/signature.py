"""Signed ``/files`` URLs (e2b-compat §4.5) and who may call ``/files`` at all.

A signature is ``v1_`` + unpadded standard base64 of
``SHA256("<path>:<op>:<username>:<accessToken>[:<expiration>]")``: ``op`` is ``read`` (GET)
or ``write`` (POST), ``username`` the query value or ``""``, ``path`` the raw query value
(not resolved). The SDK computes it client-side from the sandbox's envd access token, so a
URL from ``download_url()`` works in any HTTP client without headers.

    >>> sign("a.txt", "read", "", "tok")
    'v1_gDv73H8R9a10OdCSX0/JNMqMYLPpmCQAYJY+U68oQjM'

Query values are taken as the *first* occurrence of a name (Go's ``url.Values.Get``, which
upstream envd uses), here and in the proxy alike, so both judge the same values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from shoal.errors import InvalidArgument, Unauthenticated

EXPIRED_MESSAGE = "signature is already expired"
MISSING_MESSAGE = "missing signature query parameter"
INVALID_MESSAGE = "invalid signature"
TOKEN_MISMATCH_MESSAGE = "access token present in header but does not match"

READ = "read"
WRITE = "write"


def operation_of(method: str) -> str | None:
    """``read`` for GET, ``write`` for POST; other methods have no signed form."""
    return {"GET": READ, "POST": WRITE}.get(method.upper())


def first_values(query_string: bytes | str) -> dict[str, str]:
    """The first value of every query parameter, percent-decoded.

    Bytes that are not UTF-8 survive as surrogates (``surrogateescape``), so a path that
    names a non-UTF-8 file reaches the filesystem unchanged.
    """
    raw = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    out: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(
        raw, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"
    ):
        out.setdefault(name, value)
    return out


def sign(
    path: str, operation: str, username: str, access_token: str, expiration: int | None = None
) -> str:
    parts = [path, operation, username, access_token]
    if expiration is not None:
        parts.append(str(expiration))
    digest = hashlib.sha256(":".join(parts).encode("utf-8", "surrogateescape")).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SignedRequest:
    """The parts of a ``/files`` request a signature covers."""

    path: str
    operation: str
    username: str
    signature: str | None
    expiration: int | None

    @classmethod
    def parse(cls, operation: str, query: Mapping[str, str]) -> SignedRequest:
        raw_exp = query.get("signature_expiration")
        expiration: int | None = None
        if raw_exp is not None:
            try:
                expiration = int(raw_exp.strip())
            except ValueError:
                raise InvalidArgument(
                    f"invalid signature_expiration {raw_exp!r}: expected Unix seconds"
                ) from None
        return cls(
            path=query.get("path", ""),
            operation=operation,
            username=query.get("username", ""),
            signature=query.get("signature"),
            expiration=expiration,
        )

    def signed_by(self, access_token: str) -> bool:
        """True when the signature was made with ``access_token`` (constant-time)."""
        if self.signature is None:
            return False
        expected = sign(self.path, self.operation, self.username, access_token, self.expiration)
        return hmac.compare_digest(expected.encode(), self.signature.encode("utf-8", "replace"))

    def expired(self, now: float | None = None) -> bool:
        return self.expiration is not None and self.expiration < int(
            time.time() if now is None else now
        )


def authorize(access_token: str | None, header_token: str | None, request: SignedRequest) -> None:
    """Let a ``/files`` request through, or raise :class:`Unauthenticated` (401).

    Order as upstream envd: an open sandbox needs nothing; an ``X-Access-Token`` header,
    when present, must match (no signature needed then); else the signature must be
    present and valid, and then unexpired.
    """
    if access_token is None:
        return
    if header_token:
        if not hmac.compare_digest(header_token.encode(), access_token.encode()):
            raise Unauthenticated(TOKEN_MISMATCH_MESSAGE)
        return
    if request.signature is None:
        raise Unauthenticated(MISSING_MESSAGE)
    if not request.signed_by(access_token):
        raise Unauthenticated(INVALID_MESSAGE)
    if request.expired():
        raise Unauthenticated(EXPIRED_MESSAGE)


Candidates = Callable[[], Awaitable[Iterable[tuple[str, str | None]]]]
"""Running sandboxes as ``(sandbox_id, access_token)`` pairs."""


class SignatureFinder:
    """Which sandbox a header-less signed ``/files`` request is for.

    ``download_url()`` / ``upload_url()`` with ``E2B_SANDBOX_URL`` carry no routing headers;
    the sandbox is the one whose access token made the signature. Matching costs one
    SHA-256 per running sandbox, so positive matches are remembered (a URL is typically
    fetched more than once, e.g. retries). A remembered match only *routes*: envd checks the
    signature again, so a stale entry can produce a 401 or a 502, never access.
    """

    MAX_CACHED = 10_000

    def __init__(self, candidates: Candidates) -> None:
        self._candidates = candidates
        self._cache: dict[tuple[str, str, str, int | None, str], str] = {}

    async def __call__(self, method: str, query_string: bytes) -> str | None:
        operation = operation_of(method)
        if operation is None:
            return None
        try:
            request = SignedRequest.parse(operation, first_values(query_string))
        except InvalidArgument:
            return None
        if request.signature is None:
            return None
        key = (
            request.path,
            request.operation,
            request.username,
            request.expiration,
            request.signature,
        )
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        for sandbox_id, token in await self._candidates():
            if token is not None and request.signed_by(token):
                if len(self._cache) >= self.MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = sandbox_id
                return sandbox_id
        return None

    def forget(self, sandbox_id: str) -> None:
        for key in [k for k, v in self._cache.items() if v == sandbox_id]:
            del self._cache[key]
