"""The seccomp filter every sandbox runs under.

A short deny-list on a default-allow filter, as measured in ``isolation-notes.md``: a
Docker-style allow-list of hundreds of rules nearly doubled the cost of every syscall
(``python3 -c pass``: 25.7 ms → 48.0 ms under crun), a deny-list costs almost nothing.

What the list guards against is kernel attack surface that the user namespace alone
does not close: code that is root inside its sandbox must not create *further* user
namespaces (which would hand it CAP_SYS_ADMIN over fresh mount/net namespaces), load
BPF, poke the keyring, use io_uring, or touch modules, kexec, swap and clocks.
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38
CLONE_NEWUSER = 0x10000000

DENIED = [
    "acct",
    "add_key",
    "bpf",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "iopl",
    "ioperm",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "userfaultfd",
    "uselib",
    "vm86",
    "vm86old",
]


def profile() -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object."""
    names = sorted(DENIED)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            # clone3 passes its flags in a struct seccomp cannot read: answer ENOSYS so libc
            # falls back to clone(2), whose flags the next rules can inspect.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            {
                "names": ["unshare"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NEWUSER,
                        "valueTwo": CLONE_NEWUSER,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NEWUSER,
                        "valueTwo": CLONE_NEWUSER,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
        ],
    }
