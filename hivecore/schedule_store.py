"""The scheduled-prompt tables (store migration 13): synchronous functions run on the store thread
(:meth:`hivecore.store.Store.call`). Records and rules: :mod:`hivecore.schedules`."""

from __future__ import annotations

import sqlite3

from hivecore import schedules as sc
from hivecore.errors import Refused
from hivecore.store import QuotaExceeded, transaction

_COLUMNS = (
    "id, owner, body, interval_seconds, next_fire_at, created_at, source, cancelled_at, description, state"
)


def _targets(conn: sqlite3.Connection, schedule_id: int) -> list[sc.ScheduleTarget]:
    return [
        sc.ScheduleTarget(
            target=r["target"],
            cancelled_at=r["cancelled_at"],
            last_fired_at=r["last_fired_at"],
            last_result=r["last_result"],
            fired=r["fired"],
        )
        for r in conn.execute(
            "SELECT target, cancelled_at, last_fired_at, last_result, fired FROM scheduled_prompt_targets "
            "WHERE schedule_id=? ORDER BY rowid",
            (schedule_id,),
        )
    ]


def _schedule(conn: sqlite3.Connection, r: sqlite3.Row) -> sc.Schedule:
    return sc.Schedule(
        id=r["id"],
        owner=r["owner"],
        body=r["body"],
        interval_seconds=r["interval_seconds"],
        next_fire_at=r["next_fire_at"],
        created_at=r["created_at"],
        source=r["source"],
        state=r["state"],
        cancelled_at=r["cancelled_at"],
        description=r["description"],
        targets=_targets(conn, r["id"]),
    )


def get(conn: sqlite3.Connection, schedule_id: int) -> sc.Schedule | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM scheduled_prompts WHERE id=?", (schedule_id,)).fetchone()
    return None if row is None else _schedule(conn, row)


def insert(
    conn: sqlite3.Connection,
    *,
    owner: str,
    body: str,
    targets: list[str],
    interval: int | None,
    first_fire: float,
    now: float,
    description: str | None = None,
    state: sc.State = "active",
    source: str = "operator",
    quota: int = sc.MAX_ACTIVE,
) -> sc.Schedule:
    """A new schedule (``requested``: waiting for an approval); :class:`QuotaExceeded` past
    ``quota`` active and requested ones. One transaction."""
    with transaction(conn):
        (count,) = conn.execute(
            "SELECT count(*) FROM scheduled_prompts WHERE state IN ('active', 'requested')"
        ).fetchone()
        if count >= quota:
            raise QuotaExceeded(
                f"schedule quota: {count} schedules are active or waiting for approval; the limit is "
                f"{quota}; cancel some first (hivectl unschedule ID)"
            )
        cur = conn.execute(
            "INSERT INTO scheduled_prompts(owner, body, interval_seconds, next_fire_at, created_at, source, "
            "description, state) VALUES (?,?,?,?,?,?,?,?)",
            (owner, body, interval, first_fire, now, source, description, state),
        )
        assert cur.lastrowid is not None
        conn.executemany(
            "INSERT INTO scheduled_prompt_targets(schedule_id, target) VALUES (?, ?)",
            [(cur.lastrowid, t) for t in targets],
        )
        found = get(conn, cur.lastrowid)
    assert found is not None
    return found


def set_source(conn: sqlite3.Connection, schedule_id: int, source: str) -> None:
    conn.execute("UPDATE scheduled_prompts SET source=? WHERE id=?", (source, schedule_id))


def listed(conn: sqlite3.Connection, *, done: bool = False, limit: int = 1000) -> list[sc.Schedule]:
    """Active and requested schedules, soonest first (``done``: also finished and cancelled ones)."""
    where = "" if done else "WHERE state IN ('active', 'requested')"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM scheduled_prompts {where} ORDER BY coalesce(next_fire_at, 1e18), id LIMIT ?",
        (limit,),
    ).fetchall()
    return [_schedule(conn, r) for r in rows]


