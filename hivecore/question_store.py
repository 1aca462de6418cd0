"""The questions table's queries and transactions (``operator_questions``, store migration 10), run
on the store thread: insert, resolve, expire, cancel and the open-question views.

:class:`hivecore.services.questions.Questions` is the service (events, messages, the TTL actor) on
top of these; the swarm's ask envelopes (:mod:`hivecore.swarm_ask`) and the loose-ends view
(:mod:`hivecore.loose_ends`) use them directly, so they live outside ``services`` (``actors`` never
import a service: tests/test_architecture.py).
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from hivecore import store as st
from hivecore import topology
from hivecore.errors import HiveError, Refused
from hivecore.models import Question
from hivecore.names import MANAGER_NAME, OPERATOR_NAME
from hivecore.store import transaction

EXPIRED = "[expired]"
CANCELLED = "[cancelled]"
MAX_OPEN_PER_ASKER = 16
"""Open questions one asker may have at once (a hostile agent cannot bury the operator's card list)."""
MAX_ASKS_PER_MINUTE = 30
"""Questions one asker may ask in a sliding minute: a peer question is pushed to its target by
``system`` (outside the sender's message quota), so a hostile agent asking and letting 1 s TTLs
expire must not flood another agent's inbox or the store."""


class UnknownQuestion(HiveError):
    http_status = 404

    def __init__(self, question_id: int) -> None:
        super().__init__(f"no question {question_id}")


# --- sync, on the store thread ---------------------------------------------------------------------

_COLUMNS = (
    "id, asker, question, options_json, multi, asked_at, deadline_at, target, answered_at, answer, "
    "cancelled, answerer"
)


def _question(r: sqlite3.Row | tuple[Any, ...]) -> Question:
    return Question(
        id=r[0],
        asker=r[1],
        question=r[2],
        options=list(json.loads(r[3] or "[]")),
        multi=bool(r[4]),
        asked_at=r[5],
        deadline_at=r[6],
        target=r[7],
        answered_at=r[8],
        answer=r[9],
        cancelled=bool(r[10]),
        answerer=r[11],
    )


def _incarnation(conn: sqlite3.Connection, agent: str) -> int | None:
    return None if agent == MANAGER_NAME else st.live_incarnation(conn, agent)


def insert_question(
    conn: sqlite3.Connection,
    *,
    asker: str,
    question: str,
    options: list[str],
    multi: bool,
    now: float,
    ttl_seconds: int | None,
    target: str | None,
    max_open: int = MAX_OPEN_PER_ASKER,
) -> Question:
    """Insert an open question (one transaction); :class:`Refused` when ``asker`` already has
    ``max_open`` open ones, :class:`~hivecore.topology.RecipientNotAllowed` when its
    ``hyperhive.allowedRecipients`` leaves ``target`` out. ``deadline_at`` is ``now + ttl_seconds``
    rounded up to a whole second."""
    with transaction(conn):
        return insert_question_now(
            conn,
            asker=asker,
            question=question,
            options=options,
            multi=multi,
            now=now,
            ttl_seconds=ttl_seconds,
            target=target,
            max_open=max_open,
        )


def insert_question_now(
    conn: sqlite3.Connection,
    *,
    asker: str,
    question: str,
    options: list[str],
    multi: bool,
    now: float,
    ttl_seconds: int | None,
    target: str | None,
    max_open: int = MAX_OPEN_PER_ASKER,
    check_recipient: bool = True,
    deadline_at: int | None = None,
) -> Question:
    """:func:`insert_question` inside the caller's transaction (an ask across hives writes its
    outbox row with it: :mod:`hivecore.swarm_ask`); ``deadline_at`` (Unix s) in place of a TTL: the
    asking hive's deadline, kept as it is."""
    asked_at = int(now)
    deadline = None if ttl_seconds is None else math.ceil(now + ttl_seconds)
    if deadline_at is not None:
        deadline = deadline_at
    if target is not None and check_recipient:  # allowedRecipients (issue 18 item 7): send and ask
        topology.check_recipient(conn, asker, target)
    (count,) = conn.execute(
        "SELECT count(*) FROM operator_questions WHERE asker=? AND answered_at IS NULL", (asker,)
    ).fetchone()
    if count >= max_open:
        raise Refused(
            f"{asker} already has {count} open questions (the limit is {max_open}); wait for answers"
        )
    cur = conn.execute(
        "INSERT INTO operator_questions(asker, question, options_json, multi, asked_at, deadline_at, "
        "target, asker_incarnation, target_incarnation) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            asker,
            question,
            json.dumps(options),
            int(multi),
            asked_at,
            deadline,
            target,
            _incarnation(conn, asker),
            None if target is None else _incarnation(conn, target),
        ),
    )
    assert cur.lastrowid is not None
    qid = cur.lastrowid
    return Question(
        id=qid,
        asker=asker,
        question=question,
        options=options,
        multi=multi,
        asked_at=asked_at,
        deadline_at=deadline,
        target=target,
    )


def get_question(conn: sqlite3.Connection, question_id: int) -> Question | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM operator_questions WHERE id=?", (question_id,)).fetchone()
    return None if row is None else _question(row)


def open_questions(
    conn: sqlite3.Connection, *, asked_by: str | None = None, asked_of: str | None = None
) -> list[Question]:
    """The open questions, oldest first: every one, or those ``asked_by`` a principal (an agent's
    name; ``hm1nd`` for the manager), and/or ``asked_of`` one (an agent's name, or ``operator`` for
    the questions to the operator). Pure query (loose ends and the dashboard use it)."""
    where = ["answered_at IS NULL"]
    args: list[Any] = []
    if asked_by is not None:
        where.append("asker=?")
        args.append(asked_by)
    if asked_of == OPERATOR_NAME:
        where.append("target IS NULL")
    elif asked_of is not None:
        where.append("target=?")
        args.append(asked_of)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM operator_questions WHERE {' AND '.join(where)} ORDER BY id", args
    ).fetchall()
    return [_question(r) for r in rows]


