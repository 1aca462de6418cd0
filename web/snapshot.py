"""Presentation helpers of the ``/api/state`` snapshot: how messages are shown, and the server
warnings (the raised alarms, :mod:`actors.alarms`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hivecore import alarms
from hivecore.store import MessageRow

MAX_BODY_SHOWN = 16 * 1024
"""A message body is cut to this many characters in the snapshot (the event carries it whole)."""
WARN_AT = 0.85
CRIT_AT = 0.95


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
    """One ``{kind, level, message}`` per filesystem (by device) at or past ``warn_at`` used
    (blocking; the alarms actor raises the same alarms: :mod:`hivecore.alarms`)."""
    disks = alarms.distinct_disks([(label, str(path)) for label, path in paths])
    raised = alarms.evaluate(
        alarms.Observation(now=0.0, disks=disks), alarms.Thresholds(disk_warn=warn_at, disk_crit=crit_at)
    )
    return [{"kind": a.kind, "level": a.level, "message": a.message} for a in raised.values()]


def server_warnings(raised: Iterable[alarms.Alarm]) -> list[dict[str, Any]]:
    """The warnings strip: every raised alarm as ``{key, kind, level, message, agent, since}``."""
    return [
        {
            "key": a.key,
            "kind": a.kind,
            "level": a.level,
            "message": a.message,
            "agent": a.agent,
            "since": a.since,
        }
        for a in raised
    ]
