"""The reminders table (store migration 10): synchronous functions run on the store thread
(:meth:`hivecore.store.Store.call`). Records and rules: :mod:`hivecore.reminders`.

A reminder is bound to its caller's incarnation (:func:`hivecore.store.live_incarnation`; the
manager's to none): once that incarnation ended (a purge), :func:`take_due` reports it ``dead``
and the scheduler drops it, and :func:`pending_counts` and the listings no longer count it.
"""

from __future__ import annotations

import sqlite3

import attrs

from hivecore import reminders as rm
from hivecore import store as st
from hivecore.names import MANAGER_NAME
from hivecore.store import QuotaExceeded, transaction

_COLUMNS = (
    "id, agent, message, file_path, due_at, created_at, sent_at, attempt_count, last_error, status, "
    "fire_at, incarnation"
)
_BOUND = (
    "(reminders.agent = ? OR coalesce(reminders.incarnation = (SELECT i.id FROM incarnations i "
    "WHERE i.agent = reminders.agent AND i.ended_at IS NULL), 0))"
)
"""A row whose caller is still the same: the manager's (bound to none), or the live incarnation's
(0 or 1, never NULL: ``NOT`` of it must select the orphans)."""


@attrs.frozen
class Due:
    """A reminder whose time has come (``dead``: its incarnation ended; drop it, deliver nothing)."""

    reminder: rm.Reminder
    dead: bool


def _row(r: sqlite3.Row, *, preview: bool = False) -> rm.Reminder:
    text: str = r["message"]
    return rm.Reminder(
        id=r["id"],
        agent=r["agent"],
        message=text[: rm.PREVIEW] if preview else text,
        size=len(text.encode("utf-8", "surrogatepass")),
        file_path=r["file_path"],
        due_at=r["due_at"],
        created_at=r["created_at"],
        status=r["status"],
        attempt_count=r["attempt_count"],
        last_error=r["last_error"],
        next_attempt_at=r["fire_at"] if r["status"] == "pending" else None,
        sent_at=r["sent_at"],
    )


def insert(
    conn: sqlite3.Connection,
    agent: str,
    message: str,
    file_path: str | None,
    due_at: float,
    now: float,
    quota: int = rm.MAX_PENDING_PER_AGENT,
) -> rm.Reminder:
    """A new pending reminder of ``agent``, bound to its live incarnation; :class:`QuotaExceeded`
    (nothing written) when ``agent`` already has ``quota`` pending ones. One transaction."""
    with transaction(conn):
        (count,) = conn.execute(
            f"SELECT count(*) FROM reminders WHERE agent=? AND status='pending' AND {_BOUND}",
            (agent, MANAGER_NAME),
        ).fetchone()
        if count >= quota:
            raise QuotaExceeded(
                f"pending-reminder quota: {agent} has {count} reminders waiting; the quota is {quota} "
                "per agent; wait until some are delivered (or ask the operator to cancel some)"
            )
        incarnation = None if agent == MANAGER_NAME else st.live_incarnation(conn, agent)
        cur = conn.execute(
            "INSERT INTO reminders(agent, message, file_path, due_at, created_at, fire_at, incarnation) "
            "VALUES (?,?,?,?,?,?,?)",
            (agent, message, file_path, due_at, now, due_at, incarnation),
        )
        assert cur.lastrowid is not None
        row = conn.execute(f"SELECT {_COLUMNS} FROM reminders WHERE id=?", (cur.lastrowid,)).fetchone()
    return _row(row)


def next_fire(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending reminder is to be tried (Unix seconds), if any."""
    row = conn.execute("SELECT min(fire_at) FROM reminders WHERE status='pending'").fetchone()
    return None if row[0] is None else float(row[0])


def take_due(conn: sqlite3.Connection, now: float, limit: int = 100) -> list[Due]:
    """Up to ``limit`` pending reminders to try at ``now``, earliest first (nothing is marked)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS}, {_BOUND} AS live FROM reminders WHERE status='pending' AND fire_at <= ? "
        "ORDER BY fire_at, id LIMIT ?",
        (MANAGER_NAME, now, limit),
    ).fetchall()
    return [Due(_row(r), dead=not r["live"]) for r in rows]


