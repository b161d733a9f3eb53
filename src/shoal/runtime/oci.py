"""The OCI runtime config (``config.json``) of a sandbox: a pure function of its spec.

Isolation comes from the kernel through the runtime, not from hand-written namespace
code: new pid, mount, network, uts, ipc, cgroup and user namespaces; root inside maps
to ``uid_base`` outside; a cgroup limits cpu, memory and pids; the seccomp deny-list of
:mod:`shoal.runtime.seccomp`; and the capability set container runtimes grant by default
(enough for ``sudo``; the user namespace is what keeps that root harmless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.runtime import seccomp

INIT_PATH = "/.shoal/init"
"""Where the host's ``shoal-init`` binary is bind-mounted (read-only) inside every sandbox."""

ID_RANGE = 65536

DEFAULT_CAPS = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
]

READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SandboxSpec:
    sandbox_id: str
    rootfs: str
    """Host path of the mounted overlay (template layer + writable layer)."""
    init_binary: str
    """Host path of ``shoal-init``."""
    socket_name: str
    """Abstract socket name ``shoal-init`` listens on inside the sandbox's network namespace."""
    cgroup_path: str
    cpu_count: int
    memory_mb: int
    uid_base: int
    hostname: str = "sandbox"
    pids_limit: int = 4096
    tmp_mb: int = 0
    """Size of a tmpfs on ``/tmp`` (0: ``/tmp`` lives on the writable layer)."""
    nofile: int = 65536
    """RLIMIT_NOFILE inside; the runtime can grant at most its own hard limit."""
    boot_id_file: str | None = None
    """Host file bind-mounted over ``/proc/sys/kernel/random/boot_id`` (own boot id per sandbox)."""


def build_config(spec: SandboxSpec) -> dict[str, Any]:
    mem = spec.memory_mb * 1024 * 1024
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                f"size={max(64, spec.memory_mb // 2)}m",
            ],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
        {
            "destination": INIT_PATH,
            "type": "bind",
            "source": spec.init_binary,
            "options": ["bind", "ro", "nosuid", "nodev"],
        },
    ]
    if spec.tmp_mb:
        mounts.append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={spec.tmp_mb}m"],
            }
        )
    if spec.boot_id_file:
        mounts.append(
            {
                "destination": "/proc/sys/kernel/random/boot_id",
                "type": "bind",
                "source": spec.boot_id_file,
                "options": ["bind", "ro"],
            }
        )
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [INIT_PATH, spec.socket_name],
            "env": [f"PATH={PATH}", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": spec.nofile, "soft": spec.nofile}],
            # sudo inside the sandbox must work, so setuid binaries keep their power.
            "noNewPrivileges": False,
            "oomScoreAdj": 500,
        },
        "root": {"path": spec.rootfs, "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": ID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": ID_RANGE}],
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup"},
            ],
            "cgroupsPath": spec.cgroup_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": mem, "swap": mem},
                "cpu": {"quota": spec.cpu_count * 100_000, "period": 100_000, "shares": 1024},
                "pids": {"limit": spec.pids_limit},
            },
            "seccomp": seccomp.profile(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
