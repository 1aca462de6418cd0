"""Agent names: the one validator every name passes before it reaches a path."""

from __future__ import annotations

import re
from pathlib import Path

from hivecore.errors import InvalidName

MANAGER_NAME = "hm1nd"
"""The manager's logical and container name."""
MANAGER_AGENT = "manager"
"""The manager's broker recipient name."""
SYSTEM_SENDER = "system"
"""The sender of helper events to the manager and kicks to agents."""
OPERATOR_NAME = "operator"
"""The operator's inbox and sender name on the broker."""
REMINDER_SENDER = "reminder"
"""The sender of reminders (a word of the reference's broker)."""
RESERVED_NAMES = frozenset({SYSTEM_SENDER, OPERATOR_NAME, MANAGER_AGENT, MANAGER_NAME, REMINDER_SENDER})
"""Every sender or recipient word the daemon itself uses: none of them may name an agent (an agent
called ``system`` would forge helper events, one called ``operator`` would read the operator's
inbox). ``hm1nd`` is the one exception :func:`validate_name` lets through: it is the manager's own
name (its paths, its container); spawn and request_spawn refuse it on their own ("hive-c0re creates
it itself"). A new word the daemon starts using goes here, nowhere else."""
MAX_AGENT_NAME = 9
CONTAINER_PREFIX = "h-"
"""Sub-agent containers are ``h-<name>``."""

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,8}")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`InvalidName`.

    Valid: a lowercase letter, then up to 8 of ``a-z 0-9 -`` (nixos-container caps container names
    at 11 characters and sub-agents are ``h-<name>``). This excludes ``.``, ``..``, slashes, NUL and
    anything else that could escape a directory. Names starting ``h-`` are refused: their container
    would be ``h-h-…``, which reads back as another agent's name. The words of
    :data:`RESERVED_NAMES` other than the manager's own ``hm1nd`` are refused: they are identities.
    """
    if not isinstance(name, str):
        raise InvalidName(f"agent name must be a string, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise InvalidName(
            f"invalid agent name {shown!r}: use 1-{MAX_AGENT_NAME} characters, a lowercase letter "
            "followed by lowercase letters, digits or '-'"
        )
    if name.startswith(CONTAINER_PREFIX):
        raise InvalidName(
            f"invalid agent name {name!r}: it must not start with {CONTAINER_PREFIX!r} (the container "
            f"would be {CONTAINER_PREFIX + name!r}); drop the prefix"
        )
    if name in RESERVED_NAMES and name != MANAGER_NAME:
        raise InvalidName(_reserved(name))
    return name


def _reserved(name: str) -> str:
    words = ", ".join(sorted(RESERVED_NAMES))
    return f"invalid agent name {name!r}: it is reserved for the daemon's own identities ({words})"


def is_manager(name: str) -> bool:
    return name in (MANAGER_NAME, MANAGER_AGENT)


def child_path(root: Path, name: str) -> Path:
    """``root/<name>`` for a validated name, refusing anything that resolves outside ``root``.

    Resolution follows symlinks, so a symlink planted at ``root/<name>`` that points elsewhere is
    refused rather than followed.
    """
    validate_name(name)
    candidate = root / name
    resolved_root = root.resolve()
    resolved = candidate.resolve()
    if resolved.parent != resolved_root or candidate.is_symlink():
        raise InvalidName(f"refusing {candidate}: it resolves outside {resolved_root}")
    return candidate
