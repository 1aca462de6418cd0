"""The error types every surface turns into a clear, user-facing message, and the one mapping from
an error to each surface's answer.

A :class:`HiveError`'s ``str()`` is exactly the text an operator sees (host.sock ``error``,
dashboard toast, hivectl stderr), so messages are written as whole sentences without a trailing dot.
Each class carries its HTTP status; :func:`answer_for` is the only place an exception becomes a
wire error line, an HTTP status and a hivectl exit code. This module imports nothing heavy (hivectl
reads its exit codes from here).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

EXIT_OK = 0
EXIT_REFUSED = 1
"""The daemon answered ``ok:false`` (any :class:`HiveError`, or an internal error), or bad usage."""
EXIT_UNREACHABLE = 2
"""The daemon could not be reached or did not answer."""


class HiveError(Exception):
    """Base class: the request was refused; nothing changed."""

    http_status: ClassVar[int] = 409


class BadInput(HiveError):
    """A missing or malformed field (a request record's check failed): 400."""

    http_status = 400


class InvalidName(BadInput):
    """A name that may reach a filesystem path failed validation."""


class UnknownAgent(HiveError):
    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f'agent "{name}" is not managed by this hive')
        self.name = name


class UnknownApproval(HiveError):
    http_status = 404

    def __init__(self, approval_id: int) -> None:
        super().__init__(f"no approval {approval_id}")
        self.approval_id = approval_id


class Refused(HiveError):
    """The operation is not allowed (e.g. destroying the manager)."""


class Busy(HiveError):
    """Another operation on the same agent is already in flight."""


class NotAvailable(HiveError):
    """The verb exists but its machinery has not been built yet."""


class RuntimeFailure(HiveError):
    """The container runtime could not do what was asked."""


class ErrorAnswer(NamedTuple):
    """How one failure is answered on every surface."""

    line: str
    """The ``error`` text (host.sock, agent sockets, dashboard JSON, hivectl stderr)."""
    http_status: int
    exit_code: int
    internal: bool
    """Not a :class:`HiveError`: a bug, to be logged with its traceback."""


def unwrap(exc: BaseException) -> BaseException:
    """The one real error inside nested single-exception groups (a nursery wraps what a task raised)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def answer_for(exc: BaseException, what: str) -> ErrorAnswer:
    """The answer to ``exc`` raised while doing ``what`` (a verb's name): a HiveError's own words
    with its class's status; anything else is ``internal error during <what>: <type>: <text>``, 500."""
    inner = unwrap(exc)
    if isinstance(inner, HiveError):
        return ErrorAnswer(str(inner), inner.http_status, EXIT_REFUSED, False)
    return ErrorAnswer(
        f"internal error during {what}: {type(inner).__name__}: {inner}", 500, EXIT_REFUSED, True
    )
