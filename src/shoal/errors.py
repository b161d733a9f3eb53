"""The one error hierarchy of Shoal.

Every layer raises these; each protocol edge maps them once (REST in
``shoal.api.errors``, Connect in ``shoal.envd.errors``, envd HTTP in
``shoal.envd.app``, the node protocol in ``shoal.agent.app``).

    ShoalError                       500  internal
    ├── InvalidArgument              400  invalid_argument
    ├── Unauthenticated              401  unauthenticated
    ├── Forbidden                    403  permission_denied
    ├── NotFound                     404  not_found
    │   └── SandboxNotFound          404
    ├── AlreadyExists                409  already_exists
    ├── InvalidStateTransition       409  failed_precondition
    ├── RateLimited                  429  resource_exhausted
    ├── CapacityExhausted            503  unavailable  (no node can take the sandbox)
    ├── SandboxGone                  502  unavailable  (the sandbox died or was killed)
    ├── NoSpace                      507  resource_exhausted
    ├── Timeout                      504  deadline_exceeded
    └── RuntimeFailure               500  internal     (the OCI runtime or the kernel said no)

``message`` is safe to show a client; the internal cause travels as ``__cause__``.
"""

from __future__ import annotations


class ShoalError(Exception):
    status: int = 500
    code: str = "internal"
    error_code: str | None = None

    def __init__(self, message: str = "", *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message or self.__class__.__name__
        if error_code is not None:
            self.error_code = error_code


class InvalidArgument(ShoalError):
    status, code = 400, "invalid_argument"


class Unauthenticated(ShoalError):
    status, code = 401, "unauthenticated"


class Forbidden(ShoalError):
    status, code = 403, "permission_denied"


class NotFound(ShoalError):
    status, code = 404, "not_found"


class SandboxNotFound(NotFound):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} not found")
        self.sandbox_id = sandbox_id


class AlreadyExists(ShoalError):
    status, code = 409, "already_exists"


class InvalidStateTransition(ShoalError):
    status, code = 409, "failed_precondition"


class RateLimited(ShoalError):
    status, code = 429, "resource_exhausted"


class CapacityExhausted(ShoalError):
    status, code = 503, "unavailable"
    error_code = "sandbox_capacity_unavailable"


class SandboxGone(ShoalError):
    status, code = 502, "unavailable"


class NoSpace(ShoalError):
    status, code = 507, "resource_exhausted"


class Timeout(ShoalError):
    status, code = 504, "deadline_exceeded"


class RuntimeFailure(ShoalError):
    status, code = 500, "internal"
    error_code = "sandbox_create_failed"
