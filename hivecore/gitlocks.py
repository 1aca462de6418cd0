"""Stale git lock files in a daemon-owned repository (applied repos, the meta flake, the base flake).

Git takes ``<file>.lock`` (``index.lock``, ``HEAD.lock``, ``packed-refs.lock``, ``refs/heads/main.lock``
…) for the length of one command; a crash or a power cut mid-command leaves it behind, and every
later git command that needs that file fails (``Unable to create '…/index.lock': File exists``).
hive-c0re is the only writer of these repositories, so at start-up, before anything runs git in
them, every such lock is stale: :func:`clear_stale_locks` removes them.

Blocking (a directory walk): call it in a worker thread. Never call it while git may be running in
the repository.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
_TOP_LEVEL = ("refs", "logs")
"""The ``.git`` subdirectories whose ref files git locks (``refs/heads/main.lock``, the reflogs)."""


def stale_locks(git_dir: Path) -> list[Path]:
    """The lock files git would leave in ``git_dir`` (a ``.git`` directory): ``*.lock`` directly in
    it and anywhere under ``refs/`` and ``logs/``. Symlinks are neither followed nor listed."""
    try:
        entries = list(os.scandir(git_dir))
    except OSError:
        return []
    found = [
        Path(e.path) for e in entries if e.name.endswith(LOCK_SUFFIX) and e.is_file(follow_symlinks=False)
    ]
    for sub in _TOP_LEVEL:
        top = git_dir / sub
        try:
            if not stat.S_ISDIR(os.lstat(top).st_mode):
                continue
        except OSError:
            continue
        for root, dirs, files in os.walk(top, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for fname in files:
                path = Path(root, fname)
                if fname.endswith(LOCK_SUFFIX) and not path.is_symlink():
                    found.append(path)
    return sorted(found)


def clear_stale_locks(repo: Path, what: str) -> list[Path]:
    """Remove every stale lock file of the work tree ``repo`` (its ``.git`` must be a real
    directory; anything else is left alone); the removed paths. ``what`` names the repository in
    the warning logged for each removal."""
    git_dir = repo / ".git"
    try:
        if not stat.S_ISDIR(os.lstat(git_dir).st_mode):
            return []
    except OSError:
        return []
    removed = []
    for lock in stale_locks(git_dir):
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        removed.append(lock)
        log.warning("%s: removed a stale %s (a previous run died mid-operation)", what, lock)
    return removed
