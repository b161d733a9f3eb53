"""What one envd request carries from the HTTP edge into the Connect handlers.

The Connect runtime calls our handlers inside the same task that runs the ASGI app, so a
:class:`~contextvars.ContextVar` set by :mod:`shoal.envd.app` reaches them without threading
the sandbox through connectrpc's ``RequestContext``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from shoal.envd.sandbox import EnvdSandbox


@dataclass
class EnvdRequest:
    sandbox: EnvdSandbox
    aborted: bool = False
    """Set when the sandbox died under the request: nothing more may be sent, so the client
    sees an aborted response instead of a clean end."""
    disconnected: bool = False
    _on_disconnect: list[Callable[[], None]] = field(default_factory=list)

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the client goes away; returns a function that unregisters it."""
        if self.disconnected:
            callback()
            return lambda: None
        self._on_disconnect.append(callback)

        def remove() -> None:
            if callback in self._on_disconnect:
                self._on_disconnect.remove(callback)

        return remove

    def mark_disconnected(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        callbacks, self._on_disconnect = self._on_disconnect, []
        for callback in callbacks:
            callback()


current_request: ContextVar[EnvdRequest] = ContextVar("shoal_envd_request")


def abort_response() -> None:
    """Make the current response end without a clean terminator (the sandbox is gone)."""
    req = current_request.get(None)
    if req is not None:
        req.aborted = True
