"""Who may call envd and as whom commands run (e2b-compat §4.4).

Two independent things: the sandbox's access token (``X-Access-Token``) gates every request
but ``/health``; the run-as user comes from ``Authorization: Basic base64("<name>:")`` and
defaults to the sandbox's default user. The password part is always empty and ignored.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from shoal.envd.sandbox import EnvdSandbox, User
from shoal.errors import Unauthenticated

ACCESS_TOKEN_HEADER = "x-access-token"


def token_matches(sandbox: EnvdSandbox, presented: str | None) -> bool:
    """True when the sandbox is open or ``presented`` is its token (constant-time)."""
    if sandbox.access_token is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), sandbox.access_token.encode())


def basic_username(authorization: str | None) -> str | None:
    """The user named by a ``Basic`` Authorization header, or None when there is none.

    >>> basic_username("Basic dXNlcjo=")
    'user'
    """
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthenticated(f"unsupported authorization scheme {scheme!r}")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthenticated("malformed Basic authorization header") from exc
    name, _, _password = decoded.partition(":")
    return name or None


def resolve_user(sandbox: EnvdSandbox, authorization: str | None) -> User:
    """The run-as user for a request: the Basic-auth user, else the sandbox default."""
    name = basic_username(authorization) or sandbox.default_user
    user = sandbox.lookup_user(name)
    if user is None:
        raise Unauthenticated(f"invalid username: '{name}'")
    return user
