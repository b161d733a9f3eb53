"""envd's path rules (e2b-compat §4.3)."""

from __future__ import annotations

import pytest

from shoal.envd.paths import resolve
from shoal.errors import InvalidArgument

HOME = "/home/user"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a.txt", "/home/user/a.txt"),
        ("dir/b.txt", "/home/user/dir/b.txt"),
        ("~", "/home/user"),
        ("~/x/../y", "/home/user/y"),
        ("/etc/passwd", "/etc/passwd"),
        ("/tmp//a/./b/", "/tmp/a/b"),
        ("//etc", "/etc"),
        ("../../..", "/"),
        ("~user", "/home/user/~user"),
    ],
)
def test_resolution(given: str, expected: str) -> None:
    assert resolve(given, home=HOME, workdir=None) == expected


def test_empty_is_the_workdir_else_home() -> None:
    assert resolve("", home=HOME, workdir="/code") == "/code"
    assert resolve("", home=HOME, workdir=None) == HOME


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 5000])
def test_bad_paths_are_invalid_arguments(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        resolve(bad, home=HOME, workdir=None)
