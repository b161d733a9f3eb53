"""File metadata: ``X-Metadata-<Key>`` upload headers ⇄ ``user.e2b.<key>`` xattrs (§4.5).

Keys are lowercased, values stored as given. An upload replaces the file's whole metadata
set; an upload without such headers clears it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shoal.errors import InvalidArgument

HEADER_PREFIX = b"x-metadata-"
XATTR_PREFIX = "user.e2b."
MAX_KEY_BYTES = 255 - len(XATTR_PREFIX)
"""An xattr name is at most 255 bytes, the prefix included."""
MAX_TOTAL_BYTES = 4096
"""Keys plus values of one file (an ext4 inode's xattr space is about a block)."""

_KEY = re.compile(r"\A[a-z0-9!#$%&'*+\-.^_`|~]+\Z")
_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The metadata an upload carries (first value of a repeated header wins)."""
    metadata: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if not low.startswith(HEADER_PREFIX):
            continue
        key = low[len(HEADER_PREFIX) :].decode("latin-1")
        if key and key not in metadata:
            metadata[key] = value.decode("latin-1")
    validate(metadata)
    return metadata


def validate(metadata: dict[str, str]) -> None:
    total = 0
    for key, value in metadata.items():
        if not _KEY.match(key):
            raise InvalidArgument(f"invalid metadata: key {key!r} is not an HTTP token")
        if len(key) > MAX_KEY_BYTES:
            raise InvalidArgument(
                f"invalid metadata: key {key[:32]!r}... is longer than {MAX_KEY_BYTES} bytes"
            )
        if not _VALUE.match(value):
            raise InvalidArgument(f"invalid metadata: value of {key!r} is not printable US-ASCII")
        total += len(key) + len(value)
    if total > MAX_TOTAL_BYTES:
        raise InvalidArgument(
            f"invalid metadata: {total} bytes of keys and values, at most {MAX_TOTAL_BYTES}"
        )


def as_xattrs(metadata: dict[str, str]) -> dict[str, bytes]:
    return {key: value.encode("ascii") for key, value in metadata.items()}
