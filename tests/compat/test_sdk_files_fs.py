"""``sandbox.files`` get_info / exists / list / make_dir / rename / remove through the
official SDK (sync and async) against a live Shoal: e2b-compat §4.3, as upstream envd
answers. Files are made with commands, so nothing here depends on ``/files`` uploads.
"""

from __future__ import annotations

import pytest
from e2b import FileType
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
)


def sh(sbx, cmd: str, user: str | None = None) -> str:  # type: ignore[no-untyped-def]
    kwargs = {"user": user} if user else {}
    return sbx.commands.run(cmd, **kwargs).stdout


# --- get_info / exists ----------------------------------------------------------------


def test_info_of_a_file(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "printf test > info_file.txt")
    info = shared_sandbox.files.get_info("info_file.txt")
    assert info.name == "info_file.txt"
    assert info.type == FileType.FILE
    assert info.path == "/home/user/info_file.txt"
    assert info.size == 4
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert (info.owner, info.group) == ("user", "user")
    assert info.symlink_target is None
    assert info.metadata is None
    mtime = int(sh(shared_sandbox, "stat -c %Y info_file.txt"))
    assert int(info.modified_time.timestamp()) == mtime


def test_info_of_a_made_directory(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    assert shared_sandbox.files.make_dir("info_dir") is True
    info = shared_sandbox.files.get_info("info_dir")
    assert (info.name, info.type, info.path) == ("info_dir", FileType.DIR, "/home/user/info_dir")
    assert info.mode == 0o755
    assert info.permissions == "drwxr-xr-x"
    assert (info.owner, info.group) == ("user", "user")


def test_owner_and_group_come_from_the_sandbox(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    etc = shared_sandbox.files.get_info("/etc")
    assert (etc.owner, etc.group, etc.type) == ("root", "root", FileType.DIR)
    tmp = shared_sandbox.files.get_info("/tmp")
    assert tmp.permissions == "dtrwxrwxrwx"  # Go prints the sticky bit as a type letter
    assert tmp.mode == 0o777
    sudo = shared_sandbox.files.get_info("/usr/bin/sudo")
    assert sudo.permissions.startswith("u") and sudo.mode == 0o755
    sh(shared_sandbox, "sudo install -d -o 4242 -g 4343 /opt/numeric")
    numeric = shared_sandbox.files.get_info("/opt/numeric")
    assert (numeric.owner, numeric.group) == ("4242", "4343")


def test_missing_paths(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.get_info("does_not_exist.txt")
    assert shared_sandbox.files.exists("does_not_exist.txt") is False
    assert shared_sandbox.files.exists("/etc/passwd") is True
    assert shared_sandbox.files.exists("/etc") is True


def test_path_forms(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    assert shared_sandbox.files.get_info("~").path == "/home/user"
    assert shared_sandbox.files.get_info("").path == "/home/user"
    sh(shared_sandbox, "mkdir -p forms/sub && touch forms/sub/f")
    assert shared_sandbox.files.get_info("forms/sub/../sub/f").path == "/home/user/forms/sub/f"
    assert shared_sandbox.files.get_info("~/forms/sub/f").path == "/home/user/forms/sub/f"
    # Relative paths are relative to the run-as user's home.
    assert shared_sandbox.files.get_info(".", user="root").path == "/root"


def test_symlink_info(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p links && printf abc > links/target.txt && mkdir -p links/tdir")
    sh(shared_sandbox, "cd links && ln -sf target.txt to_file && ln -sfn tdir to_dir")
    sh(
        shared_sandbox,
        "cd links && ln -sf /home/user/links/to_file chain && ln -sf nowhere dangling",
    )
    to_file = shared_sandbox.files.get_info("links/to_file")
    assert to_file.type == FileType.FILE
    assert to_file.path == "/home/user/links/to_file"
    assert to_file.name == "to_file"
    assert to_file.symlink_target == "/home/user/links/target.txt"
    assert to_file.permissions == "Lrwxrwxrwx"
    assert to_file.mode == 0o644
    to_dir = shared_sandbox.files.get_info("links/to_dir")
    assert (to_dir.type, to_dir.mode) == (FileType.DIR, 0o755)
    assert to_dir.symlink_target == "/home/user/links/tdir"
    assert shared_sandbox.files.get_info("links/chain").symlink_target == (
        "/home/user/links/target.txt"
    )
    dangling = shared_sandbox.files.get_info("links/dangling")
    assert dangling.type is None  # upstream: FILE_TYPE_UNSPECIFIED
    assert dangling.symlink_target == "/home/user/links/dangling"
    assert shared_sandbox.files.exists("links/dangling") is True


def test_metadata_from_user_xattrs(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p meta && printf x > meta/tagged.txt")
    sh(
        shared_sandbox,
        "python3 -c \"import os; p='/home/user/meta/tagged.txt';"
        " os.setxattr(p, 'user.e2b.author', b'mish'); os.setxattr(p, 'user.other', b'no');"
        " os.setxattr(p, 'user.e2b.bad', b'\\\\xff')\"",
    )
    assert shared_sandbox.files.get_info("meta/tagged.txt").metadata == {"author": "mish"}
    (entry,) = shared_sandbox.files.list("meta")
    assert entry.metadata == {"author": "mish"}
    renamed = shared_sandbox.files.rename("meta/tagged.txt", "meta/renamed.txt")
    assert renamed.metadata == {"author": "mish"}


# --- list ---------------------------------------------------------------------------


def test_list_depths_and_order(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    for d in ("subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1", "subdir2/subdir2_2"):
        assert shared_sandbox.files.make_dir(f"tree/{d}") is True
    sh(
        shared_sandbox,
        "printf 'Hello, world!' > tree/file1.txt && touch tree/subdir1/subdir1_1/deep",
    )
    level1 = ["file1.txt", "subdir1", "subdir2"]
    level2 = [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
        "subdir2/subdir2_1",
        "subdir2/subdir2_2",
    ]
    for depth, expected in ((None, level1), (1, level1), (2, level2)):
        entries = shared_sandbox.files.list("tree", depth=depth)
        assert [e.path for e in entries] == [f"/home/user/tree/{p}" for p in expected]
        assert [e.name for e in entries] == [p.rsplit("/", 1)[-1] for p in expected]
        assert [e.type for e in entries] == [FileType.FILE] + [FileType.DIR] * (len(expected) - 1)
    deep = shared_sandbox.files.list("tree", depth=3)
    assert "/home/user/tree/subdir1/subdir1_1/deep" in [e.path for e in deep]
    assert len(deep) == len(level2) + 1
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.list("tree", depth=-1)  # refused by the SDK itself


def test_list_entry_details(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p details/subdir && printf 'Hello, World!' > details/test.txt")
    entries = {e.name: e for e in shared_sandbox.files.list("details")}
    f, d = entries["test.txt"], entries["subdir"]
    assert (f.type, f.mode, f.permissions, f.size) == (FileType.FILE, 0o644, "-rw-r--r--", 13)
    assert (d.type, d.mode, d.permissions) == (FileType.DIR, 0o755, "drwxr-xr-x")
    for e in (f, d):
        assert (e.owner, e.group) == ("user", "user")
        assert e.modified_time is not None
        assert e.symlink_target is None


def test_list_symlinks(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p sl/real-dir && printf hi > sl/real-dir/file.txt")
    sh(shared_sandbox, "cd sl && ln -sfn real-dir link-dir && ln -sf real-dir/file.txt link-file")
    sh(shared_sandbox, "cd sl && ln -sf cyclic cyclic && ln -sf gone dangling")
    entries = shared_sandbox.files.list("sl", depth=3)
    # Unresolvable links come back FILE_TYPE_UNSPECIFIED, which the SDK drops.
    assert [e.path for e in entries] == [
        "/home/user/sl/link-dir",
        "/home/user/sl/link-file",
        "/home/user/sl/real-dir",
        "/home/user/sl/real-dir/file.txt",
    ]
    link_dir, link_file = entries[0], entries[1]
    assert (link_dir.type, link_dir.symlink_target) == (FileType.DIR, "/home/user/sl/real-dir")
    assert link_file.type == FileType.FILE
    assert link_file.symlink_target == "/home/user/sl/real-dir/file.txt"
    # Listing through a link to a directory: its content, under the requested path.
    through = shared_sandbox.files.list("sl/link-dir")
    assert [e.path for e in through] == ["/home/user/sl/link-dir/file.txt"]


def test_list_errors(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "printf x > not_a_dir.txt && ln -sf loop_a loop_b && ln -sf loop_b loop_a")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.list("not_a_dir.txt")
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.list("no_such_dir")
    with pytest.raises(SandboxException, match=r"(?i)failed_precondition: cyclic symlink"):
        shared_sandbox.files.list("loop_a")


def test_list_names_that_are_not_utf8(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p raw && python3 -c \"open(b'/home/user/raw/a\\\\xff.txt', 'w')\"")
    (entry,) = shared_sandbox.files.list("raw")
    assert entry.name == "a\ufffd.txt"
    assert entry.type == FileType.FILE


# --- make_dir / rename / remove -----------------------------------------------------


def test_make_dir(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    assert shared_sandbox.files.make_dir("mk/a/b/c") is True
    assert shared_sandbox.files.make_dir("mk/a/b/c") is False
    assert shared_sandbox.files.make_dir("mk/a") is False
    owners = sh(shared_sandbox, "stat -c '%U:%G %a' mk mk/a mk/a/b mk/a/b/c").split("\n")
    assert owners[:4] == ["user:user 755"] * 4
    sh(shared_sandbox, "printf x > mk/file")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.make_dir("mk/file")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.make_dir("mk/file/sub")
    assert shared_sandbox.files.make_dir("/opt/by_root", user="root") is True
    assert sh(shared_sandbox, "stat -c %U:%G /opt/by_root").strip() == "root:root"


def test_rename(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "printf data > mv_src.txt")
    info = shared_sandbox.files.rename("mv_src.txt", "mv/new/parents/dst.txt")
    assert info.path == "/home/user/mv/new/parents/dst.txt"
    assert (info.name, info.type, info.size) == ("dst.txt", FileType.FILE, 4)
    assert shared_sandbox.files.exists("mv_src.txt") is False
    assert sh(shared_sandbox, "cat mv/new/parents/dst.txt") == "data"
    assert sh(shared_sandbox, "stat -c %U mv/new/parents").strip() == "user"
    shared_sandbox.files.make_dir("mv_dir/inner")
    moved = shared_sandbox.files.rename("mv_dir", "mv_dir2")
    assert moved.type == FileType.DIR
    assert shared_sandbox.files.exists("mv_dir2/inner") is True
    with pytest.raises(FileNotFoundException):
        shared_sandbox.files.rename("mv_missing", "mv_whatever")


def test_remove(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    sh(shared_sandbox, "mkdir -p rm_dir/a/b && touch rm_dir/a/b/f rm_file && ln -sf /etc rm_link")
    shared_sandbox.files.remove("rm_file")
    shared_sandbox.files.remove("rm_dir")
    shared_sandbox.files.remove("rm_link")  # the link, not /etc
    shared_sandbox.files.remove("rm_never_existed")
    shared_sandbox.files.remove("rm_never/existed/either")
    assert sh(shared_sandbox, "ls -d rm_* 2>/dev/null; ls /etc/passwd") == "/etc/passwd\n"


# --- users and bad input -------------------------------------------------------------


def test_unknown_user_is_an_authentication_error(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthenticationException):
        shared_sandbox.files.get_info("/etc", user="no_such_user")


def test_bad_paths(shared_sandbox) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.get_info("a\x00b")
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.get_info("x" * 300)  # one component > NAME_MAX
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.make_dir("y" * 300)
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.list("/" + "z/" * 3000)  # longer than PATH_MAX
    with pytest.raises(InvalidArgumentException):
        shared_sandbox.files.remove("w" * 300)  # ENAMETOOLONG, as upstream's RemoveAll fails
    assert shared_sandbox.files.exists("~") is True


# --- the async SDK -------------------------------------------------------------------


async def test_async_sdk_round_trip(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    assert await sbx.files.make_dir("as/one/two") is True
    assert await sbx.files.make_dir("as/one") is False
    await sbx.commands.run("printf hello > as/one/f.txt && ln -s f.txt as/one/l")
    info = await sbx.files.get_info("as/one/f.txt")
    assert (info.type, info.size, info.mode, info.owner) == (FileType.FILE, 5, 0o644, "user")
    link = await sbx.files.get_info("as/one/l")
    assert (link.type, link.symlink_target) == (FileType.FILE, "/home/user/as/one/f.txt")
    names = [e.path for e in await sbx.files.list("as", depth=3)]
    assert names == [
        "/home/user/as/one",
        "/home/user/as/one/f.txt",
        "/home/user/as/one/l",
        "/home/user/as/one/two",
    ]
    moved = await sbx.files.rename("as/one/f.txt", "as/other/g.txt")
    assert moved.path == "/home/user/as/other/g.txt"
    assert await sbx.files.exists("as/one/f.txt") is False
    with pytest.raises(NotFoundException):
        await sbx.files.get_info("as/one/f.txt")
    with pytest.raises(InvalidArgumentException):
        await sbx.files.list("as/other/g.txt")
    await sbx.files.remove("as")
    await sbx.files.remove("as")
    assert await sbx.files.exists("as") is False


def test_rename_a_template_directory(sandbox) -> None:  # type: ignore[no-untyped-def]
    moved = sandbox.files.rename("/etc/apt", "/etc/apt-moved", user="root")
    assert moved.type == FileType.DIR
    assert sandbox.files.exists("/etc/apt-moved/sources.list.d", user="root")
