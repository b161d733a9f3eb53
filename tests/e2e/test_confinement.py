"""What root inside a sandbox cannot do (item 4 of the core issue): new user namespaces, mounts,
the kernel, the host's files, the node's data, the shared template; and what it has instead:
the container runtimes' default capabilities and a working ``sudo``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_exec import py, sh
from support.server import TEMPLATE_DIR, ShoalServer

pytestmark = [pytest.mark.root, pytest.mark.sdk]


# The capability set container runtimes grant by default (Docker/podman/crun), by the kernel's
# bit numbers (linux/capability.h); root in a sandbox has exactly these.
DEFAULT_CAP_BITS = {
    "chown": 0,
    "dac_override": 1,
    "fowner": 3,
    "fsetid": 4,
    "kill": 5,
    "setgid": 6,
    "setuid": 7,
    "setpcap": 8,
    "net_bind_service": 10,
    "net_raw": 13,
    "sys_chroot": 18,
    "mknod": 27,
    "audit_write": 29,
    "setfcap": 31,
}
CAP_SYS_ADMIN = 21

# -- seccomp, mounts, kernel ----------------------------------------------------------


@pytest.mark.parametrize("user", ["user", "root"])
def test_new_user_namespaces_are_refused(box: Any, user: str) -> None:
    rc, _, err = sh(box, "unshare -U true", user=user)
    assert rc != 0 and "Operation not permitted" in err
    result = py(
        box,
        """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
out = {}
out["unshare"] = (libc.unshare(0x10000000), ctypes.get_errno())
# clone(CLONE_NEWUSER | SIGCHLD): the raw syscall, as a hand-rolled exploit would call it.
pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
out["clone"] = (pid, ctypes.get_errno())
print(json.dumps(out))
""",
        user=user,
    )
    assert result == {"unshare": [-1, 1], "clone": [-1, 1]}  # EPERM


def test_mount_is_refused_even_for_root(box: Any) -> None:
    rc, _, err = sh(box, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m", user="root")
    assert rc != 0, err
    rc, out, _ = sh(box, "grep -c ' /tmp/m ' /proc/self/mountinfo", user="root")
    assert out.strip() == "0"
    rc, _, err = sh(box, "mount --bind /tmp /mnt", user="root")
    assert rc != 0


def test_root_cannot_touch_the_kernel(box: Any) -> None:
    result = py(
        box,
        """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
out = {}
fd = os.open("/bin/true", os.O_RDONLY)
out["finit_module"] = (libc.syscall(313, fd, b"", 0), ctypes.get_errno())
out["init_module"] = (libc.syscall(175, b"\\0" * 64, 64, b""), ctypes.get_errno())
out["reboot"] = (libc.syscall(169, 0xfee1dead, 672274793, 0x4321FEDC, 0), ctypes.get_errno())
try:
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("h")
    out["sysrq"] = "written"
except OSError as e:
    out["sysrq"] = "refused"
try:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    out["drop_caches"] = "written"
except OSError as e:
    out["drop_caches"] = "refused"
out["syslog"] = (libc.klogctl(3, ctypes.create_string_buffer(4096), 4096), ctypes.get_errno())
sizes = {}
for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
    try:
        with open(path, "rb") as f:
            sizes[path] = len(f.read(64))
    except OSError:
        sizes[path] = 0
out["masked"] = sizes
try:
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write("x")
    out["sysctl"] = "written"
except OSError as e:
    out["sysctl"] = "refused"
