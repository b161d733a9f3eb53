"""Sandboxes that tests create through the official SDK and that are always killed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sandbox_factory(test_name: str) -> Iterator[Callable[..., Any]]:
    """Yield ``make(**create_kwargs)``; every sandbox it made is killed on the way out.

    Each is tagged with the test's name in its metadata, so a leftover is traceable.
    """
    from e2b import Sandbox

    created: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        kwargs.setdefault("metadata", {"test": test_name[:60]})
        sbx = Sandbox.create(**kwargs)
        created.append(sbx)
        return sbx

    try:
        yield make
    finally:
        for sbx in created:
            with contextlib.suppress(Exception):
                sbx.kill()
