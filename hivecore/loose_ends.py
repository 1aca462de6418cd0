"""Loose ends: what is still open for one caller of the manager or an agent socket (issue 18 item 4),
answered by ``get_loose_ends`` (everything) and ``get_open_threads`` (threads only).

A loose end is one :class:`~hivecore.wire.agent.LooseEnd` row. Each kind comes from a *part*: a
query function ``(conn, party, now) -> list[LooseEnd]`` run on the store's thread, all parts in one
store call (one snapshot). The parts here:

``approval``
    a pending approval the caller requested (``state`` is its kind, ``agent`` whom it is for);
``message``
    a message to the caller not acked yet (``state``: ``queued``, ``delivered`` — handed out in the
    current turn —, or ``redelivered``);
``thread``
    an ``in_reply_to`` chain waiting on the caller: a reply addressed to it (from an agent, the manager
    or the operator) that nobody has answered yet, sent within :data:`THREAD_WINDOW`;
``question_asked`` / ``question_to_answer``
    an open question the caller asked (of the operator or a peer) / one asked of it
    (:func:`hivecore.question_store.open_questions`);
``reminder_due`` / ``reminder_pending``
    a reminder of the caller's past its time (its delivery failed and is retried) / still to come.

Another area adds its own to :data:`PARTS`: one entry, a function of the same shape, and its kinds
listed in the verb's help and docs/sockets.md. A part must read
only the caller's own rows (``party``), return at most :data:`MAX_PER_PART` rows, and cut agent text
with :func:`preview`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Mapping

import attrs

from hivecore import reminder_store
from hivecore.names import OPERATOR_NAME, REMINDER_SENDER, SYSTEM_SENDER
from hivecore.question_store import open_questions
from hivecore.wire.agent import LooseEnd

MAX_PER_PART = 50
"""Rows one part may answer (the newest ones)."""
PREVIEW = 200
"""Characters of agent text a row carries."""
THREAD_WINDOW = 7 * 24 * 3600
"""Seconds a reply stays a thread waiting on its recipient."""


@attrs.frozen
class Party:
    """Who asks, in the names each table uses."""

    name: str
    """The agent's name (``hm1nd`` for the manager)."""
    inbox: str
    """Its broker inbox and sender name (``manager`` for the manager)."""
    requester: str
    """What the approvals table records as its requests' ``requester`` (``manager``)."""


Part = Callable[[sqlite3.Connection, Party, int], list[LooseEnd]]


