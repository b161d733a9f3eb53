"""The init client and shoal-init must agree on every number of their wire format.

The two sides are written in different languages; this reads the C source so a change on
one side without the other fails here instead of as a hung or dropped connection.
"""

from __future__ import annotations

import errno
import re
import struct

import pytest

from shoal.runtime import initclient
from shoal.runtime.initbin import SOURCE
from shoal.runtime.initclient import _encode_spawn
from shoal.runtime.process import SpawnError, SpawnRequest

C = SOURCE.read_text()


def c_enum(name: str) -> int:
    match = re.search(rf"\b{name}\s*=\s*(0x[0-9a-fA-F]+|\d+)", C)
    assert match, f"{name} not found in shoal-init.c"
    return int(match.group(1), 0)


@pytest.mark.parametrize(
    "name",
    [
        "OP_SPAWN",
        "OP_SIGNAL",
        "OP_LIST",
        "OP_STATUS",
        "RP_OK",
        "RP_ERR",
        "RP_SPAWNED",
        "RP_LIST",
        "RP_STATUS",
        "EV_EXIT",
        "SPAWN_PTY",
        "SPAWN_STDIN",
        "ST_UNKNOWN",
        "ST_RUNNING",
        "ST_EXITED",
    ],
)
def test_constants_match_the_c_source(name: str) -> None:
    assert getattr(initclient, name) == c_enum(name)


def test_message_limit_matches() -> None:
    match = re.search(r"#define MAX_MSG \(1u << (\d+)\)", C)
    assert match and initclient.MAX_MSG == 1 << int(match.group(1))


def test_spawn_request_layout() -> None:
    body = _encode_spawn(
        SpawnRequest(["ls", "-l"], {"A": "1"}, "/w", 1000, 1001, groups=[5], pty=(80, 24))
    )
    fixed = struct.calcsize("=IIIHHIII")
    assert struct.unpack_from("=IIIHHIII", body) == (1000, 1001, 1, 80, 24, 1, 2, 1)
    assert struct.unpack_from("=I", body, fixed) == (5,)
    assert body[fixed + 4 :] == b"/w\0ls\0-l\0A=1\0"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (SpawnRequest([], {}, "/", 0, 0), errno.EINVAL),
        (SpawnRequest(["a\0b"], {}, "/", 0, 0), errno.EINVAL),
        (SpawnRequest(["true"], {"A=B": "1"}, "/", 0, 0), errno.EINVAL),
        (SpawnRequest(["true"], {}, "", 0, 0), errno.EINVAL),
        (SpawnRequest(["true"], {}, "/", -1, 0), errno.EINVAL),
        (SpawnRequest(["true"], {"X": "x" * (1 << 20)}, "/", 0, 0), errno.E2BIG),
    ],
)
def test_requests_init_would_refuse_fail_early(request_: SpawnRequest, code: int) -> None:
    with pytest.raises(SpawnError) as exc:
        _encode_spawn(request_)
    assert exc.value.errno == code
