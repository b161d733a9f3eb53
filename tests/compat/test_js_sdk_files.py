"""``sandbox.files.*`` of the unmodified npm ``e2b@2.51.0`` SDK against a live ``shoal serve``.

``js/files.mjs`` drives uploads (string, ArrayBuffer, Blob, ReadableStream, gzip, arrays),
downloads (text, bytes, blob, stream), the filesystem RPCs, metadata, the errors, and
``downloadUrl()``/``uploadUrl()`` used with plain ``fetch`` (no routing headers);
``js/watch.mjs`` drives ``watchDir`` (the WatchDir Connect stream). The scripts and their
output format are those of ``test_js_sdk.py`` (see ``js/lib.mjs``).

connect-es is stricter than the Python client (e2b-compat §4.1): a streaming call's error
must arrive as an end-stream error on a 200, and every stream needs its end envelope, so
the watch errors here are not a repeat of the Python ones.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from support.server import ShoalServer
from test_js_sdk import ScriptRun, iso, run_script

ALL_BYTES_SHA256 = hashlib.sha256(bytes(i % 256 for i in range(256 * 64))).hexdigest()
EXPIRED = {"code": 401, "message": "signature is already expired"}


@pytest.fixture(scope="module")
def files(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "files.mjs")


@pytest.fixture(scope="module")
def watch(shoal_server: ShoalServer) -> ScriptRun:
    return run_script(shoal_server, "watch.mjs")


def error_kind(outcome: dict[str, Any]) -> tuple[bool, str]:
    return outcome["ok"], outcome.get("name", "")


@pytest.mark.parametrize("script", ["files", "watch"])
def test_script_runs_to_the_end(script: str, request: pytest.FixtureRequest) -> None:
    run: ScriptRun = request.getfixturevalue(script)
    assert run.returncode == 0 and run.done, run.report()
    assert "__script__" not in run.steps, run.report()


# --- write -------------------------------------------------------------------------------


def test_write_a_string_creates_parents_owned_by_the_user(files: ScriptRun) -> None:
    assert files.value("create")["hasAccessToken"] is True
    result = files.value("write_string")
    assert result["info"] == {
        "path": "/home/user/js/a.txt",
        "name": "a.txt",
        "type": "file",
        "metadata": None,
    }
    # The parent made for the upload, then the file: 0755 / 0644, the user's, 10 UTF-8 bytes.
    assert result["stat"] == "755 user user 4096\n644 user user 10\n"


def test_write_an_array_buffer_a_blob_and_a_stream(files: ScriptRun) -> None:
    ab = files.value("write_arraybuffer")
    assert ab["info"]["path"] == "/home/user/js/bytes.bin"
    assert ab["sum"].strip() == ALL_BYTES_SHA256
    blob = files.value("write_blob")
    assert blob == {
        "info": {
            "path": "/home/user/js/blob.txt",
            "name": "blob.txt",
            "type": "file",
            "metadata": None,
        },
        "content": "blob content",
    }
    # A ReadableStream goes as a streamed application/octet-stream body (duplex "half").
    stream = files.value("write_stream")
    assert stream["info"]["path"] == "/home/user/js/stream.txt"
    assert stream["content"] == "stream of chunks"


def test_write_gzip(files: ScriptRun) -> None:
    result = files.value("write_gzip")
    assert result["info"]["path"] == "/home/user/js/gz.txt"
    assert result["same"] is True
    assert result["size"].strip() == str(len("compressible ") * 5000)  # stored decompressed


def test_write_several_files_in_one_call(files: ScriptRun) -> None:
    result = files.value("write_array")
    assert result["infos"] == [
        {"path": "/home/user/js/many/one.txt", "name": "one.txt", "type": "file", "metadata": None},
        {"path": "/home/user/js/many/two.bin", "name": "two.bin", "type": "file", "metadata": None},
        {
            "path": "/home/user/js/many/deep/three.txt",
            "name": "three.txt",
            "type": "file",
            "metadata": None,
        },
    ]
    assert result["content"] == "123"
    assert files.value("write_array_empty") == []


def test_overwrite_truncates_and_keeps_the_mode(files: ScriptRun) -> None:
    assert files.value("write_overwrite") == "short\n600 user\n"


def test_the_same_path_twice_is_invalid(files: ScriptRun) -> None:
    outcome = files.value("write_duplicate_paths")
    assert error_kind(outcome) == (False, "InvalidArgumentError"), outcome
    assert "/home/user/js/dup.txt" in outcome["message"]


def test_write_as_root_and_as_an_unknown_user(files: ScriptRun) -> None:
    assert files.value("write_as_root") == {
        "info": {
            "path": "/root/js-root.txt",
            "name": "js-root.txt",
            "type": "file",
            "metadata": None,
        },
        "owner": "root\n",
    }
    outcome = files.value("write_unknown_user")
    assert error_kind(outcome) == (False, "AuthenticationError"), outcome
    assert "nobody-here" in outcome["message"]


# --- read --------------------------------------------------------------------------------


def test_read_text_bytes_blob_and_stream(files: ScriptRun) -> None:
    assert files.value("read_formats") == {
        "text": "h\u00e9llo \u2713",
        "bytesIsUint8Array": True,
        "bytesEqual": True,
        "blob": {"isBlob": True, "size": 12, "text": "blob content"},
        "streamEqual": True,
    }


def test_read_an_empty_file_in_every_format(files: ScriptRun) -> None:
    empty = {"text": "", "bytes": 0, "blob": 0, "stream": 0, "size": 0}
    assert files.value("read_empty") == {"empty-touched": empty, "empty-written": empty}


def test_read_a_large_file_as_a_stream(files: ScriptRun) -> None:
    assert files.value("read_large_stream") == {"size": 24 << 20, "same": True, "manyChunks": True}


def test_read_errors(files: ScriptRun) -> None:
    errors = files.value("read_errors")
    for key in ("missing", "missingStream"):
        assert error_kind(errors[key]) == (False, "FileNotFoundError"), errors[key]
        assert errors[key]["isNotFound"] is True
        assert "/home/user/js/does-not-exist.txt" in errors[key]["message"]
    assert error_kind(errors["directory"]) == (False, "InvalidArgumentError"), errors
    assert error_kind(errors["unknownUser"]) == (False, "AuthenticationError"), errors


# --- filesystem RPCs ---------------------------------------------------------------------


def test_list_depths_in_lexical_pre_order(files: ScriptRun) -> None:
    listed = files.value("list_depth")
    t = "/home/user/js/tree"
    one = [[f"{t}/a.txt", "file"], [f"{t}/b", "dir"], [f"{t}/z.txt", "file"]]
    assert listed["default"] == one
    assert listed["depth1"] == one
    assert listed["depth2"] == [
        [f"{t}/a.txt", "file"],
        [f"{t}/b", "dir"],
        [f"{t}/b/b.txt", "file"],
        [f"{t}/b/c", "dir"],
        [f"{t}/z.txt", "file"],
    ]
    assert listed["depth5"] == [
        [f"{t}/a.txt", "file"],
        [f"{t}/b", "dir"],
        [f"{t}/b/b.txt", "file"],
        [f"{t}/b/c", "dir"],
        [f"{t}/b/c/c.txt", "file"],
        [f"{t}/z.txt", "file"],
    ]
    assert error_kind(listed["depth0"]) == (False, "InvalidArgumentError")  # client-side


def test_list_entry_fields(files: ScriptRun) -> None:
    entry = files.value("list_entry")
    modified = entry.pop("modifiedTime")
    assert entry == {
        "name": "three.txt",
        "type": "file",
        "path": "/home/user/js/many/deep/three.txt",
        "size": 1,
        "mode": 0o644,
        "permissions": "-rw-r--r--",
        "owner": "user",
        "group": "user",
        "symlinkTarget": None,
        "metadata": None,
    }
    assert modified is not None


def test_exists(files: ScriptRun) -> None:
    assert files.value("exists") == {"file": True, "dir": True, "missing": False}


def test_get_info_of_files_dirs_and_symlinks(files: ScriptRun) -> None:
    info = files.value("get_info")
    now = iso(info["now"])
    for key in ("file", "dir", "linkToFile", "linkToDir", "rootOwned"):
        modified = iso(info[key].pop("modifiedTime"))
        assert now - timedelta(minutes=5) < modified <= now + timedelta(seconds=5), (key, modified)
    assert info["file"] == {
        "name": "a.txt",
        "type": "file",
        "path": "/home/user/js/a.txt",
        "size": 10,
        "mode": 0o644,
        "permissions": "-rw-r--r--",
        "owner": "user",
        "group": "user",
        "symlinkTarget": None,
        "metadata": None,
    }
    assert info["dir"] == {
        "name": "many",
        "type": "dir",
        "path": "/home/user/js/many",
        "size": 4096,
        "mode": 0o755,
        "permissions": "drwxr-xr-x",
        "owner": "user",
        "group": "user",
        "symlinkTarget": None,
        "metadata": None,
    }
    # A symlink: the target's type and mode, its own permission string, the resolved target.
    link = info["linkToFile"]
    assert (link["type"], link["mode"], link["permissions"]) == ("file", 0o644, "Lrwxrwxrwx")
    assert (link["path"], link["symlinkTarget"]) == (
        "/home/user/js/link-to-a",
        "/home/user/js/a.txt",
    )
    assert (link["owner"], link["group"]) == ("user", "user")
    link = info["linkToDir"]
    assert (link["type"], link["mode"], link["permissions"]) == ("dir", 0o755, "Lrwxrwxrwx")
    assert link["symlinkTarget"] == "/home/user/js/many"  # relative target, resolved
    root = info["rootOwned"]
    assert (root["owner"], root["group"], root["size"], root["type"]) == ("root", "root", 0, "file")


def test_make_dir(files: ScriptRun) -> None:
    made = files.value("make_dir")
    assert (made["created"], made["again"], made["parent"]) == (True, False, False)
    assert made["stat"] == "755 user user\n755 user user\n"
    assert error_kind(made["overAFile"]) == (False, "InvalidArgumentError"), made


def test_rename(files: ScriptRun) -> None:
    result = files.value("rename")
    moved = result["moved"]
    assert (moved["path"], moved["name"], moved["type"], moved["size"]) == (
        "/home/user/js/mv/new/parents/dst.txt",
        "dst.txt",
        "file",
        len("moved content"),
    )
    assert result["oldExists"] is False
    assert result["content"] == "moved content"
    assert (result["dirMoved"]["path"], result["dirMoved"]["type"]) == (
        "/home/user/js/mv/renamed-dir",
        "dir",
    )
    assert error_kind(result["missing"]) == (False, "FileNotFoundError"), result
    assert result["missing"]["isNotFound"] is True


def test_remove(files: ScriptRun) -> None:
    assert files.value("remove") == {
        "fileGone": True,
        "treeGone": True,
        "missing": {"ok": True, "value": None},  # removing an absent path succeeds
    }


def test_metadata_round_trip(files: ScriptRun) -> None:
    meta = files.value("metadata")
    both = {"author": "me", "purpose": "test"}  # keys lowercased by the server
    assert (meta["written"], meta["stat"], meta["listed"]) == (both, both, both)
    assert meta["array"] == [{"batch": "1"}, {"batch": "1"}]
    assert meta["arrayStat"] == {"batch": "1"}
    assert meta["octet"] == {"stage": "2"}
    # An upload without metadata clears it.
    assert (meta["cleared"], meta["clearedStat"]) == (None, None)
    assert error_kind(meta["badKey"]) == (False, "InvalidArgumentError")  # client-side


def test_errors(files: ScriptRun) -> None:
    errors = files.value("errors")
    for key in ("getInfoMissing", "listMissing"):
        assert error_kind(errors[key]) == (False, "FileNotFoundError"), errors[key]
        assert errors[key]["isNotFound"] is True
    assert error_kind(errors["listFile"]) == (False, "InvalidArgumentError"), errors
    assert errors["listFile"]["isInvalidArgument"] is True
    assert error_kind(errors["listUnknownUser"]) == (False, "AuthenticationError"), errors


# --- signed URLs with plain fetch --------------------------------------------------------


def test_download_url_with_plain_fetch(files: ScriptRun, shoal_server: ShoalServer) -> None:
    result = files.value("download_url")
    # The single sandbox address, no routing headers: the signature finds the sandbox.
    assert result["url"].startswith(f"{shoal_server.sandbox_url}/files?")
    assert "signature=v1_" in result["url"]
    assert (result["plain"]["status"], result["plain"]["body"]) == (200, "signed content")
    assert (result["withUser"]["status"], result["withUser"]["body"]) == (200, "signed content")
    expired = result["expired"]
    assert expired["status"] == 401
    assert expired["contentType"] == "application/json"
    assert json.loads(expired["body"]) == EXPIRED
    assert result["tampered"]["status"] == 401
    assert json.loads(result["tampered"]["body"])["code"] == 401
    missing = result["missing"]
    assert missing["status"] == 404
    assert json.loads(missing["body"]) == {
        "code": 404,
        "message": "path '/home/user/js/not-there.txt' does not exist",
    }


def test_upload_url_with_plain_fetch(files: ScriptRun) -> None:
    result = files.value("upload_url")
    assert result["multipart"]["status"] == 200, result
    assert json.loads(result["multipart"]["body"]) == [
        {"path": "/home/user/js/up/via-url.txt", "name": "via-url.txt", "type": "file"}
    ]
    assert result["content"] == "posted via url"
    assert result["raw"]["status"] == 200, result
    assert json.loads(result["raw"]["body"]) == [
        {"path": "/home/user/js/up/raw.bin", "name": "raw.bin", "type": "file"}
    ]
    assert result["rawSum"] == ALL_BYTES_SHA256
    assert result["expired"]["status"] == 401
    assert json.loads(result["expired"]["body"]) == EXPIRED
    assert result["expiredExists"] is False
    # A read signature does not allow a write.
    assert result["wrongOp"]["status"] == 401


# --- watchDir ----------------------------------------------------------------------------


def test_watch_starts_with_no_events(watch: ScriptRun) -> None:
    assert watch.value("watch_start") == []


def test_a_new_upload_gives_exactly_create_chmod_write(watch: ScriptRun) -> None:
    assert watch.value("upload_new_file") == [
        ["up.txt", "create"],
        ["up.txt", "chmod"],
        ["up.txt", "write"],
    ]
    # Several files in one multipart request: the same sequence per file, file by file.
    assert watch.value("upload_several") == [
        ["one.txt", "create"],
        ["one.txt", "chmod"],
        ["one.txt", "write"],
        ["two.txt", "create"],
        ["two.txt", "chmod"],
        ["two.txt", "write"],
    ]
    # An octet-stream upload (a ReadableStream) too.
    assert watch.value("upload_stream") == [
        ["streamed.txt", "create"],
        ["streamed.txt", "chmod"],
        ["streamed.txt", "write"],
    ]


def test_an_overwrite_gives_chmod_then_write(watch: ScriptRun) -> None:
    events = watch.value("upload_overwrite")
    assert events[0] == ["up.txt", "chmod"]
    assert events[1:] and all(e == ["up.txt", "write"] for e in events[1:]), events


def test_rename_and_remove(watch: ScriptRun) -> None:
    assert watch.value("rename") == [["up.txt", "rename"], ["moved.txt", "create"]]
    assert watch.value("remove") == [["moved.txt", "remove"]]


def test_a_plain_watch_does_not_see_inside_subdirectories(watch: ScriptRun) -> None:
    # MakeDir creates and chowns the directory; the file written inside it is not reported.
    assert watch.value("not_recursive") == [["sub", "create"], ["sub", "chmod"]]


def test_command_writes_are_seen(watch: ScriptRun) -> None:
    assert watch.value("command_writes") == [
        ["by-shell.txt", "create"],
        ["by-shell.txt", "write"],
        ["one.txt", "remove"],
    ]


def test_stop_ends_the_stream(watch: ScriptRun) -> None:
    stopped = watch.value("stop")
    assert stopped["newEventsOnStopped"] == 0
    assert stopped["witness"] == [
        ["after-stop.txt", "create"],
        ["after-stop.txt", "chmod"],
        ["after-stop.txt", "write"],
    ]
    assert stopped["exit"] is not None


def test_recursive_watch_sees_directories_created_later(watch: ScriptRun) -> None:
    result = watch.value("recursive")
    assert result["events"] == [
        ["existing/e.txt", "create"],
        ["existing/e.txt", "chmod"],
        ["existing/e.txt", "write"],
        ["later", "create"],
        ["later", "chmod"],
        ["later/f.txt", "create"],
        ["later/f.txt", "chmod"],
        ["later/f.txt", "write"],
        ["later/deeper", "create"],
        ["later/deeper", "chmod"],
        ["later/deeper/g.txt", "create"],
        ["later/deeper/g.txt", "chmod"],
        ["later/deeper/g.txt", "write"],
    ]
    # include_entry: the entry of the path named by the event.
    assert result["entries"] == {
        "dir": {"path": "/home/user/w/rec/later", "name": "later", "type": "dir"},
        "write": {
            "path": "/home/user/w/rec/later/f.txt",
            "name": "f.txt",
            "type": "file",
            "size": 2,
        },
    }


def test_events_carry_no_entry_unless_asked(watch: ScriptRun) -> None:
    flags = watch.value("without_entry")
    assert flags and all(flags), flags


def test_watch_errors_arrive_with_their_codes(watch: ScriptRun) -> None:
    # connect-es reads a streaming error's code from the end-stream envelope only; a non-200
    # answer would become "unimplemented"/"unknown" here (while Python would still parse it).
    errors = watch.value("errors")
    assert error_kind(errors["missing"]) == (False, "FileNotFoundError"), errors
    assert errors["missing"]["isNotFound"] is True
    assert error_kind(errors["file"]) == (False, "InvalidArgumentError"), errors
    assert error_kind(errors["unknownUser"]) == (False, "AuthenticationError"), errors


def test_a_killed_sandbox_ends_the_watch_with_an_error(watch: ScriptRun) -> None:
    result = watch.value("sandbox_killed")
    assert result["killed"] is True
    exit_ = result["exit"]
    assert exit_["clean"] is False, exit_
    assert exit_["name"] == "TimeoutError", exit_
    assert "killed or reached its end of life" in exit_["message"], exit_


# --- a full disk -------------------------------------------------------------------------


def test_an_upload_past_the_disk_is_not_enough_space(files: ScriptRun) -> None:
    result = files.value("no_space")
    for key, path in (("multipart", "big-multipart.bin"), ("stream", "big-stream.bin")):
        outcome = result[key]
        assert error_kind(outcome) == (False, "NotEnoughSpaceError"), outcome  # HTTP 507
        assert f"/home/user/{path}" in outcome["message"]
    # Space freed, the same upload goes through.
    assert result["after"]["path"] == "/home/user/after.bin"