def preview(text: str, limit: int = PREVIEW) -> str:
    """The first ``limit`` characters of ``text``, on one line, ``…`` when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _unix(rfc3339: str) -> int:
    try:
        return int(dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def approvals(conn: sqlite3.Connection, party: Party, now: int) -> list[LooseEnd]:
    """Pending approvals ``party`` requested, oldest first."""
    rows = conn.execute(
        "SELECT id, agent, kind, requested_at, description FROM approvals "
        "WHERE requester=? AND status='pending' ORDER BY id LIMIT ?",
        (party.requester, MAX_PER_PART),
    ).fetchall()
    return [
        LooseEnd(
            kind="approval",
            id=r["id"],
            since=_unix(r["requested_at"]),
            party="operator",
            agent=r["agent"],
            state=r["kind"],
            text=preview(r["description"] or f"{r['kind']} {r['agent']}"),
        )
        for r in rows
    ]


def unacked(conn: sqlite3.Connection, party: Party, now: int) -> list[LooseEnd]:
    """Messages to ``party`` not acked yet (the newest :data:`MAX_PER_PART`), oldest first."""
    rows = conn.execute(
        "SELECT id, sender, body, sent_at, delivered_at, redelivered FROM messages "
        "WHERE recipient=? AND acked_at IS NULL AND undelivered_at IS NULL ORDER BY id DESC LIMIT ?",
        (party.inbox, MAX_PER_PART),
    ).fetchall()
    return [
        LooseEnd(
            kind="message",
            id=r["id"],
            since=r["sent_at"],
            party=r["sender"],
            state="queued"
            if r["delivered_at"] is None
            else "redelivered"
            if r["redelivered"]
            else "delivered",
            text=preview(r["body"]),
        )
        for r in reversed(rows)
    ]


def threads(conn: sqlite3.Connection, party: Party, now: int) -> list[LooseEnd]:
    """Replies to ``party`` nobody has answered (within :data:`THREAD_WINDOW`), oldest first."""
    rows = conn.execute(
        "SELECT m.id, m.sender, m.body, m.sent_at, m.in_reply_to FROM messages m "
        "WHERE m.recipient=? AND m.in_reply_to IS NOT NULL AND m.sent_at >= ? "
        "AND m.sender NOT IN (?, ?) "
        "AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.in_reply_to = m.id) "
        "ORDER BY m.id DESC LIMIT ?",
        (party.inbox, now - THREAD_WINDOW, SYSTEM_SENDER, REMINDER_SENDER, MAX_PER_PART),
    ).fetchall()
    return [
        LooseEnd(
            kind="thread",
            id=r["id"],
            since=r["sent_at"],
            party=r["sender"],
            state=f"reply to {r['in_reply_to']}",
            text=preview(r["body"]),
        )
        for r in reversed(rows)
    ]


def questions(conn: sqlite3.Connection, party: Party, now: int) -> list[LooseEnd]:
    """Open questions ``party`` asked (``question_asked``: waiting on the operator or a peer) and
    open questions asked of it (``question_to_answer``: answer with ``answer``), oldest first."""
    out: list[LooseEnd] = []
    for q in open_questions(conn, asked_by=party.name)[:MAX_PER_PART]:
        due = f"; expires in {max(0, q.deadline_at - now)} s" if q.deadline_at is not None else ""
        out.append(
            LooseEnd(
                kind="question_asked",
                id=q.id,
                since=q.asked_at,
                party=q.target or OPERATOR_NAME,
                state=f"waiting on {q.target or OPERATOR_NAME}{due}",
                text=preview(q.question),
            )
        )
    for q in open_questions(conn, asked_of=party.name)[:MAX_PER_PART]:
        due = f"; expires in {max(0, q.deadline_at - now)} s" if q.deadline_at is not None else ""
        out.append(
            LooseEnd(
                kind="question_to_answer",
                id=q.id,
                since=q.asked_at,
                party=q.asker,
                state=f"answer with answer(id={q.id}){due}",
                text=preview(q.question),
            )
        )
    return out


def reminders(conn: sqlite3.Connection, party: Party, now: int) -> list[LooseEnd]:
    """``party``'s reminders not delivered yet (:func:`hivecore.reminder_store.loose_ends`): the due
    ones (a delivery failed and is retried) and the pending ones, each oldest first."""
    split = reminder_store.loose_ends(conn, party.name, now)
    out: list[LooseEnd] = []
    for word, rows in (("due", split.due), ("pending", split.pending)):
        for r in rows[:MAX_PER_PART]:
            retry = f"; {r.attempt_count} failed attempts: {r.last_error}" if r.attempt_count else ""
            out.append(
                LooseEnd(
                    kind=f"reminder_{word}",
                    id=r.id,
                    since=int(r.created_at),
                    state=f"due at {int(r.due_at)}{retry}",
                    text=preview(r.message),
                )
            )
    return out


PARTS: Mapping[str, Part] = {
    "approvals": approvals,
    "messages": unacked,
    "threads": threads,
    "questions": questions,
    "reminders": reminders,
}
THREAD_PARTS = ("threads",)
"""What ``get_open_threads`` answers."""


def collect(
    conn: sqlite3.Connection, party: Party, now: int, parts: tuple[str, ...] | None = None
) -> list[LooseEnd]:
    """Every part's rows for ``party`` (only ``parts`` when given), in :data:`PARTS` order."""
    out: list[LooseEnd] = []
    for name, part in PARTS.items():
        if parts is None or name in parts:
            out.extend(part(conn, party, now))
    return out
