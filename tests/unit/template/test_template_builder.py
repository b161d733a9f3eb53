"""The builder's promises, with a fake bootstrap in place of mmdebstrap.

Built once and then reused; rebuilt when the recipe changes; ``current`` always points at a
complete build; a failed or cancelled build leaves nothing behind; old builds are pruned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from shoal.errors import RuntimeFailure
from shoal.template.builder import TemplateBuilder
from shoal.template.recipe import BASE, Recipe
from shoal.template.store import TemplateStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the builder chowns files: needs root"),
]

UID_BASE = 100000


class FakeBootstrap:
    """Lays down the few files of a Debian root the builder touches."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None
        self.block = False
        self.started = asyncio.Event()
        self.mirrors: list[str] = []

    async def __call__(self, recipe: Recipe, rootfs: Path, mirror: str, log: Path) -> None:
        self.calls += 1
        self.mirrors.append(mirror)
        _lay_down(rootfs, log, recipe)
        self.started.set()
        if self.block:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail


def _lay_down(rootfs: Path, log: Path, recipe: Recipe) -> None:
    log.write_text(f"bootstrapping {recipe.suite}\n")
    for d in ("etc/skel", "etc/sudoers.d", "usr/bin", "var/cache/apt", "var/log", "tmp"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (rootfs / "etc/group").write_text("root:x:0:\nshadow:x:42:\n")
    shadow = rootfs / "etc/shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n")
    os.chown(shadow, 0, 42)
    shadow.chmod(0o640)
    (rootfs / "etc/skel/.bashrc").write_text("# bashrc\n")
    (rootfs / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    (rootfs / "var/cache/apt/pkgcache.bin").write_bytes(b"cache")
    (rootfs / "var/log/dpkg.log").write_text("log\n")
    (rootfs / "tmp/leftover").write_text("x")
    sudo = rootfs / "usr/bin/sudo"
    sudo.write_bytes(b"\x7fELF")
    sudo.chmod(0o4755)


def _builder(tmp_path: Path, fake: FakeBootstrap) -> TemplateBuilder:
    return TemplateBuilder(tmp_path, UID_BASE, mirror="http://mirror.test/debian", bootstrap=fake)


def _entries(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir()} - {".lock"}


async def test_first_build_produces_a_dressed_shifted_rootfs(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    result = await _builder(tmp_path, fake).build(BASE)

    assert not result.cached and fake.calls == 1
    assert fake.mirrors == ["http://mirror.test/debian"]
    parent = tmp_path / "base"
    assert os.readlink(parent / "current") == result.build_hash
    assert _entries(parent) == {"current", result.build_hash}
    rootfs = result.path / "rootfs"
    etc = rootfs / "etc"
    assert "user:x:1000:1000::/home/user:/bin/bash" in (etc / "passwd").read_text().splitlines()
    assert "user:x:1000:" in (etc / "group").read_text().splitlines()
    assert (etc / "shadow").read_text().splitlines()[-1].startswith("user:!:")
    assert (os.stat(etc / "shadow").st_gid, stat.S_IMODE(os.stat(etc / "shadow").st_mode)) == (
        UID_BASE + 42,
        0o640,
    )
    sudoers = etc / "sudoers.d/user"
    assert sudoers.read_text() == "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert stat.S_IMODE(os.stat(sudoers).st_mode) == 0o440
    assert os.stat(sudoers).st_uid == UID_BASE
    assert (etc / "resolv.conf").read_text() == ""
    assert (etc / "machine-id").read_text() == ""
    assert (etc / "hostname").read_text() == "sandbox\n"
    assert "127.0.0.1\tlocalhost" in (etc / "hosts").read_text()
    home = rootfs / "home/user"
    assert (os.stat(home).st_uid, os.stat(home).st_gid) == (UID_BASE + 1000, UID_BASE + 1000)
    assert os.stat(home / ".bashrc").st_uid == UID_BASE + 1000
    sudo = os.stat(rootfs / "usr/bin/sudo")
    assert sudo.st_uid == UID_BASE and sudo.st_mode & stat.S_ISUID
    assert not (rootfs / "var/cache/apt/pkgcache.bin").exists()
    assert not (rootfs / "var/log/dpkg.log").exists()
    assert not (rootfs / "tmp/leftover").exists()
    assert (result.path / "build.log").read_text() == "bootstrapping bookworm\n"

    meta = json.loads((result.path / "template.json").read_text())
    assert meta["build_hash"] == result.build_hash
    assert meta["default_user"] == "user" and meta["default_workdir"] == "/home/user"
    assert meta["uid_base"] == UID_BASE and meta["env"]["PATH"].endswith("/bin")
    assert meta["size_bytes"] == result.size_bytes > 0

    template = TemplateStore(tmp_path).resolve("base")
    assert template.rootfs == rootfs.resolve()


async def test_second_build_is_a_cached_no_op(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    first = await _builder(tmp_path, fake).build(BASE)
    again = await _builder(tmp_path, fake).build(BASE)
    assert again.cached and fake.calls == 1
    assert (again.build_hash, again.path, again.size_bytes) == (
        first.build_hash,
        first.path,
        first.size_bytes,
    )
    assert again.seconds < 1.0


async def test_failed_build_leaves_no_half_template_and_keeps_current(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    good = await _builder(tmp_path, fake).build(BASE)
    fake.fail = RuntimeFailure("mmdebstrap exited with 1")
    changed = dataclasses.replace(BASE, packages=(*BASE.packages, "iproute2"))
    with pytest.raises(RuntimeFailure):
        await _builder(tmp_path, fake).build(changed)
    parent = tmp_path / "base"
    assert _entries(parent) == {"current", good.build_hash}
    assert os.readlink(parent / "current") == good.build_hash


async def test_cancelled_build_leaves_nothing_behind(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    fake.block = True
    task = asyncio.create_task(_builder(tmp_path, fake).build(BASE))
    await fake.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _entries(tmp_path / "base") == set()


async def test_recipe_change_rebuilds_switches_and_prunes_all_but_previous(
    tmp_path: Path,
) -> None:
    fake = FakeBootstrap()
    builds = []
    for extra in ("a", "b", "c"):
        recipe = dataclasses.replace(BASE, packages=(*BASE.packages, extra))
        builds.append(await _builder(tmp_path, fake).build(recipe))
    assert fake.calls == 3
    assert len({b.build_hash for b in builds}) == 3
    parent = tmp_path / "base"
    assert os.readlink(parent / "current") == builds[2].build_hash
    assert _entries(parent) == {"current", builds[1].build_hash, builds[2].build_hash}


async def test_going_back_to_a_kept_build_switches_without_building(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    old = await _builder(tmp_path, fake).build(BASE)
    changed = dataclasses.replace(BASE, hostname="box")
    await _builder(tmp_path, fake).build(changed)
    back = await _builder(tmp_path, fake).build(BASE)
    assert back.cached and fake.calls == 2
    assert os.readlink(tmp_path / "base/current") == old.build_hash


async def test_force_rebuilds_the_same_recipe_and_keeps_the_old_tree(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    first = await _builder(tmp_path, fake).build(BASE)
    forced = await _builder(tmp_path, fake).build(BASE, force=True)
    assert not forced.cached and fake.calls == 2
    assert forced.path == first.path
    parent = tmp_path / "base"
    assert os.readlink(parent / "current") == first.build_hash
    names = _entries(parent) - {"current", first.build_hash}
    assert len(names) == 1 and names.pop().startswith(first.build_hash + "-")


async def test_stale_work_dirs_of_a_dead_builder_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "base" / ".build-deadbeef-1"
    (stale / "rootfs").mkdir(parents=True)
    result = await _builder(tmp_path, FakeBootstrap()).build(BASE)
    assert _entries(tmp_path / "base") == {"current", result.build_hash}
