"""The error types every surface turns into a clear, user-facing message.

A :class:`HiveError`'s ``str()`` is exactly the text an operator sees (host.sock ``error``,
dashboard toast, hivectl stderr), so messages are written as whole sentences without a trailing dot.
"""

from __future__ import annotations


class HiveError(Exception):
    """Base class: the request was refused; nothing changed."""


class InvalidName(HiveError):
    """A name that may reach a filesystem path failed validation."""


class UnknownAgent(HiveError):
    def __init__(self, name: str) -> None:
        super().__init__(f'agent "{name}" is not managed by this hive')
        self.name = name


class Refused(HiveError):
    """The operation is not allowed (e.g. destroying the manager)."""


class Busy(HiveError):
    """Another operation on the same agent is already in flight."""


class NotAvailable(HiveError):
    """The verb exists but its machinery has not been built yet."""


class RuntimeFailure(HiveError):
    """The container runtime could not do what was asked."""
