"""Identifiers: sandbox ids, access tokens, API keys, node ids.

Sandbox ids are 20 lowercase alphanumerics, like E2B's: DNS-label safe and free
of ``-``, because hosts are parsed as ``<port>-<sandbox_id>.<domain>``.
"""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
SANDBOX_ID_RE = re.compile(r"^[a-z0-9]{1,63}$")
API_KEY_RE = re.compile(r"^e2b_[0-9a-f]{40}$")


def new_sandbox_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))


def new_access_token() -> str:
    return secrets.token_hex(32)


def new_api_key() -> str:
    """An API key shaped ``e2b_<40 hex>``, which every SDK generation accepts."""
    return "e2b_" + secrets.token_hex(20)


def new_node_id() -> str:
    return "node" + secrets.token_hex(4)


def is_sandbox_id(value: str) -> bool:
    return bool(SANDBOX_ID_RE.match(value))
