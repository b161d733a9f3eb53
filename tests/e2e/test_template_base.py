"""Template ``base`` as a sandbox sees it: built from Debian, owners shifted, usable as root
and as ``user`` inside a user namespace mapped like a sandbox's.

Builds the real template into ``Settings.from_env().templates_path`` (the machine's cache,
so usually a no-op) and then runs programs in it under a user namespace whose root is
``uid_base``, the same id mapping sandboxes get.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.config import Settings
from shoal.template.builder import TemplateBuilder
from shoal.template.recipe import BASE
from shoal.template.store import Template, TemplateStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="building templates and user namespaces need root"
    ),
]

REPO = Path(__file__).resolve().parents[2]

# Runs in a child: enter a new user (and UTS) namespace, wait for the parent to write the id
# maps, then chroot into the template and exec bash as the requested in-sandbox ids.
_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x04000000) != 0:  # CLONE_NEWUSER | CLONE_NEWUTS
    raise OSError(ctypes.get_errno(), "unshare")
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
root, uid, gid, hostname, home, cmd = sys.argv[1:7]
os.sethostname(hostname) if hasattr(os, "sethostname") else libc.sethostname(
    hostname.encode(), len(hostname))
os.chroot(root)
os.chdir("/")
os.setgroups([])
os.setresgid(int(gid), int(gid), int(gid))
os.setresuid(int(uid), int(uid), int(uid))
env = {"PATH": sys.argv[7], "TERM": "xterm", "HOME": home, "LANG": "C.UTF-8"}
os.execve("/bin/bash", ["bash", "-c", cmd], env)
"""


@pytest.fixture(scope="module")
def template() -> Template:
    settings = Settings.from_env()
    builder = TemplateBuilder(settings.templates_path, settings.uid_base)
    import asyncio

    result = asyncio.run(builder.build(BASE))
    print(
        f"base: {'cached' if result.cached else 'built'} in {result.seconds:.1f} s, "
        f"{result.size_bytes / 1e6:.0f} MB"
    )
    return TemplateStore(settings.templates_path).resolve("base")


def run_inside(
    t: Template, cmd: str, *, uid: int = 0, gid: int = 0
) -> subprocess.CompletedProcess[str]:
    home = "/root" if uid == 0 else t.default_workdir
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(t.rootfs),
            str(uid),
            str(gid),
            t.hostname,
            home,
            cmd,
            t.env["PATH"],
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    mapping = f"0 {t.uid_base} 65536\n"
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{proc.pid}/{name}").write_text(mapping)
    out, err = proc.communicate("go\n", timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(900)
def test_rootfs_on_disk_has_the_tools_user_and_shifted_owners(template: Template) -> None:
    rootfs = template.rootfs
    assert rootfs.parent.name == template.build_hash
    assert (template.default_user, template.default_workdir) == ("user", "/home/user")
    for tool in ("bash", "python3", "node", "npm", "git", "curl", "sudo", "tput", "pip3"):
        assert os.path.lexists(rootfs / "usr/bin" / tool), tool
    assert os.path.islink(rootfs / "bin")  # merged /usr: /bin/bash is /usr/bin/bash
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
    sudoers = rootfs / "etc/sudoers.d/user"
    assert sudoers.read_text() == "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert oct(os.stat(sudoers).st_mode & 0o7777) == "0o440"
    base = template.uid_base
    home = os.stat(rootfs / "home/user")
    assert (home.st_uid, home.st_gid) == (base + 1000, base + 1000)
    sudo = os.stat(rootfs / "usr/bin/sudo")
    assert (sudo.st_uid, sudo.st_gid) == (base, base)
    assert sudo.st_mode & 0o4000, "sudo lost its setuid bit"
    assert (rootfs / "etc/resolv.conf").read_text() == ""
    assert not list((rootfs / "var/lib/apt/lists").glob("*_Packages"))


def test_root_inside_sees_ordinary_owners_and_working_tools(template: Template) -> None:
    r = run_inside(
        template,
        "id -u; stat -c '%U:%G %a' /home/user /usr/bin/sudo; python3 -c 'print(6*7)'; "
        "node -e 'console.log(1+1)'; npm --version; git --version; curl --version | head -1; "
        "tput cols; pip3 --version; hostname",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1:3] == ["user:user 755", "root:root 4755"]
    assert lines[3:5] == ["42", "2"]
    assert lines[5].split(".")[0].isdigit()  # npm version
    assert lines[6].startswith("git version ") and lines[7].startswith("curl ")
    assert lines[8] == "80"  # tput with TERM=xterm and no tty
    assert lines[9].startswith("pip ") and lines[10] == "sandbox"


def test_user_has_its_home_and_passwordless_sudo(template: Template) -> None:
    r = run_inside(
        template,
        "id -un; cd && pwd; echo hi > note && stat -c %U note && rm note; sudo -n id -u",
        uid=1000,
        gid=1000,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["user", "/home/user", "user", "0"]
    assert r.stderr == ""  # no "unable to resolve host" from sudo


@pytest.mark.timeout(900)
def test_setup_twice_second_run_is_a_quick_no_op() -> None:
    setup = [str(REPO / "scripts/setup")]
    first = subprocess.run(setup, capture_output=True, text=True, timeout=880)
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    second = subprocess.run(setup, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("setup: nothing to do"), second.stdout
    assert elapsed < 5, f"second setup run took {elapsed:.1f} s"
