"""Per-sandbox root filesystems: the template's read-only layer under a writable overlay."""

from __future__ import annotations

from shoal.runtime.mounts import MS_NODEV, is_mounted, mount, unmount

__all__ = ["is_mounted", "mount_overlay", "unmount"]


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    # redirect_dir=on: renaming a directory that comes from the template layer works
    # (without it rename(2) fails with EXDEV and only tools that fall back to copying cope).
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},xino=off,redirect_dir=on"
    mount("overlay", target, "overlay", MS_NODEV, opts)
