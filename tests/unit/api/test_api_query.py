"""List-filter parsing: the SDKs' triple-encoded metadata, states, timestamps, tokens."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.api import query as q
from shoal.errors import InvalidArgument
from shoal.store import Cursor, SandboxState


def as_sent_by_sdk(metadata: dict[str, str]) -> str:
    """Python SDK paginator encoding, then what the server framework hands us (decoded once)."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    on_wire = urllib.parse.urlencode({"metadata": urllib.parse.urlencode(quoted)})
    return urllib.parse.parse_qs(on_wire, keep_blank_values=True)["metadata"][0]


def test_metadata_roundtrip_with_separators_spaces_unicode() -> None:
    meta = {"a&b": "c=d", "sp ace": "x+y z", "ключ": "✓ значение", "%41": "100%"}
    assert q.parse_metadata_filter(as_sent_by_sdk(meta)) == meta


@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=5))
def test_metadata_roundtrip_any_text(meta: dict[str, str]) -> None:
    assert q.parse_metadata_filter(as_sent_by_sdk(meta)) == meta


def test_metadata_without_equals_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        q.parse_metadata_filter("justakey")
    assert q.parse_metadata_filter(None) == {}


def test_states() -> None:
    both = {SandboxState.RUNNING, SandboxState.PAUSED}
    assert q.parse_states(None) == both
    assert q.parse_states(["running"]) == {SandboxState.RUNNING}
    assert q.parse_states(["running,paused"]) == both
    assert q.parse_states(["paused", "running"]) == both
    with pytest.raises(InvalidArgument, match="killed"):
        q.parse_states(["killed"])


def test_timestamps_z_and_offsets() -> None:
    want = datetime(2026, 1, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert q.parse_timestamp("2026-01-01T09:00:00.123Z", "t") == want
    assert q.parse_timestamp("2026-01-01T10:00:00.123+01:00", "t") == want
    # '+' decoded to ' ' by a sloppy client encoder
    assert q.parse_timestamp("2026-01-01T10:00:00.123 01:00", "t") == want
    with pytest.raises(InvalidArgument):
        q.parse_timestamp("nope", "startedAfter")


def test_limit_and_order() -> None:
    assert q.parse_limit(None) == 100
    assert q.parse_limit(1) == 1
    for bad in (0, 101, -3):
        with pytest.raises(InvalidArgument):
            q.parse_limit(bad)
    assert q.parse_order(None) == "desc"
    with pytest.raises(InvalidArgument):
        q.parse_order("sideways")


def test_token_roundtrip_and_garbage() -> None:
    cursor = Cursor(datetime(2026, 5, 1, 1, 2, 3, 456789, tzinfo=UTC), "abc123")
    token = q.encode_token(cursor)
    assert q.decode_token(token) == cursor
    assert "=" not in token and "/" not in token
    for bad in ("", "!!!", "bnVsbA", q.encode_token(cursor)[:-3]):
        with pytest.raises(InvalidArgument):
            q.decode_token(bad)


def test_token_keeps_offsets_normalised() -> None:
    local = datetime(2026, 5, 1, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    back = q.decode_token(q.encode_token(Cursor(local, "x"))).started_at
    assert back == local and back.tzinfo == UTC
