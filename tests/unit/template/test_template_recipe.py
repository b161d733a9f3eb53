"""A recipe's digest names its build: stable for equal recipes, new for any real change."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from shoal.template.recipe import BASE, RECIPES


def test_digest_is_stable_and_hex() -> None:
    d = BASE.digest(1, 100000)
    assert d == RECIPES["base"].digest(1, 100000)
    assert len(d) == 64 and int(d, 16) >= 0


def test_digest_is_the_same_in_another_process_with_another_hash_seed() -> None:
    # set/dict ordering must not leak into the digest, or every run would rebuild.
    code = "from shoal.template.recipe import BASE; print(BASE.digest(1, 100000))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == BASE.digest(1, 100000)


def test_package_order_and_duplicates_do_not_change_the_digest() -> None:
    shuffled = dataclasses.replace(BASE, packages=(*reversed(BASE.packages), "git"))
    assert shuffled.digest(1, 100000) == BASE.digest(1, 100000)


def test_every_relevant_change_changes_the_digest() -> None:
    base = BASE.digest(1, 100000)
    variants = [
        dataclasses.replace(BASE, packages=(*BASE.packages, "iproute2")).digest(1, 100000),
        dataclasses.replace(BASE, suite="trixie").digest(1, 100000),
        dataclasses.replace(BASE, uid=1001).digest(1, 100000),
        dataclasses.replace(BASE, env=(("PATH", "/bin"),)).digest(1, 100000),
        dataclasses.replace(BASE, path_excludes=BASE.path_excludes[1:]).digest(1, 100000),
        BASE.digest(2, 100000),
        BASE.digest(1, 200000),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_base_recipe_has_what_e2b_users_expect() -> None:
    must = {"bash", "coreutils", "python3", "python3-pip", "nodejs", "npm", "git", "curl"}
    assert must | {"sudo", "ncurses-bin", "procps", "ca-certificates"} <= set(BASE.packages)
    assert (BASE.user, BASE.uid, BASE.gid) == ("user", 1000, 1000)
    assert BASE.home == BASE.workdir == "/home/user"
    assert BASE.environment["PATH"].split(":")[-1] == "/bin"
