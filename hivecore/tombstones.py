"""Tombstones ("kept state"): agents whose state dir survives with no live container."""

from __future__ import annotations

import os
import time
from collections.abc import Container
from pathlib import Path

from hivecore.config import StatePaths
from hivecore.errors import InvalidName
from hivecore.models import TombstoneView
from hivecore.names import validate_name


def _size_and_mtime(root: Path) -> tuple[int, float]:
    total, newest = 0, root.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(dirpath, entry))
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            if entry in filenames:
                total += st.st_size
    return total, newest


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
        if entry not in live and (paths.agents / entry).is_dir() and not (paths.agents / entry).is_symlink():
            names.append(entry)
    return names


def build_tombstone_views(
    paths: StatePaths, live: Container[str], now: float | None = None
) -> list[TombstoneView]:
    now = time.time() if now is None else now
    views = []
    for name in tombstone_names(paths, live):
        size, mtime = _size_and_mtime(paths.agents / name)
        claude = paths.agents / name / "claude"
        kept = claude.is_dir() and any(claude.iterdir())
        views.append(
            TombstoneView(
                name=name, state_bytes=size, age_seconds=max(0, int(now - mtime)), claude_creds_kept=kept
            )
        )
    return views