print(json.dumps(out))
""",
        user="root",
    )
    assert result == {
        "finit_module": [-1, 1],
        "init_module": [-1, 1],
        "reboot": [-1, 1],
        "sysrq": "refused",
        "drop_caches": "refused",
        "syslog": [-1, 1],
        "masked": {"/proc/kcore": 0, "/proc/keys": 0, "/proc/timer_list": 0},
        "sysctl": "refused",
    }


def test_the_init_binary_cannot_be_replaced(box: Any, e2e_server: ShoalServer) -> None:
    host_init = e2e_server.data_dir / "bin"
    before = {p.name: p.read_bytes() for p in host_init.iterdir() if p.is_file()}
    rc, _, _err = sh(
        box,
        "cp /bin/true /.shoal/init; echo x >> /.shoal/init; chmod 777 /.shoal/init; "
        "rm -f /.shoal/init; umount -l /.shoal/init",
        user="root",
    )
    assert rc != 0
    assert sh(box, "cmp -s /.shoal/init /bin/true")[0] != 0
    assert {p.name: p.read_bytes() for p in host_init.iterdir() if p.is_file()} == before
    rc, out, _ = sh(box, "tr '\\0' ' ' < /proc/1/cmdline")
    assert out.startswith("/.shoal/init ")


def test_root_cannot_read_host_files_or_the_nodes_data(box: Any, e2e_server: ShoalServer) -> None:
    secret = secrets.token_hex(16)
    path = Path("/var/tmp/shoal-tests") / f"secret-{secrets.token_hex(6)}"
    path.write_text(secret)
    path.chmod(0o644)  # world-readable on the host: only the mount namespace hides it
    try:
        data = e2e_server.data_dir
        for target in (
            str(path),
            f"/proc/1/root{path}",
            str(data / "shoal.db"),
            str(data / "node-id"),
            str(data / "sandboxes" / box.sandbox_id / "sandbox.json"),
            str(TEMPLATE_DIR / "base" / "current" / "template.json"),
        ):
            rc, out, _ = sh(box, f"cat {target} || ls {target}", user="root")
            assert rc != 0 and secret not in out, target
    finally:
        path.unlink()


def test_root_cannot_open_the_hosts_disk(box: Any) -> None:
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    _rc, out, err = sh(
        box,
        f"mknod /tmp/disk b {major} {minor} 2>&1; head -c 512 /tmp/disk | wc -c",
        user="root",
    )
    assert out.strip().splitlines()[-1] == "0", (out, err)


def test_writes_to_the_template_stay_in_the_sandbox(
    box: Any, make_sandbox: Callable[..., Any]
) -> None:
    name = f"shoal-e2e-{secrets.token_hex(4)}"
    assert sh(box, f"echo pwned > /usr/bin/{name} && rm -f /usr/bin/true", user="root")[0] == 0
    assert sh(box, f"cat /usr/bin/{name}")[1] == "pwned\n"
    template_root = TEMPLATE_DIR / "base" / "current" / "rootfs"
    assert (template_root / "usr/bin/true").exists()
    assert not (template_root / "usr/bin" / name).exists()
    fresh = make_sandbox()
    assert sh(fresh, f"test -e /usr/bin/{name}")[0] == 1
    assert sh(fresh, "/usr/bin/true")[0] == 0


# -- capabilities and sudo ------------------------------------------------------------


def _caps(status: str) -> dict[str, int]:
    return {
        k: int(v, 16)
        for k, v in (ln.split(":\t") for ln in status.splitlines() if ln.startswith("Cap"))
    }


def test_capabilities_are_the_container_default_set(box: Any) -> None:
    expected = sum(1 << bit for bit in DEFAULT_CAP_BITS.values())
    root = _caps(sh(box, "grep ^Cap /proc/self/status", user="root")[1])
    assert root["CapEff"] == expected
    assert root["CapBnd"] == expected
    assert not root["CapEff"] & (1 << CAP_SYS_ADMIN)
    user = _caps(sh(box, "grep ^Cap /proc/self/status", user="user")[1])
    assert user["CapEff"] == 0
    via_sudo = _caps(sh(box, "sudo -n grep ^Cap /proc/self/status", user="user")[1])
    assert via_sudo["CapEff"] == expected


def test_sudo_works_for_user(box: Any) -> None:
    rc, out, err = sh(box, "id -u; sudo -n id -u; sudo -n touch /root/made-by-sudo", user="user")
    assert rc == 0, err
    assert out.split() == ["1000", "0"]
    rc, out, _ = sh(box, "stat -c %U /root/made-by-sudo", user="root")
    assert out.strip() == "root"
