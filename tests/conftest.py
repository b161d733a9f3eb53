"""Suite-wide rules.

Tests that need root, cgroups and the OCI runtime are marked ``root``; tests that drive
the official SDKs against a live server are marked ``sdk``. Where root is missing they
skip with a reason. As root (CI), a skipped ``root`` or ``sdk`` test means the real thing
was not tested: the session fails and says which tests skipped and why.
"""

from __future__ import annotations

import os

import pytest

STRICT_MARKERS = ("root", "sdk")
_strict_skips: list[tuple[str, str]] = []


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, cgroups, crun)")
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    # An xfail is a known bug tracked by a test, not a test that did not run.
    xfailed = hasattr(report, "wasxfail")
    if report.skipped and not xfailed and any(item.get_closest_marker(m) for m in STRICT_MARKERS):
        reason = (
            str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        )
        _strict_skips.append((item.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if is_root() and _strict_skips:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if is_root() and _strict_skips:
        tr = terminalreporter
        tr.section("isolation / SDK tests skipped as root: FAILURE", red=True)
        for nodeid, reason in _strict_skips:
            tr.line(f"{nodeid}: {reason}")
        tr.line(f"{len(_strict_skips)} isolation or SDK test(s) skipped where they must run.")
