"""Recipes with provision steps and package copies (``code-interpreter-v1``), with fakes for
mmdebstrap and for the chroot runner.

Steps run in order after the user exists, see the host's resolv.conf and CA bundle only while
they need the network, leave no caches; the metadata sandbox start-up needs lands in
``template.json`` and the store; copied packages are part of the build hash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from shoal.errors import RuntimeFailure
from shoal.template.builder import HOST_CA_BUNDLE, TemplateBuilder
from shoal.template.recipe import (
    BASE,
    CODE_INTERPRETER,
    RECIPES,
    PackageCopy,
    Provision,
    Recipe,
)
from shoal.template.store import TemplateStore

UID_BASE = 100000

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the builder chowns files: needs root")


async def fake_bootstrap(recipe: Recipe, rootfs: Path, mirror: str, log: Path) -> None:
    _lay_down(rootfs, log)


def _lay_down(rootfs: Path, log: Path) -> None:
    log.write_text("bootstrapped\n")
    for d in ("etc/skel", "usr/bin", "var/log", "tmp", "root"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    (rootfs / "etc/resolv.conf").write_text("")


class FakeProvisioner:
    """Records what each step saw in the tree and plays the step's effects."""

    def __init__(self, *, kernels: tuple[str, ...] = (), fail_at: str = "") -> None:
        self.seen: list[dict[str, object]] = []
        self.kernels = kernels
        self.fail_at = fail_at

    async def __call__(self, recipe: Recipe, step: Provision, rootfs: Path, log: Path) -> None:
        ca = rootfs / "tmp/.shoal-build-ca.crt"
        self.seen.append(
            {
                "name": step.name,
                "user_exists": (rootfs / "home/user").is_dir(),
                "resolv": (rootfs / "etc/resolv.conf").read_text(),
                "ca": ca.read_text() if ca.exists() else None,
            }
        )
        # What pip and npm leave behind.
        (rootfs / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp/npm-cache").mkdir(parents=True, exist_ok=True)
        for name in self.kernels:
            spec = rootfs / "usr/local/share/jupyter/kernels" / name / "kernel.json"
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({"argv": [name], "language": name}))
        if step.name == self.fail_at:
            raise RuntimeFailure(f"step {step.name} failed")


def _read(path: Path) -> str:
    return path.read_text()


def _recipe(**changes: object) -> Recipe:
    steps = (
        Provision("online", "pip install x", network=True),
        Provision("offline", "true"),
        Provision("as user", "true", user="user"),
    )
    fields: dict[str, object] = {
        "name": "ci",
        "provision": steps,
        "start_cmd": "server --port 49999",
        "ready_port": 49999,
        "cpu_count": 2,
        "memory_mb": 2048,
        "kernels": ("python3", "bash"),
    }
    fields.update(changes)
    return dataclasses.replace(BASE, **fields)  # type: ignore[arg-type]


def test_base_keeps_its_digest_when_recipes_grow_new_fields() -> None:
    # Provision/start metadata only enter the canonical form when used: base never rebuilds.
    canonical = BASE.canonical()
    for key in ("provision", "copies", "start_cmd", "ready_port", "kernels", "cpu_count"):
        assert key not in canonical
    assert _recipe().digest(1, UID_BASE) != BASE.digest(1, UID_BASE)


def test_every_provision_change_changes_the_digest() -> None:
    r = _recipe()
    variants = [
        dataclasses.replace(r, provision=r.provision[:-1]),
        dataclasses.replace(r, provision=tuple(reversed(r.provision))),
        dataclasses.replace(r, provision=(Provision("online", "pip install y", network=True),)),
        dataclasses.replace(r, start_cmd="other"),
        dataclasses.replace(r, ready_port=50000),
        dataclasses.replace(r, memory_mb=1024),
        dataclasses.replace(r, kernels=("python3",)),
        dataclasses.replace(r, copies=(PackageCopy("json", "/opt/x"),)),
    ]
    digests = {v.digest(1, UID_BASE) for v in variants}
    assert r.digest(1, UID_BASE) not in digests and len(digests) == len(variants)


