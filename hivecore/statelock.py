"""One daemon per state dir: an exclusive ``flock`` on ``<state>/run/hive-c0re.lock``."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hivecore.errors import HiveError


class AlreadyServing(HiveError):
    pass


@contextmanager
def hold_state_lock(lock_file: Path) -> Iterator[None]:
    """Hold the lock for the block; raise :class:`AlreadyServing` (naming the holder) if taken.

    The kernel drops a ``flock`` when its holder dies, so a crashed daemon never leaves it stuck.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AlreadyServing(
                f"another hive-c0re (pid {holder}) is already serving {lock_file.parent.parent}; "
                "stop it first or use a different --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
