"""The async SDK (``AsyncSandbox``): the same server seen through the other client tree.

A representative subset of the sync tests — the async SDK is a separate hand-kept copy
upstream, with its own streaming code (e2b-compat §6.1: sync and async mirror each other).
"""

from __future__ import annotations

import asyncio

import pytest
from compat_helpers import unique
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)


async def list_all(query: SandboxQuery, **kwargs) -> list:  # type: ignore[no-untyped-def]
    paginator = AsyncSandbox.list(query=query, **kwargs)
    items = []
    while paginator.has_next:
        items.extend(await paginator.next_items())
    return items


async def test_create_run_info_kill(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory(timeout=120, envs={"ASYNC": "yes"})
    result = await sbx.commands.run('echo "$ASYNC $E2B_SANDBOX_ID"; id -un')
    assert result.stdout == f"yes {sbx.sandbox_id}\nuser\n"

    info = await sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.state == SandboxState.RUNNING
    assert info.envd_version == "0.6.13"
    assert abs((info.end_at - info.started_at).total_seconds() - 120) < 5

    assert await sbx.is_running() is True
    assert await sbx.kill() is True
    assert await sbx.kill() is False
    assert await sbx.is_running() is False
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.get_info(sbx.sandbox_id)


async def test_exit_codes_and_users(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    with pytest.raises(CommandExitException) as exc_info:
        await sbx.commands.run("echo o; echo e >&2; exit 5")
    assert (exc_info.value.exit_code, exc_info.value.stdout, exc_info.value.stderr) == (
        5,
        "o\n",
        "e\n",
    )
    assert (await sbx.commands.run("id -un", user="root")).stdout == "root\n"
    with pytest.raises(AuthenticationException):
        await sbx.commands.run("id", user="ghost")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentException):
        await sbx.commands.run("pwd", cwd="/nope/nope")
    with pytest.raises(TimeoutException):
        await sbx.commands.run("sleep 30", timeout=1)


async def test_streaming_callbacks(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    """The command waits for the test to react to its first line (no buffering)."""
    sbx = await async_sandbox_factory()
    flag = f"/tmp/{unique('go')}"
    seen: list[str] = []
    reacted = asyncio.Event()

    async def on_stdout(chunk: str) -> None:
        seen.append(chunk)
        if "first" in chunk and not reacted.is_set():
            reacted.set()
            await sbx.commands.run(f"touch {flag}")

    result = await sbx.commands.run(
        f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo second",
        on_stdout=on_stdout,
        timeout=20,
    )
    assert result.stdout == "first\nsecond\n"
    assert seen[0] == "first\n"


async def test_background_stdin_list_and_kill(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    out: list[str] = []
    got = asyncio.Event()

    def on_stdout(chunk: str) -> None:
        out.append(chunk)
        got.set()

    cat = await sbx.commands.run("cat", background=True, stdin=True, on_stdout=on_stdout)
    await sbx.commands.send_stdin(cat.pid, "ping\n")
    await asyncio.wait_for(got.wait(), 15)
    assert out == ["ping\n"]
    await cat.close_stdin()
    result = await cat.wait()
    assert result.stdout == "ping\n"

    sleeper = await sbx.commands.run("sleep 120", background=True)
    listed = await sbx.commands.list()
    assert sleeper.pid in {p.pid for p in listed}
    assert await sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as exc_info:
        await sleeper.wait()
    assert exc_info.value.exit_code == -1
    assert await sbx.commands.kill(sleeper.pid) is False

    with pytest.raises(NotFoundException):
        await sbx.commands.connect(999_999)


async def test_connect_reattaches(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    flag = f"/tmp/{unique('flag')}"
    handle = await sbx.commands.run(
        f"while [ ! -e {flag} ]; do sleep 0.05; done; echo after", background=True
    )
    await handle.disconnect()
    again = await sbx.commands.connect(handle.pid)
    await sbx.commands.run(f"touch {flag}")
    assert (await again.wait()).stdout == "after\n"


async def test_pty(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    data = bytearray()
    tag = unique("t").replace("-", "")

    handle = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=data.extend)
    await sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    await sbx.pty.send_stdin(
        handle.pid, f"echo {tag[:3]}''{tag[3:]}:$(tput cols):$TERM:{tag[:3]}''{tag[3:]}\n".encode()
    )
    for _ in range(300):
        if f"{tag}:100:xterm-256color:{tag}" in data.decode(errors="replace"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no tput answer in {bytes(data)!r}")
    assert await sbx.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exc_info:
        await handle.wait()
    assert exc_info.value.exit_code == -1


async def test_list_and_connect(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    tag = unique("alist")
    a = await async_sandbox_factory(metadata={"tag": tag, "k & v": "x = y"}, timeout=60)
    b = await async_sandbox_factory(metadata={"tag": tag})

    both = await list_all(SandboxQuery(metadata={"tag": tag}), order="asc")
    assert [s.sandbox_id for s in both] == [a.sandbox_id, b.sandbox_id]
    one = await list_all(SandboxQuery(metadata={"k & v": "x = y"}))
    assert [s.sandbox_id for s in one] == [a.sandbox_id]

    paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
    first = await paginator.next_items()
    assert paginator.has_next
    second = await paginator.next_items()
    assert not paginator.has_next
    assert {first[0].sandbox_id, second[0].sandbox_id} == {a.sandbox_id, b.sandbox_id}

    same = await AsyncSandbox.connect(a.sandbox_id, timeout=900)
    info = await same.get_info()
    assert (info.end_at - info.started_at).total_seconds() > 800
    assert (await same.commands.run("echo hi")).stdout == "hi\n"

    await b.set_timeout(0)
    for _ in range(200):
        if not await b.is_running():
            break
        await asyncio.sleep(0.05)
    assert await b.is_running() is False


async def test_kill_mid_stream_raises(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    sbx = await async_sandbox_factory()
    started = asyncio.Event()
    run = asyncio.create_task(
        sbx.commands.run("echo up; sleep 60", on_stdout=lambda _: started.set(), timeout=90)
    )
    await asyncio.wait_for(started.wait(), 15)
    assert await AsyncSandbox.kill(sbx.sandbox_id) is True
    with pytest.raises(SandboxNotRunningException, match="killed"):
        await asyncio.wait_for(run, 30)