def test_code_interpreter_recipe_is_what_the_sdk_expects() -> None:
    assert RECIPES["code-interpreter-v1"] is CODE_INTERPRETER
    assert set(BASE.packages) < set(CODE_INTERPRETER.packages)
    assert "r-cran-irkernel" in CODE_INTERPRETER.packages
    assert CODE_INTERPRETER.ready_port == 49999
    assert (CODE_INTERPRETER.user, CODE_INTERPRETER.workdir) == ("user", "/home/user")
    assert {"python3", "bash", "javascript", "ir"} <= set(CODE_INTERPRETER.kernels)
    scripts = "\n".join(p.script for p in CODE_INTERPRETER.provision)
    for pkg in ("ipykernel", "numpy", "pandas", "matplotlib", "e2b-charts", "bash_kernel"):
        assert pkg in scripts
    # pip and npm use their default registries: no index or registry address in the recipe.
    assert "://" not in scripts and "index-url" not in scripts and "registry" not in scripts
    assert "python -m shoal.interpreter" in CODE_INTERPRETER.start_cmd


@root_only
async def test_steps_run_in_order_with_network_lent_only_while_needed(tmp_path: Path) -> None:
    fake = FakeProvisioner(kernels=("python3", "bash"))
    builder = TemplateBuilder(
        tmp_path,
        UID_BASE,
        mirror="http://m.test/debian",
        bootstrap=fake_bootstrap,
        provisioner=fake,
    )
    result = await builder.build(_recipe())

    assert [s["name"] for s in fake.seen] == ["online", "offline", "as user"]
    assert all(s["user_exists"] for s in fake.seen)
    host_resolv = _read(Path("/etc/resolv.conf"))
    online, offline, _ = fake.seen
    assert online["resolv"] == host_resolv and online["ca"] == (
        HOST_CA_BUNDLE.read_text() if HOST_CA_BUNDLE.is_file() else ""
    )
    assert offline["resolv"] == "" and offline["ca"] is None
    rootfs = result.path / "rootfs"
    assert (rootfs / "etc/resolv.conf").read_text() == ""
    assert not (rootfs / "tmp/.shoal-build-ca.crt").exists()
    assert not (rootfs / "root/.cache").exists() and not (rootfs / "tmp/npm-cache").exists()

    meta = json.loads((result.path / "template.json").read_text())
    assert (meta["start_cmd"], meta["ready_port"]) == ("server --port 49999", 49999)
    assert (meta["cpu_count"], meta["memory_mb"]) == (2, 2048)
    assert meta["kernels"] == ["bash", "python3"]

    t = TemplateStore(tmp_path, aliases={"ci": "ci"}).resolve("ci")
    assert (t.start_cmd, t.ready_port, t.cpu_count, t.memory_mb) == (
        "server --port 49999",
        49999,
        2,
        2048,
    )
    assert t.kernels == ("bash", "python3")
    assert (t.default_user, t.default_workdir) == ("user", "/home/user")


@root_only
async def test_a_failing_step_leaves_no_build(tmp_path: Path) -> None:
    builder = TemplateBuilder(
        tmp_path,
        UID_BASE,
        mirror="http://m.test/debian",
        bootstrap=fake_bootstrap,
        provisioner=FakeProvisioner(kernels=("python3", "bash"), fail_at="offline"),
    )
    with pytest.raises(RuntimeFailure, match="offline"):
        await builder.build(_recipe())
    assert {p.name for p in (tmp_path / "ci").iterdir()} == {".lock"}


@root_only
async def test_a_kernel_missing_after_provisioning_fails_the_build(tmp_path: Path) -> None:
    builder = TemplateBuilder(
        tmp_path,
        UID_BASE,
        mirror="http://m.test/debian",
        bootstrap=fake_bootstrap,
        provisioner=FakeProvisioner(kernels=("python3",)),
    )
    with pytest.raises(RuntimeFailure, match="bash"):
        await builder.build(_recipe())
    assert not (tmp_path / "ci/current").exists()


