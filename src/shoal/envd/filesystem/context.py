"""The sandbox and run-as user of the current filesystem request."""

from __future__ import annotations

from dataclasses import dataclass

from connectrpc.request import RequestContext

from shoal.envd.auth import resolve_user
from shoal.envd.paths import resolve
from shoal.envd.request import current_request
from shoal.envd.sandbox import EnvdSandbox, User


@dataclass(frozen=True)
class FsCall:
    sandbox: EnvdSandbox
    user: User

    def path(self, raw: str) -> str:
        """``raw`` resolved as envd does (``~``, relative to home, empty = workdir)."""
        return resolve(raw, home=self.user.home, workdir=self.sandbox.default_workdir)


def fs_call(ctx: RequestContext) -> FsCall:
    sandbox = current_request.get().sandbox
    return FsCall(sandbox, resolve_user(sandbox, ctx.request_headers.get("authorization")))
