"""EntryInfo as upstream envd builds it, the errno mapping, and the tree walks below a
sandbox root (on a scratch directory standing in for one)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.envd.filesystem.entry import (
    Names,
    entry_for,
    file_type,
    go_mode_string,
    parse_ids,
    sandbox_id,
    text,
)
from shoal.envd.filesystem.list_dir import walk
from shoal.envd.filesystem.oserr import FailedPrecondition, os_error
from shoal.errors import (
    AlreadyExists,
    Forbidden,
    InvalidArgument,
    NoSpace,
    NotFound,
    ShoalError,
)
from shoal.runtime.rootfs import RootFS
from shoal.wire.envd import filesystem_pb as pb


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFREG | 0o000, "----------"),
        (stat.S_IFREG | 0o200, "--w-------"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFDIR | 0o1777, "dtrwxrwxrwx"),
        (stat.S_IFREG | 0o4755, "urwxr-xr-x"),
        (stat.S_IFDIR | 0o2775, "dgrwxrwxr-x"),
        (stat.S_IFREG | 0o7777, "ugtrwxrwxrwx"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFCHR | 0o4666, "Ducrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o644, "prw-r--r--"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
    ],
)
def test_permissions_are_gos_file_mode_string(mode: int, expected: str) -> None:
    assert go_mode_string(mode) == expected


def test_file_types() -> None:
    assert file_type(stat.S_IFREG | 0o644) == pb.FileType.FILE
    assert file_type(stat.S_IFDIR | 0o755) == pb.FileType.DIRECTORY
    assert file_type(stat.S_IFLNK | 0o777) == pb.FileType.SYMLINK
    for other in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        assert file_type(other | 0o644) == pb.FileType.UNSPECIFIED


def test_names_that_are_not_utf8_become_replacement_characters() -> None:
    assert text("plain é") == "plain é"
    assert text(os.fsdecode(b"a\xff\xfeb")) == "a\ufffd\ufffdb"


def test_ids_inside_the_user_namespace() -> None:
    assert sandbox_id(101000, 100000) == 1000
    assert sandbox_id(100000, 100000) == 0
    assert sandbox_id(0, 100000) == 65534  # unmapped: the kernel's overflow id
    assert sandbox_id(100000 + 65536, 100000) == 65534


def test_passwd_parsing_first_entry_wins() -> None:
    content = "root:x:0:0::/root:/bin/bash\n#x:x:5:5\nbad\nnum:x:abc:1\ntoor:x:0:0::/:/bin/sh\n"
    assert parse_ids(content) == {0: "root"}


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, NotFound),
        (errno.EEXIST, AlreadyExists),
        (errno.ENOTEMPTY, AlreadyExists),
        (errno.ENOTDIR, InvalidArgument),
        (errno.EISDIR, InvalidArgument),
        (errno.ENAMETOOLONG, InvalidArgument),
        (errno.EINVAL, InvalidArgument),
        (errno.ELOOP, InvalidArgument),
        (errno.EACCES, Forbidden),
        (errno.EPERM, Forbidden),
        (errno.ENOSPC, NoSpace),
        (errno.EDQUOT, NoSpace),
        (errno.EIO, ShoalError),
    ],
)
def test_errno_mapping(code: int, kind: type[ShoalError]) -> None:
    exc = OSError(code, os.strerror(code))
    err = os_error(exc, "/home/user/x", "lstat")
    assert type(err) is kind
    assert err.message == f"lstat /home/user/x: {os.strerror(code).lower()}"
    assert err.__cause__ is exc


# --- on a scratch root ---------------------------------------------------------------


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[RootFS]:
    """A sandbox root whose uid_base makes the test's own uid the sandbox's 1000."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("user:x:1000:1000::/home/user:/bin/bash\n")
    (root / "etc" / "group").write_text("staff:x:1000:\n")
    home = root / "home" / "user"
    home.mkdir(parents=True)
    (home / "f.txt").write_text("hello")
    os.chmod(home / "f.txt", 0o640)
    (home / "dir" / "sub").mkdir(parents=True)
    (home / "dir" / "sub" / "deep.txt").write_text("")
    (home / "dir" / "B").write_text("")
    (home / "dir" / "a").write_text("")
    (home / "dir" / "link-dir").symlink_to("sub")
    (home / "dir" / "link-up").symlink_to("../../..")
    (home / "dangling").symlink_to("/nowhere")
    (home / "cyclic").symlink_to("cyclic")
    (home / "host").symlink_to("/")
    os.chmod(root, 0o755)
    rootfs = RootFS(str(root), uid_base=os.getuid() - 1000)
    yield rootfs
    rootfs.close()


def names(fs: RootFS) -> Names:
    return Names(fs, fs.uid_base)