def _host_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "src/fakepkg_ci/inner"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "__main__.py").write_text("print('hi')\n")
    (pkg / "__pycache__/x.cpython-311.pyc").write_bytes(b"junk")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("fakepkg_ci", "fakepkg_ci.inner"):
        sys.modules.pop(name, None)
    return pkg


@root_only
async def test_copied_package_lands_importable_and_its_content_is_in_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _host_package(tmp_path, monkeypatch)
    templates = tmp_path / "templates"
    recipe = _recipe(
        provision=(), kernels=(), copies=(PackageCopy("fakepkg_ci.inner", "/opt/pkg"),)
    )
    builder = TemplateBuilder(
        templates,
        UID_BASE,
        mirror="http://m.test/debian",
        bootstrap=fake_bootstrap,
        provisioner=FakeProvisioner(),
    )
    first = await builder.build(recipe)
    copied = first.path / "rootfs/opt/pkg/fakepkg_ci/inner"
    assert sorted(p.name for p in copied.iterdir()) == ["__init__.py", "__main__.py"]
    assert (copied / "__init__.py").read_text() == "VALUE = 1\n"
    assert os.stat(copied / "__main__.py").st_uid == UID_BASE
    assert json.loads((first.path / "template.json").read_text())["copied_packages"] == {
        "fakepkg_ci.inner": True
    }
    assert (await builder.build(recipe)).cached

    (pkg / "__init__.py").write_text("VALUE = 2\n")
    second = await builder.build(recipe)
    assert not second.cached and second.build_hash != first.build_hash
    assert (second.path / "rootfs/opt/pkg/fakepkg_ci/inner/__init__.py").read_text() == (
        "VALUE = 2\n"
    )


@root_only
async def test_a_missing_optional_package_is_skipped_and_recorded(tmp_path: Path) -> None:
    recipe = _recipe(
        provision=(), kernels=(), copies=(PackageCopy("no_such_pkg_ci.server", "/opt/pkg"),)
    )
    builder = TemplateBuilder(
        tmp_path,
        UID_BASE,
        mirror="http://m.test/debian",
        bootstrap=fake_bootstrap,
        provisioner=FakeProvisioner(),
    )
    result = await builder.build(recipe)
    meta = json.loads((result.path / "template.json").read_text())
    assert meta["copied_packages"] == {"no_such_pkg_ci.server": False}
    assert not (result.path / "rootfs/opt/pkg").exists()

    required = dataclasses.replace(
        recipe, copies=(PackageCopy("no_such_pkg_ci.server", "/opt/pkg", required=True),)
    )
    with pytest.raises(RuntimeFailure, match="no_such_pkg_ci"):
        await builder.build(required)


def test_store_resolves_the_code_interpreter_alias(tmp_path: Path) -> None:
    build = tmp_path / "code-interpreter-v1" / ("c" * 64)
    (build / "rootfs").mkdir(parents=True)
    meta = {
        "default_user": "user",
        "default_workdir": "/home/user",
        "start_cmd": "run",
        "ready_port": 49999,
        "cpu_count": 2,
        "memory_mb": 2048,
        "kernels": ["python3"],
    }
    (build / "template.json").write_text(json.dumps(meta))
    os.symlink("c" * 64, tmp_path / "code-interpreter-v1/current")
    t = TemplateStore(tmp_path).resolve("code-interpreter-v1")
    assert t.rootfs == build / "rootfs" and t.ready_port == 49999 and t.kernels == ("python3",)
    # base's template.json has none of these: defaults, not errors.
    base = tmp_path / "base" / ("b" * 64)
    (base / "rootfs").mkdir(parents=True)
    (base / "template.json").write_text(
        json.dumps({"default_user": "user", "default_workdir": "/home/user"})
    )
    os.symlink("b" * 64, tmp_path / "base/current")
    b = TemplateStore(tmp_path).resolve("base")
    assert (b.start_cmd, b.ready_port, b.cpu_count, b.memory_mb, b.kernels) == (
        "",
        None,
        None,
        None,
        (),
    )
