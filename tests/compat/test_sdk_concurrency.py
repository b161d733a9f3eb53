"""Many sandboxes at once through the async SDK: each is its own machine."""

from __future__ import annotations

import asyncio

from compat_helpers import unique
from e2b import AsyncSandbox, SandboxQuery

COUNT = 20


async def test_concurrent_sandboxes_are_separate(async_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    tag = unique("burst")
    sandboxes: list[AsyncSandbox] = await asyncio.gather(
        *(async_sandbox_factory(metadata={"tag": tag, "n": str(i)}) for i in range(COUNT))
    )
    ids = [s.sandbox_id for s in sandboxes]
    assert len(set(ids)) == COUNT

    async def identity(sbx: AsyncSandbox, n: int) -> list[str]:
        result = await sbx.commands.run(
            f'echo "$E2B_SANDBOX_ID"; hostname; echo {n} > /home/user/mine; ls /home/user'
        )
        return result.stdout.splitlines()

    seen = await asyncio.gather(*(identity(s, i) for i, s in enumerate(sandboxes)))
    for sbx, lines in zip(sandboxes, seen, strict=True):
        assert lines[0] == sbx.sandbox_id
        assert lines[1] == sbx.sandbox_id
        assert "mine" in lines[2:]

    # Each sandbox sees only the file it wrote itself.
    contents = await asyncio.gather(
        *(s.commands.run("cat /home/user/mine; ls /tmp") for s in sandboxes)
    )
    assert [c.stdout.splitlines()[0] for c in contents] == [str(i) for i in range(COUNT)]

    # A file created in one is absent in every other.
    marker = f"/tmp/{unique('only-here')}"
    await sandboxes[0].commands.run(f"touch {marker}")
    absent = await asyncio.gather(
        *(s.commands.run(f"test -e {marker} && echo present || echo absent") for s in sandboxes)
    )
    assert [a.stdout for a in absent] == ["present\n"] + ["absent\n"] * (COUNT - 1)

    # Processes are per sandbox too: each lists only its own.
    sleepers = await asyncio.gather(
        *(s.commands.run(f"sleep 300 # {s.sandbox_id}", background=True) for s in sandboxes)
    )
    listings = await asyncio.gather(*(s.commands.list() for s in sandboxes))
    for sbx, handle, procs in zip(sandboxes, sleepers, listings, strict=True):
        assert [p.pid for p in procs] == [handle.pid]
        assert sbx.sandbox_id in procs[0].args[-1]
    ps = await sandboxes[1].commands.run("ps -eo args")
    assert sandboxes[0].sandbox_id not in ps.stdout

    paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}))
    listed = []
    while paginator.has_next:
        listed.extend(await paginator.next_items())
    assert {s.sandbox_id for s in listed} == set(ids)

    killed = await asyncio.gather(*(s.kill() for s in sandboxes))
    assert killed == [True] * COUNT
    running = await asyncio.gather(*(s.is_running() for s in sandboxes))
    assert running == [False] * COUNT
