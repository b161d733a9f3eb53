"""Recipes: what a template's root filesystem is made of, as plain data.

A recipe says which Debian suite and packages to install and how to dress the result
(user, hostname, environment). Its :meth:`Recipe.digest` names a build on disk, so any
change to a recipe, to the builder or to the id mapping yields a new build directory and
therefore a rebuild; a reordering of packages does not.

    >>> RECIPES["base"].digest(builder_version=1, uid_base=100000) == BASE.digest(1, 100000)
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Provision:
    """A bash script run inside the bootstrapped tree (chroot), before the owner shift.

    Runs after the user exists, with a private /proc and, when ``network`` is set, the
    host's resolv.conf and CA bundle lent to the tree for the script's duration only (pip
    and npm reach their default registries through them). Any failing command fails the
    build (``set -euo pipefail``).
    """

    name: str
    script: str
    user: str = "root"
    """``root`` or the recipe's ``user`` (run as its uid/gid with ``HOME`` = its home)."""
    network: bool = False

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "script": self.script,
            "user": self.user,
            "network": self.network,
        }


@dataclass(frozen=True)
class PackageCopy:
    """Copy the host's Python package ``package`` (e.g. ``shoal.interpreter``) into the tree
    under ``dest``, as ``dest/shoal/interpreter``, so ``PYTHONPATH=dest`` imports it.

    The copied files' content is part of the build hash. A package missing on the host is
    skipped (and recorded in ``template.json``) unless ``required``.
    """

    package: str
    dest: str
    required: bool = False

    def canonical(self) -> dict[str, Any]:
        return {"package": self.package, "dest": self.dest, "required": self.required}


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
    copies: tuple[PackageCopy, ...] = ()
    """Host packages copied in before provisioning (in order)."""
    provision: tuple[Provision, ...] = ()
    """Run in order, after the packages are installed and the user exists."""
    start_cmd: str = ""
    """Shell command the sandbox starts in the background (as ``user``, in ``workdir``)."""
    ready_port: int | None = None
    """The started command is up when this port accepts connections."""
    cpu_count: int | None = None
    """Default vCPUs of a sandbox of this template (None: the server's default)."""
    memory_mb: int | None = None
    kernels: tuple[str, ...] = ()
    """Jupyter kernelspec names the build must have registered system-wide."""

    def canonical(self) -> dict[str, Any]:
        """The recipe as JSON-able data with order-insensitive lists sorted."""
        doc: dict[str, Any] = {
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
        # Keys only for what a recipe uses, so recipes without them (base) keep their digest.
        extra: dict[str, Any] = {
            "copies": [c.canonical() for c in self.copies],
            "provision": [p.canonical() for p in self.provision],
            "start_cmd": self.start_cmd,
            "ready_port": self.ready_port,
            "cpu_count": self.cpu_count,
            "memory_mb": self.memory_mb,
            "kernels": sorted(set(self.kernels)),
        }
        doc.update({k: v for k, v in extra.items() if v not in ("", None, [])})
        return doc

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

# E2B's code-interpreter template (e2b-dev/code-interpreter, template/): Jupyter kernels
# for Python, JavaScript/TypeScript, R and bash behind the in-sandbox server on port 49999,
# 2 vCPU / 2048 MB. Here everything comes from Debian, PyPI and npm only:
# - Python stack in a venv owned by ``user``, so ``pip install`` in the sandbox reaches the
#   kernel's interpreter (a root-owned venv has no user site to fall back to);
# - tslab (JS + TS kernels): its zeromq@6 ships prebuilt N-API binaries inside the npm
#   tarball, so nothing is downloaded or compiled at install time;
# - R's IRkernel from Debian; bash_kernel from PyPI;
# - no Java: IJava is released only on GitHub (not on Debian, PyPI or npm).
VENV = "/opt/e2b/venv"
INTERPRETER_PATH = "/opt/shoal/interpreter"
KERNELS_DIR = "/usr/local/share/jupyter/kernels"

_PY_PACKAGES = (
    "ipykernel",
    "jupyter_client",
    "numpy",
    "pandas",
    "matplotlib",
    "pillow",
    "scipy",
    "e2b-charts",
    "orjson",
    "bash_kernel",
    # The interpreter server's own needs (httptools: uvicorn's fast HTTP parser).
    "starlette",
    "uvicorn",
    "httptools",
    "httpx",
)

_PYTHON_STACK = f"""\
python3 -m venv {VENV}
{VENV}/bin/pip install --no-cache-dir --no-input --progress-bar off {" ".join(_PY_PACKAGES)}
{VENV}/bin/pip freeze --all > /opt/e2b/requirements.lock
"""

_KERNELS = f"""\
export PATH={VENV}/bin:$PATH
python -m ipykernel install --prefix=/usr/local --name=python3 --display-name="Python 3"
# The wheel's own copy (argv "python") would shadow the system-wide one.
rm -rf {VENV}/share/jupyter/kernels/python3
python -m bash_kernel.install --prefix=/usr/local
npm install --global --no-audit --no-fund --cache=/tmp/npm-cache tslab
tslab install --python={VENV}/bin/python --prefix=/usr/local
rm -rf {KERNELS_DIR}/javascript {KERNELS_DIR}/typescript
mv {KERNELS_DIR}/jslab {KERNELS_DIR}/javascript
mv {KERNELS_DIR}/tslab {KERNELS_DIR}/typescript
# tslab's specs run "tslab" from PATH: pin it, kernels must not depend on the caller's PATH.
# Its TypeScript compiler watches its own @types trees; with inotify those are ~170 watches
# on overlayfs files, which CRIU cannot checkpoint (no file handles without nfs_export), so
# a paused sandbox would fail. Polling (stat on a slowing schedule) watches the same files.
for spec in {KERNELS_DIR}/javascript/kernel.json {KERNELS_DIR}/typescript/kernel.json; do
  python - "$spec" "$(command -v tslab)" <<'END'
import json, sys
path, binary = sys.argv[1:]
with open(path) as f:
    spec = json.load(f)
spec["argv"][0] = binary
spec["env"] = {{
    "TSC_WATCHFILE": "DynamicPriorityPolling",
    "TSC_WATCHDIRECTORY": "RecursiveDirectoryUsingFsWatchFile",
}}
with open(path, "w") as f:
    json.dump(spec, f, indent=1)
END
done
R --quiet --no-save -e 'IRkernel::installspec(user = FALSE, name = "ir", displayname = "R")'
# Fail the build, not the first sandbox, when a kernel cannot start its native parts.
node -e 'require(require.resolve("zeromq", {{paths: ["/usr/local/lib/node_modules/tslab"]}}))'
jupyter kernelspec list
"""

# Commands run in a login shell (bash -l), whose /etc/profile resets PATH: put the venv first
# again, as the template's env does for processes started without a shell.
_LOGIN_PATH = f"""\
cat > /etc/profile.d/00-e2b-venv.sh <<'END'
case ":$PATH:" in
  *:{VENV}/bin:*) ;;
  *) PATH="{VENV}/bin:$PATH" ;;
esac
export PATH
END
chmod 0644 /etc/profile.d/00-e2b-venv.sh
"""

# Owned by user after the root steps; the font cache is built as user, where it is read.
_FONT_CACHE = f"""\
cd ~
{VENV}/bin/python -c '
import matplotlib
matplotlib.use("Agg")
import matplotlib.font_manager as fm
import matplotlib.pyplot as plt
fm.findfont("DejaVu Sans")
print(matplotlib.get_cachedir())
'
"""

CODE_INTERPRETER = dataclasses.replace(
    BASE,
    name="code-interpreter-v1",
    packages=(*BASE.packages, "r-base-core", "r-cran-irkernel"),
    env=(("PATH", f"{VENV}/bin:{DEFAULT_PATH}"), ("LANG", "C.UTF-8")),
    copies=(PackageCopy("shoal.interpreter", INTERPRETER_PATH),),
    provision=(
        Provision("python stack", _PYTHON_STACK, network=True),
        Provision("kernels", _KERNELS, network=True),
        Provision("login PATH", _LOGIN_PATH),
        Provision("venv owner", f"chown -R {BASE.uid}:{BASE.gid} {VENV}"),
        Provision("font cache", _FONT_CACHE, user="user"),
    ),
    start_cmd=f"PYTHONPATH={INTERPRETER_PATH} {VENV}/bin/python -m shoal.interpreter",
    ready_port=49999,
    cpu_count=2,
    memory_mb=2048,
    kernels=("python3", "bash", "javascript", "typescript", "ir"),
)

RECIPES: dict[str, Recipe] = {BASE.name: BASE, CODE_INTERPRETER.name: CODE_INTERPRETER}