def test_entry_of_a_file(fs: RootFS) -> None:
    e = entry_for(fs, "/home/user/f.txt", names(fs))
    assert (e.name, e.path, e.type, e.size) == ("f.txt", "/home/user/f.txt", pb.FileType.FILE, 5)
    assert (e.mode, e.permissions) == (0o640, "-rw-r-----")
    assert (e.owner, e.group) == ("user", "staff")
    assert not e.has_field("symlink_target")
    assert e.modified_time is not None
    assert e.modified_time.to_nanos() == os.stat(f"{fs.root}/home/user/f.txt").st_mtime_ns


def test_entry_of_symlinks(fs: RootFS) -> None:
    e = entry_for(fs, "/home/user/dir/link-dir", names(fs))
    assert (e.type, e.mode, e.permissions) == (pb.FileType.DIRECTORY, 0o755, "Lrwxrwxrwx")
    assert e.symlink_target == "/home/user/dir/sub"
    assert not e.is_symlink
    host = entry_for(fs, "/home/user/host", names(fs))
    assert (host.type, host.symlink_target) == (pb.FileType.DIRECTORY, "/")
    assert entry_for(fs, "/home/user/dir/link-up", names(fs)).symlink_target == "/"
    for broken in ("/home/user/dangling", "/home/user/cyclic"):
        e = entry_for(fs, broken, names(fs))
        assert (e.type, e.mode, e.symlink_target) == (pb.FileType.UNSPECIFIED, 0, broken)
    # Through a link on the way: resolved inside the root.
    via = entry_for(fs, "/home/user/host/home/user/f.txt", names(fs))
    assert (via.path, via.size) == ("/home/user/host/home/user/f.txt", 5)


def test_entry_metadata_is_the_user_e2b_xattrs(fs: RootFS) -> None:
    path = f"{fs.root}/home/user/f.txt"
    try:
        os.setxattr(path, "user.e2b.author", b"mish")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    os.setxattr(path, "user.other", b"x")
    os.setxattr(path, "user.e2b.binary", b"\xff")
    assert entry_for(fs, "/home/user/f.txt", names(fs)).metadata == {"author": "mish"}
    assert entry_for(fs, "/home/user/dir/a", names(fs)).metadata == {}


def test_unknown_ids_are_numbers(fs: RootFS, tmp_path: Path) -> None:
    os.unlink(f"{fs.root}/etc/group")
    e = entry_for(fs, "/home/user/f.txt", names(fs))
    assert (e.owner, e.group) == ("user", "1000")


def test_walk_is_lexical_preorder_and_stops_at_symlinks(fs: RootFS) -> None:
    paths = [e.path for e in walk(fs, "/home/user/dir", 5, names(fs))]
    assert paths == [
        "/home/user/dir/B",
        "/home/user/dir/a",
        "/home/user/dir/link-dir",
        "/home/user/dir/link-up",
        "/home/user/dir/sub",
        "/home/user/dir/sub/deep.txt",
    ]
    assert [e.name for e in walk(fs, "/home/user/dir", 1, names(fs))] == [
        "B",
        "a",
        "link-dir",
        "link-up",
        "sub",
    ]
    through = walk(fs, "/home/user/dir/link-dir", 1, names(fs))
    assert [e.path for e in through] == ["/home/user/dir/link-dir/deep.txt"]


def test_walk_errors(fs: RootFS) -> None:
    with pytest.raises(NotFound):
        walk(fs, "/home/user/missing", 1, names(fs))
    with pytest.raises(InvalidArgument):
        walk(fs, "/home/user/f.txt", 1, names(fs))
    with pytest.raises(FailedPrecondition):
        walk(fs, "/home/user/cyclic", 1, names(fs))
    with pytest.raises(NotFound):
        walk(fs, "/home/user/dangling", 1, names(fs))


def test_remove_never_follows_symlinks(fs: RootFS, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("host")
    home = Path(fs.root) / "home" / "user"
    (home / "dir" / "sub" / "out").symlink_to(outside)
    (home / "out-abs").symlink_to(outside)
    assert fs.remove("/home/user/dir") is True
    assert fs.remove("/home/user/out-abs") is True
    assert fs.remove(f"/home/user/host{outside}") is False
    assert fs.remove("/home/user/nothing/here") is False
    assert (outside / "keep.txt").read_text() == "host"
    assert sorted(os.listdir(home)) == ["cyclic", "dangling", "f.txt", "host"]


def test_rename_moves_links_as_links(fs: RootFS) -> None:
    fs.rename("/home/user/host", "/home/user/dir/root-link")
    assert os.readlink(f"{fs.root}/home/user/dir/root-link") == "/"
    with pytest.raises(FileNotFoundError):
        fs.rename("/home/user/nope", "/home/user/x")


def test_a_fifo_planted_as_passwd_is_never_opened(fs: RootFS) -> None:
    os.unlink(f"{fs.root}/etc/passwd")
    os.mkfifo(f"{fs.root}/etc/passwd")  # opening it for reading would block forever
    e = entry_for(fs, "/home/user/f.txt", names(fs))
    assert (e.owner, e.group) == ("1000", "staff")
