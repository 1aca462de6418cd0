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
MAX_AGENT_NAME = 9
CONTAINER_PREFIX = "h-"
"""Sub-agent containers are ``h-<name>``."""

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,8}")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`InvalidName`.

    Valid: a lowercase letter, then up to 8 of ``a-z 0-9 -`` (nixos-container caps container names
    at 11 characters and sub-agents are ``h-<name>``). This excludes ``.``, ``..``, slashes, NUL and
    anything else that could escape a directory. Names starting ``h-`` are refused: their container
    would be ``h-h-…``, which reads back as another agent's name.
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
    return name


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