def mark_sent(conn: sqlite3.Connection, reminder_id: int, now: float) -> None:
    conn.execute(
        "UPDATE reminders SET status='sent', sent_at=?, attempt_count=attempt_count+1, last_error=NULL "
        "WHERE id=?",
        (now, reminder_id),
    )


def mark_failed(
    conn: sqlite3.Connection, reminder_id: int, error: str, retry_at: float | None
) -> rm.Reminder | None:
    """One delivery failed: count it, keep ``error``; retry at ``retry_at`` (``None``: give up, the
    row is ``failed``). The updated row; ``None`` when it is gone (cancelled during the delivery)."""
    conn.execute(
        "UPDATE reminders SET attempt_count=attempt_count+1, last_error=?, "
        "status=CASE WHEN ? IS NULL THEN 'failed' ELSE status END, fire_at=coalesce(?, fire_at) "
        "WHERE id=?",
        (error[:1000], retry_at, retry_at, reminder_id),
    )
    row = conn.execute(f"SELECT {_COLUMNS} FROM reminders WHERE id=?", (reminder_id,)).fetchone()
    return None if row is None else _row(row)


def delete(conn: sqlite3.Connection, reminder_id: int) -> rm.Reminder | None:
    """Delete a *pending* reminder (cancelled, or dropped with its incarnation); the row, or None
    when there is no pending one of that id."""
    with transaction(conn):
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM reminders WHERE id=? AND status='pending'", (reminder_id,)
        ).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM reminders WHERE id=?", (reminder_id,))
    return _row(row, preview=True)


def listed(
    conn: sqlite3.Connection, agent: str | None = None, *, done: bool = False, limit: int = 1000
) -> list[rm.Reminder]:
    """Pending reminders of live callers (``agent``'s only, when given), earliest due first; with
    ``done``, also the sent and failed ones still kept. Messages cut to
    :data:`~hivecore.reminders.PREVIEW`."""
    where = [_BOUND]
    args: list[object] = [MANAGER_NAME]
    if not done:
        where.append("status='pending'")
    if agent is not None:
        where.append("agent=?")
        args.append(agent)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM reminders WHERE {' AND '.join(where)} ORDER BY due_at, id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_row(r, preview=True) for r in rows]


def pending_counts(conn: sqlite3.Connection, names: list[str] | None = None) -> dict[str, int]:
    """Pending reminders per agent (of its live incarnation; the manager's as ``hm1nd``)."""
    counts = {
        r[0]: r[1]
        for r in conn.execute(
            f"SELECT agent, count(*) FROM reminders WHERE status='pending' AND {_BOUND} GROUP BY agent",
            (MANAGER_NAME,),
        )
    }
    return counts if names is None else {n: counts.get(n, 0) for n in names}


def loose_ends(conn: sqlite3.Connection, agent: str, now: float) -> rm.LooseReminders:
    """``agent``'s undelivered reminders, due and still to come (for ``get_loose_ends``)."""
    return rm.split_due(listed(conn, agent), now)


def vacuum(conn: sqlite3.Connection, cutoff: float) -> int:
    """Delete sent and failed rows due before ``cutoff``; how many."""
    return conn.execute("DELETE FROM reminders WHERE status != 'pending' AND due_at < ?", (cutoff,)).rowcount


def orphans(conn: sqlite3.Connection, limit: int = 1000) -> list[rm.Reminder]:
    """Pending reminders whose caller's incarnation ended (a purge), oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM reminders WHERE status='pending' AND NOT {_BOUND} ORDER BY id LIMIT ?",
        (MANAGER_NAME, limit),
    ).fetchall()
    return [_row(r, preview=True) for r in rows]
