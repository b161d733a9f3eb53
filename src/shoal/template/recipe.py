"""Recipes: what a template's root filesystem is made of, as plain data.

A recipe says which Debian suite and packages to install and how to dress the result
(user, hostname, environment). Its :meth:`Recipe.digest` names a build on disk, so any
change to a recipe, to the builder or to the id mapping yields a new build directory and
therefore a rebuild; a reordering of packages does not.

    >>> RECIPES["base"].digest(builder_version=1, uid_base=100000) == BASE.digest(1, 100000)
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    """Debian suite to bootstrap, whatever the host runs (a Debian 13 host still builds this)."""
    packages: tuple[str, ...]
    """Installed on top of mmdebstrap's ``minbase`` variant, without Recommends."""
    user: str = "user"
    uid: int = 1000
    gid: int = 1000
    home: str = "/home/user"
    workdir: str = "/home/user"
    shell: str = "/bin/bash"
    hostname: str = "sandbox"
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH), ("LANG", "C.UTF-8"))
    path_excludes: tuple[str, ...] = ()
    """dpkg ``path-exclude`` globs: files never unpacked (docs, man pages, translations)."""
    path_includes: tuple[str, ...] = ()
    """dpkg ``path-include`` globs that win over the excludes (licence files)."""
    sudo: bool = True
    """Give ``user`` passwordless sudo."""

    def canonical(self) -> dict[str, Any]:
        """The recipe as JSON-able data with order-insensitive lists sorted."""
        return {
            "name": self.name,
            "suite": self.suite,
            "packages": sorted(set(self.packages)),
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "home": self.home,
            "workdir": self.workdir,
            "shell": self.shell,
            "hostname": self.hostname,
            "env": dict(sorted(self.env)),
            # dpkg applies path filters in order, so their order is kept.
            "path_excludes": list(self.path_excludes),
            "path_includes": list(self.path_includes),
            "sudo": self.sudo,
        }

    def digest(self, builder_version: int, uid_base: int) -> str:
        """sha256 hex over the canonical recipe, the builder version and the id shift."""
        doc = {"recipe": self.canonical(), "builder": builder_version, "uid_base": uid_base}
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.env)


# What E2B users and its test suites expect of ``base`` (see shared/e2b-compat.md §4.6):
# bash, coreutils, python3 with pip, node with npm, git, curl, passwordless sudo, tput.
# Debian's npm drags in ~450 node-* packages (most of the rootfs's size); there is no
# lighter npm in Debian's archive.
BASE = Recipe(
    name="base",
    suite="bookworm",
    packages=(
        "bash",
        "ca-certificates",
        "coreutils",
        "curl",
        "git",
        "less",
        "ncurses-bin",
        "nodejs",
        "npm",
        "procps",
        "python3",
        "python3-pip",
        "python3-venv",
        "sudo",
    ),
    path_excludes=(
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
        "/usr/share/lintian/*",
        "/usr/share/linda/*",
    ),
    path_includes=(
        "/usr/share/doc/*/copyright",
        "/usr/share/locale/locale.alias",
    ),
)

RECIPES: dict[str, Recipe] = {BASE.name: BASE}