def next_fire(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT min(next_fire_at) FROM scheduled_prompts WHERE state='active'").fetchone()
    return None if row[0] is None else float(row[0])


def due(conn: sqlite3.Connection, now: float, limit: int = 100) -> list[sc.Schedule]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM scheduled_prompts WHERE state='active' AND next_fire_at <= ? "
        "ORDER BY next_fire_at, id LIMIT ?",
        (now, limit),
    ).fetchall()
    return [_schedule(conn, r) for r in rows]


def record(
    conn: sqlite3.Connection, schedule_id: int, results: dict[str, str], fired_at: float, nxt: float | None
) -> sc.Schedule:
    """One firing's results per target, and the next firing (``None``: the one-shot is done)."""
    with transaction(conn):
        conn.executemany(
            "UPDATE scheduled_prompt_targets SET last_fired_at=?, last_result=?, fired=fired+1 "
            "WHERE schedule_id=? AND target=?",
            [(fired_at, result[:1000], schedule_id, target) for target, result in results.items()],
        )
        conn.execute(
            "UPDATE scheduled_prompts SET next_fire_at=?, "
            "state=CASE WHEN ? IS NULL THEN 'done' ELSE state END WHERE id=? AND state='active'",
            (nxt, nxt, schedule_id),
        )
        found = get(conn, schedule_id)
    assert found is not None
    return found


def cancel(conn: sqlite3.Connection, schedule_id: int, target: str | None, now: float) -> sc.Schedule:
    """Cancel a schedule (every target), or one target of it (the schedule ends with its last
    target). :class:`~hivecore.schedules.UnknownSchedule` for no such schedule (or target of it),
    :class:`~hivecore.errors.Refused` for one that is already over."""
    with transaction(conn):
        s = get(conn, schedule_id)
        if s is None:
            raise sc.UnknownSchedule(schedule_id)
        if s.state not in ("active", "requested"):
            raise Refused(f"schedule {schedule_id} is already {s.state}")
        if target is not None:
            if target not in {t.target for t in s.targets}:
                raise sc.UnknownSchedule(schedule_id, f" targeting {target}")
            conn.execute(
                "UPDATE scheduled_prompt_targets SET cancelled_at=coalesce(cancelled_at, ?) "
                "WHERE schedule_id=? AND target=?",
                (now, schedule_id, target),
            )
            (left,) = conn.execute(
                "SELECT count(*) FROM scheduled_prompt_targets WHERE schedule_id=? AND cancelled_at IS NULL",
                (schedule_id,),
            ).fetchone()
            if left:
                found = get(conn, schedule_id)
                assert found is not None
                return found
        conn.execute(
            "UPDATE scheduled_prompts SET state='cancelled', cancelled_at=?, next_fire_at=NULL WHERE id=?",
            (now, schedule_id),
        )
        conn.execute(
            "UPDATE scheduled_prompt_targets SET cancelled_at=coalesce(cancelled_at, ?) WHERE schedule_id=?",
            (now, schedule_id),
        )
        found = get(conn, schedule_id)
    assert found is not None
    return found


def activate(conn: sqlite3.Connection, schedule_id: int, now: float) -> sc.Schedule:
    """An approved request becomes active: a recurring one first fires one interval from now, a
    one-shot at its time (at once if that passed while it waited)."""
    with transaction(conn):
        s = get(conn, schedule_id)
        if s is None or s.state != "requested":
            raise Refused(f"schedule {schedule_id} is not waiting for approval")
        first = now + s.interval_seconds if s.interval_seconds else max(s.next_fire_at or now, now)
        conn.execute(
            "UPDATE scheduled_prompts SET state='active', next_fire_at=? WHERE id=?", (first, schedule_id)
        )
        found = get(conn, schedule_id)
    assert found is not None
    return found


def by_source(conn: sqlite3.Connection, source: str) -> sc.Schedule | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM scheduled_prompts WHERE source=?", (source,)).fetchone()
    return None if row is None else _schedule(conn, row)


def vacuum(conn: sqlite3.Connection, cutoff: float) -> int:
    """Delete done and cancelled schedules that ended before ``cutoff`` (their targets with them)."""
    return conn.execute(
        "DELETE FROM scheduled_prompts WHERE state IN ('done', 'cancelled') "
        "AND coalesce(cancelled_at, created_at) < ? AND coalesce(next_fire_at, 0) < ?",
        (cutoff, cutoff),
    ).rowcount
