"""Presentation helpers of the ``/api/state`` snapshot: how messages are shown, and the server
warnings (disk use of the state dir's and the nix store's filesystems)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hivecore.store import MessageRow

MAX_BODY_SHOWN = 16 * 1024
"""A message body is cut to this many characters in the snapshot (the event carries it whole)."""
WARN_AT = 0.85
CRIT_AT = 0.95
NIX_STORE = Path("/nix/store")


def message_dicts(rows: Iterable[MessageRow]) -> list[dict[str, Any]]:
    """Broker rows as the snapshot shows them (``from``/``to``/``at``/``delivered``, bodies cut)."""
    return [
        {
            "id": r[0],
            "from": r[1],
            "to": r[2],
            "body": r[3][:MAX_BODY_SHOWN],
            "at": r[4],
            "delivered": r[5] is not None,
        }
        for r in rows
    ]


def disk_warnings(
    paths: Iterable[tuple[str, Path]], *, warn_at: float = WARN_AT, crit_at: float = CRIT_AT
) -> list[dict[str, str]]:
    """One ``{kind, level, message}`` per filesystem (by device) at or past ``warn_at`` used."""
    out: list[dict[str, str]] = []
    seen: set[int] = set()
    for label, path in paths:
        try:
            dev = os.stat(path).st_dev
            vfs = os.statvfs(path)
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        used = vfs.f_blocks - vfs.f_bfree
        usable = used + vfs.f_bavail
        if usable <= 0:
            continue
        fraction = used / usable
        if fraction < warn_at:
            continue
        level = "crit" if fraction >= crit_at else "warn"
        free_gib = vfs.f_bavail * vfs.f_frsize / 2**30
        out.append(
            {
                "kind": "disk",
                "level": level,
                "message": f"{label} ({path}) is {fraction:.0%} full; {free_gib:.1f} GiB free",
            }
        )
    return out


def server_warnings(state_dir: Path) -> list[dict[str, str]]:
    """The warnings strip (blocking: run it in a thread)."""
    return disk_warnings([("state dir", state_dir), ("nix store", NIX_STORE)])
