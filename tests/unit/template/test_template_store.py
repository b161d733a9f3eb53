"""Resolving template ids to the current build, cheaply and without stale answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal.errors import NotFound
from shoal.template.store import TemplateStore


def _fake_build(templates: Path, name: str, build_hash: str, *, current: bool = True) -> Path:
    build = templates / name / build_hash
    (build / "rootfs/home/user").mkdir(parents=True)
    meta = {
        "name": name,
        "build_hash": build_hash,
        "built_at": "2025-01-01T00:00:00+00:00",
        "size_bytes": 123,
        "default_user": "user",
        "default_workdir": "/home/user",
        "uid_base": 100000,
        "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    }
    (build / "template.json").write_text(json.dumps(meta))
    if current:
        link = templates / name / "current"
        tmp = templates / name / ".current.tmp"
        os.symlink(build_hash, tmp)
        os.replace(tmp, link)
    return build


def test_resolve_base_gives_the_current_build(tmp_path: Path) -> None:
    build = _fake_build(tmp_path, "base", "a" * 64)
    t = TemplateStore(tmp_path).resolve("base")
    assert t.template_id == "base"
    assert t.rootfs == build.resolve() / "rootfs"
    assert (t.default_user, t.default_workdir) == ("user", "/home/user")
    assert t.env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert (t.build_hash, t.uid_base, t.size_bytes) == ("a" * 64, 100000, 123)


def test_unknown_template_id_is_not_found(tmp_path: Path) -> None:
    _fake_build(tmp_path, "base", "a" * 64)
    with pytest.raises(NotFound, match="template 'nope' not found"):
        TemplateStore(tmp_path).resolve("nope")


def test_known_but_unbuilt_template_is_not_found_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="scripts/setup"):
        TemplateStore(tmp_path).resolve("base")


def test_a_new_build_is_seen_after_current_switches(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    _fake_build(tmp_path, "base", "a" * 64)
    first = store.resolve("base")
    assert store.resolve("base") is first  # cached while current is unchanged
    _fake_build(tmp_path, "base", "b" * 64)
    second = store.resolve("base")
    assert second.build_hash == "b" * 64
    # The old rootfs path stays what it was: running sandboxes keep their lower layer.
    assert first.rootfs.name == "rootfs" and first.rootfs.parent.name == "a" * 64


def test_broken_build_metadata_is_not_found(tmp_path: Path) -> None:
    build = _fake_build(tmp_path, "base", "c" * 64)
    (build / "template.json").write_text("{}")
    with pytest.raises(NotFound, match="no usable build"):
        TemplateStore(tmp_path).resolve("base")


def test_list_shows_built_templates_only(tmp_path: Path) -> None:
    assert TemplateStore(tmp_path).list() == []
    _fake_build(tmp_path, "base", "d" * 64)
    assert [t.template_id for t in TemplateStore(tmp_path).list()] == ["base"]
