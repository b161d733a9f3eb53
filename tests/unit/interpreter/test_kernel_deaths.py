"""How the interpreter tells a caller why a kernel ended: the sandbox's memory cgroup files
(v1 inside ``memory/``, v2 at the root) read from a fake cgroup directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.interpreter.kernels import describe_exit, memory_limit_mb, oom_kills

V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"
V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill {n}\noom_group_kill 0\n"


def v1(root: Path, kills: int, limit: int) -> Path:
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=kills))
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{limit}\n")
    return root


def v2(root: Path, kills: int, limit: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.events").write_text(V2_EVENTS.format(n=kills))
    (root / "memory.max").write_text(f"{limit}\n")
    return root


def test_v1_counters_and_limit(tmp_path: Path) -> None:
    root = v1(tmp_path, kills=3, limit=2048 * 2**20)
    assert oom_kills(root) == 3
    assert memory_limit_mb(root) == 2048


def test_v2_counters_and_limit(tmp_path: Path) -> None:
    root = v2(tmp_path, kills=1, limit=str(512 * 2**20))
    assert oom_kills(root) == 1
    assert memory_limit_mb(root) == 512


@pytest.mark.parametrize("limit", ["max", str(2**63 - 4096)])
def test_no_limit(tmp_path: Path, limit: str) -> None:
    assert memory_limit_mb(v2(tmp_path, kills=0, limit=limit)) is None


def test_nothing_readable(tmp_path: Path) -> None:
    assert oom_kills(tmp_path) is None
    assert memory_limit_mb(tmp_path) is None


def test_sigkill_with_a_new_oom_kill_names_the_memory_limit(tmp_path: Path) -> None:
    root = v1(tmp_path, kills=1, limit=2048 * 2**20)
    assert describe_exit(-9, 0, root) == (
        "exit code -9: killed by the out-of-memory killer, the sandbox's memory reached "
        "its limit of 2048 MiB"
    )


@pytest.mark.parametrize(("code", "before"), [(-9, 1), (-9, None), (1, 0), (None, 0)])
def test_other_deaths_give_the_exit_code_only(tmp_path: Path, code: int | None,
                                             before: int | None) -> None:
    root = v1(tmp_path, kills=1, limit=2048 * 2**20)  # a SIGKILL without a new OOM kill: kill -9
    assert describe_exit(code, before, root) == f"exit code {code}"
