"""Tombstones ("kept state"): agents whose state dir survives with no live container."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Container
from pathlib import Path

from hivecore import agentfs
from hivecore.config import StatePaths
from hivecore.errors import InvalidName
from hivecore.models import TombstoneView
from hivecore.names import validate_name


def _size_and_mtime(root: Path, name: str) -> tuple[int, float]:
    """Size and newest mtime of ``root/<name>``: links not followed, the walk capped (a lower bound then)."""
    tree = agentfs.tree_size_and_mtime(root, name)
    return tree.bytes, tree.newest_mtime


def _claude_kept(paths: StatePaths, name: str) -> bool:
    """``agents/<n>/claude/`` is a real directory (not a link) with at least one entry."""
    try:
        with agentfs.opened_dir(paths.agents, name, "claude") as claude, os.scandir(claude) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def tombstone_names(paths: StatePaths, live: Container[str]) -> list[str]:
    try:
        entries = sorted(os.listdir(paths.agents))
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        try:
            validate_name(entry)
        except InvalidName:
            continue
        try:
            mode = os.lstat(paths.agents / entry).st_mode
        except OSError:
            continue
        if entry not in live and stat.S_ISDIR(mode):
            names.append(entry)
    return names


def build_tombstone_views(
    paths: StatePaths, live: Container[str], now: float | None = None
) -> list[TombstoneView]:
    now = time.time() if now is None else now
    views = []
    for name in tombstone_names(paths, live):
        try:
            size, mtime = _size_and_mtime(paths.agents, name)
        except OSError:
            continue  # removed (or replaced by a link) since it was listed
        views.append(
            TombstoneView(
                name=name,
                state_bytes=size,
                age_seconds=max(0, int(now - mtime)),
                claude_creds_kept=_claude_kept(paths, name),
            )
        )
    return views
