"""Sandboxes that tests create through the official SDK and that are always killed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sandbox_factory(test_name: str, sandbox_class: Any = None) -> Iterator[Callable[..., Any]]:
    """Yield ``make(**create_kwargs)``; every sandbox it made is killed on the way out.

    Each is tagged with the test's name in its metadata, so a leftover is traceable.
    ``sandbox_class``: ``e2b.Sandbox`` (the default) or a subclass such as
    ``e2b_code_interpreter.Sandbox``, whose ``create()`` picks its own default template.
    """
    from e2b import Sandbox

    cls = sandbox_class or Sandbox
    created: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        kwargs.setdefault("metadata", {"test": test_name[:60]})
        sbx = cls.create(**kwargs)
        created.append(sbx)
        return sbx

    try:
        yield make
    finally:
        for sbx in created:
            with contextlib.suppress(Exception):
                sbx.kill()