def _still_live(conn: sqlite3.Connection, question_id: int) -> bool:
    """Whether the asker's incarnation the question was asked in is still the live one."""
    row = conn.execute(
        "SELECT asker, asker_incarnation FROM operator_questions WHERE id=?", (question_id,)
    ).fetchone()
    if row is None:
        return False
    asker, bound = row
    return bound is None or bound == _incarnation(conn, asker)


def _resolve_now(
    conn: sqlite3.Connection,
    question_id: int,
    answer: str,
    *,
    by: str,
    now: float,
    cancelled: bool = False,
    answerer: str | None,
    echo: bool = True,
) -> tuple[Question, bool]:
    """Resolve one open question in the caller's transaction. Across hives (``echo``): a question
    another hive asked here queues its answer back; one asked from here of another hive, resolved
    here (the operator, a purge), tells that hive to close its copy (:mod:`hivecore.swarm_ask`)."""
    q = get_question(conn, question_id)
    if q is None:
        raise UnknownQuestion(question_id)
    if by != OPERATOR_NAME and q.target != by:
        whom = "the operator" if q.target is None else "another agent"
        raise Refused(f"question {question_id} was not asked of you (it is for {whom}); you cannot answer it")
    if q.answered_at is not None:
        how = "cancelled" if q.cancelled else "expired" if q.answer == EXPIRED else "answered"
        raise Refused(f"question {question_id} was already {how}")
    at = int(now)
    conn.execute(
        "UPDATE operator_questions SET answered_at=?, answer=?, cancelled=?, answerer=? WHERE id=?",
        (at, answer, int(cancelled), answerer, question_id),
    )
    resolved = Question(
        **{**_fields(q), "answered_at": at, "answer": answer, "cancelled": cancelled, "answerer": answerer}
    )
    if echo and ("@" in q.asker or (q.target is not None and "@" in q.target and by != q.target)):
        from hivecore import swarm_ask  # another hive asked, or was asked: it hears in this transaction

        if "@" in q.asker:
            swarm_ask.queue_answer(conn, resolved, answer, cancelled=cancelled, answerer=answerer, now=now)
        elif answer != EXPIRED:  # the far hive keeps the same deadline
            swarm_ask.queue_cancel(conn, resolved, now=now)
    return resolved, _still_live(conn, question_id)


resolve_now = _resolve_now
"""``_resolve_now`` for :func:`hivecore.swarm_ask.receive_answer` (inside its transaction)."""


def resolve_question(
    conn: sqlite3.Connection,
    question_id: int,
    answer: str,
    *,
    by: str,
    now: float,
    cancelled: bool = False,
) -> tuple[Question, bool]:
    """Answer (or, ``cancelled``, cancel) open question ``question_id`` as ``by`` (``operator`` or
    an agent's name), one transaction; the resolved row and whether its asker's incarnation is still
    the live one (whether to tell it). Raises :class:`UnknownQuestion`, or :class:`Refused` when it
    was not asked of ``by`` or is no longer open."""
    with transaction(conn):
        return _resolve_now(
            conn, question_id, answer, by=by, now=now, cancelled=cancelled, answerer=None if cancelled else by
        )


def _fields(q: Question) -> dict[str, Any]:
    return {
        "id": q.id,
        "asker": q.asker,
        "question": q.question,
        "options": q.options,
        "multi": q.multi,
        "asked_at": q.asked_at,
        "deadline_at": q.deadline_at,
        "target": q.target,
        "answered_at": q.answered_at,
        "answer": q.answer,
        "cancelled": q.cancelled,
        "answerer": q.answerer,
    }


def expire_due(conn: sqlite3.Connection, now: float) -> list[tuple[Question, bool]]:
    """Answer ``[expired]`` every open question whose deadline is at or before ``now`` (one
    transaction); each with whether its asker is still live."""
    with transaction(conn):
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM operator_questions WHERE answered_at IS NULL AND deadline_at <= ? "
                "ORDER BY id",
                (now,),
            )
        ]
        return [_resolve_now(conn, i, EXPIRED, by=OPERATOR_NAME, now=now, answerer=None) for i in ids]


def next_deadline(conn: sqlite3.Connection) -> int | None:
    """The earliest deadline of an open question (Unix seconds), if any has one."""
    (value,) = conn.execute(
        "SELECT min(deadline_at) FROM operator_questions WHERE answered_at IS NULL"
    ).fetchone()
    return None if value is None else int(value)


def cancel_for(conn: sqlite3.Connection, agent: str, now: float) -> list[tuple[Question, bool]]:
    """Cancel every open question asked by or of ``agent`` (its incarnation ended); each with whether
    its asker is to be told (it survives: it is not ``agent``)."""
    with transaction(conn):
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM operator_questions WHERE answered_at IS NULL AND (asker=? OR target=?) "
                "ORDER BY id",
                (agent, agent),
            )
        ]
        out = [
            _resolve_now(conn, i, CANCELLED, by=OPERATOR_NAME, now=now, cancelled=True, answerer=None)
            for i in ids
        ]
    return [(q, live and q.asker != agent) for q, live in out]


def waiting_on_operator(conn: sqlite3.Connection) -> dict[str, int]:
    """Asker → the ``asked_at`` of its oldest open operator question."""
    return {
        r[0]: int(r[1])
        for r in conn.execute(
            "SELECT asker, min(asked_at) FROM operator_questions "
            "WHERE answered_at IS NULL AND target IS NULL GROUP BY asker"
        )
    }
