"""``ask`` across hives (issue 20; docs/swarm.md "Questions between hives"): the store side. No NATS.

An agent (or the manager) on hive A asks ``coder@b``. A stores the question as usual (its row in
``operator_questions``, target ``coder@b``; its asker's limits, ``allowedRecipients`` and TTL as for
a local question) and, in the same transaction, an outbox row of kind ``ask`` (``swarm_outbox``,
migration 19): the question exists exactly when its envelope is on its way. The link publishes it
like mail (``hive.b.mail.a``, de-duplicated by ``Nats-Msg-Id``).

Hive b receives it (:func:`receive_ask`): in one transaction, a question row of its own (asker
``<sender>@a``, target the local agent, the same deadline), the ``question_asked`` event in the
agent's inbox, the mapping to A's id (``swarm_questions``) and the envelope id (``swarm_received``:
a redelivery is acked without a second question). An unknown recipient, or a hive or asker over its
open-question limit, is answered at once, ``cancelled``, with the reason.

Whatever resolves b's row (the agent's ``answer``, the operator's answer or cancel, the TTL, the
agent's purge) queues, in that transaction (:func:`queue_answer`, called by
:func:`hivecore.question_store.resolve_now`), an ``answer`` envelope to A. A resolves its own
row with it (:func:`receive_answer`) only if the answer comes from the hive asked (the subject's) and
names the asker, once; the asker hears ``answered`` as for a local peer (``target`` and
``answerer`` ``name@b``). A question A expired itself takes no later answer.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import attrs

from hivecore import store as st
from hivecore import swarm_mail as sm
from hivecore.errors import BadInput, HiveError
from hivecore.models import Question
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, SYSTEM_SENDER
from hivecore.store import transaction
from hivecore.wire import questions as wq
from hivecore.wire.converter import converter
from hivecore.wire.helper import QuestionAsked, helper_to_body

KINDS = ("mail", "ask", "answer", "cancel")
MAX_OPEN_PER_HIVE = 64
"""Open questions one other hive may have asked here (a hostile hive inventing askers is bounded)."""


@attrs.frozen(kw_only=True)
class QuestionPart:
    """The envelope fields of an ask or an answer, kept as JSON in ``swarm_outbox.question``."""

    kind: str
    ref: int
    options: list[str] = attrs.field(factory=list)
    multi: bool = False
    deadline_at: int | None = None
    cancelled: bool = False


def envelope(row: sm.OutboxRow, envelope_id: str, me: str) -> sm.Envelope:
    """The envelope an outbox row goes out as (mail, or an ask/answer with its question part)."""
    part = None if row.question is None else converter.structure(json.loads(row.question), QuestionPart)
    extra: dict[str, Any] = {} if part is None else attrs.asdict(part)
    return sm.Envelope(
        id=envelope_id, from_hive=me, sender=row.sender, to=row.recipient, body=row.body, **extra
    )


def envelope_problem(env: sm.Envelope) -> str | None:
    """Why an ask/answer envelope from another hive is malformed (None: it is not)."""
    if env.kind not in KINDS:
        return f"unknown kind {env.kind[:20]!r}"
    if env.kind == "mail":
        return None
    if not isinstance(env.ref, int) or not 0 < env.ref < wq.MAX_QUESTION_ID:
        return "no question id"
    try:
        if env.kind == "ask":
            wq.question_text(env.body)
            wq.options(env.options or None)
            if env.multi and not env.options:
                return "multi without options"
            if env.deadline_at is not None and not 0 < env.deadline_at < 2**40:
                return "a bad deadline"
        elif len(env.body.encode("utf-8", "surrogatepass")) > wq.MAX_ANSWER:
            return "an answer over the limit"
    except HiveError as exc:
        return str(exc)
    return None


def remote_target(to: str, me: str) -> tuple[str, str]:
    """``name@hive`` → ``(name, hive)`` for :meth:`Questions.ask`: ``name`` an agent or ``manager``
    (``hm1nd``); :class:`BadInput` for a bad address or ``operator@hive``. ``hive`` may be ``me``."""
    name, hive = sm.parse_address(to)
    if name == OPERATOR_NAME and hive != me:
        raise BadInput(
            f"{to[:60]!r}: another hive's operator is not asked from here; ask an agent or the manager "
            "there, or the operator of this hive"
        )
    return name, hive


# --- on the store thread ---------------------------------------------------------------------------


def ask(
    conn: sqlite3.Connection,
    *,
    asker: str,
    to: str,
    name: str,
    hive: str,
    question: str,
    options: list[str],
    multi: bool,
    now: float,
    ttl_seconds: int | None,
    max_open: int,
) -> Question:
    """The asker's question row and its ``ask`` outbox row, one transaction (``allowedRecipients``
    checked against ``to`` as ``send`` checks ``name@hive``)."""
    from hivecore import question_store as qs
    from hivecore import topology

    with transaction(conn):
        topology.check_recipient(conn, asker, to)
        q = qs.insert_question_now(
            conn,
            asker=asker,
            question=question,
            options=options,
            multi=multi,
            now=now,
            ttl_seconds=ttl_seconds,
            target=f"{name}@{hive}",
            max_open=max_open,
            check_recipient=False,
        )
        part = QuestionPart(kind="ask", ref=q.id, options=options, multi=multi, deadline_at=q.deadline_at)
        sm.add_outbox_now(conn, asker, hive, name, question, int(now), _json(part))
    return q


def receive_ask(
    conn: sqlite3.Connection,
    now: float,
    *,
    envelope: sm.Envelope,
    target: str | None,
    max_open: int,
    me: str,
    refuse: str | None = None,
) -> tuple[Question, str, int, str] | str | None:
    """Another hive's ``ask`` for local ``target`` (None: no such agent here), one transaction: the
    question, its ``question_asked`` message, the mapping and the envelope recorded; returns
    ``(question, inbox, message id, its body)``; a reason string when it was answered ``cancelled`` instead
    (an answer queued back: also for ``refuse``, a reason decided outside, a rate limit); None for a
    redelivery."""
    from hivecore import question_store as qs

    env = envelope
    asker = f"{env.sender}@{env.from_hive}"
    with transaction(conn):
        if conn.execute("SELECT 1 FROM swarm_received WHERE envelope=?", (sm.received_key(env),)).fetchone():
            return None
        (from_hive,) = conn.execute(
            "SELECT count(*) FROM operator_questions WHERE answered_at IS NULL AND asker GLOB ?",
            (f"*@{env.from_hive}",),
        ).fetchone()
        why = refuse
        if why is not None:
            pass
        elif target is None:
            why = f"no agent {env.to!r} on hive {me!r}"
        elif from_hive >= MAX_OPEN_PER_HIVE:
            why = (
                f"hive {env.from_hive!r} already has {from_hive} open questions on hive {me!r} (the "
                f"limit is {MAX_OPEN_PER_HIVE})"
            )
        q = None
        if why is None:
            assert target is not None
            deadline = None
            if env.deadline_at is not None:  # the asker's deadline, within a week from now here
                deadline = min(env.deadline_at, math.ceil(now) + wq.MAX_TTL)
            try:
                q = qs.insert_question_now(
                    conn,
                    asker=asker,
                    question=env.body,
                    options=list(env.options),
                    multi=env.multi,
                    now=now,
                    ttl_seconds=None,
                    target=target,
                    max_open=max_open,
                    check_recipient=False,
                    deadline_at=deadline,
                )
            except HiveError as exc:
                why = str(exc)
        message_id = None
        inbox = body = ""
        if q is not None:
            assert target is not None
            inbox = MANAGER_AGENT if target == MANAGER_NAME else target
            event = QuestionAsked(
                id=q.id,
                asker=asker,
                question=q.question,
                options=q.options,
                multi=q.multi,
                deadline_at=q.deadline_at,
            )
            bound = None if inbox == MANAGER_AGENT else st.live_incarnation(conn, inbox)
            body = helper_to_body(event)
            cur = conn.execute(
                "INSERT INTO messages(sender, recipient, body, sent_at, in_reply_to, incarnation) "
                "VALUES (?,?,?,?,?,?)",
                (SYSTEM_SENDER, inbox, body, int(now), None, bound),
            )
            message_id = cur.lastrowid
            conn.execute(
                "INSERT INTO swarm_questions(question_id, hive, remote_id) VALUES (?,?,?)",
                (q.id, env.from_hive, env.ref),
            )
        else:
            assert env.ref is not None
            back = QuestionPart(kind="answer", ref=env.ref, cancelled=True)
            text = f"[not asked: {why}]"
            sm.add_outbox_now(
                conn, SYSTEM_SENDER, env.from_hive, env.sender, text, int(now), _json(back), limit=False
            )
        conn.execute(
            "INSERT INTO swarm_received(envelope, message_id, received_at) VALUES (?,?,?)",
            (sm.received_key(env), message_id, int(now)),
        )
    if q is None:
        return why or "not asked"
    assert message_id is not None
    return q, inbox, message_id, body


def queue_answer(
    conn: sqlite3.Connection, q: Question, answer: str, *, cancelled: bool, answerer: str | None, now: float
) -> bool:
    """Inside the transaction that resolved ``q`` (a question another hive asked here): queue its
    ``answer`` envelope to the asking hive. Whether one was queued (``q`` was such a question)."""
    row = conn.execute("SELECT hive, remote_id FROM swarm_questions WHERE question_id=?", (q.id,)).fetchone()
    if row is None:
        return False
    hive, remote_id = row
    conn.execute("DELETE FROM swarm_questions WHERE question_id=?", (q.id,))  # answered: done with
    asker = q.asker.partition("@")[0]
    sender = answerer if answerer is not None and "@" not in answerer else SYSTEM_SENDER
    part = QuestionPart(kind="answer", ref=int(remote_id), cancelled=cancelled)
    sm.add_outbox_now(conn, sender, hive, asker, answer, int(now), _json(part), limit=False)
    return True


def queue_cancel(conn: sqlite3.Connection, q: Question, *, now: float) -> None:
    """Inside the transaction that resolved ``q`` here (a question asked from here of another hive,
    answered or cancelled by this hive's operator, or its asker purged): tell the far hive to close
    its copy (a ``cancel`` envelope), so it does not stay open there."""
    assert q.target is not None
    name, _, hive = q.target.partition("@")
    part = QuestionPart(kind="cancel", ref=q.id, cancelled=True)
    sm.add_outbox_now(conn, q.asker, hive, name, "[cancelled]", int(now), _json(part), limit=False)


def receive_cancel(conn: sqlite3.Connection, now: float, *, envelope: sm.Envelope) -> Question | str:
    """Another hive closes a question it asked here (``cancel``), one transaction: the question
    cancelled (nothing is answered back), or why not (a redelivery, not its open question)."""
    from hivecore import question_store as qs

    env = envelope
    with transaction(conn):
        if conn.execute("SELECT 1 FROM swarm_received WHERE envelope=?", (sm.received_key(env),)).fetchone():
            return "duplicate"
        conn.execute(
            "INSERT INTO swarm_received(envelope, message_id, received_at) VALUES (?,?,?)",
            (sm.received_key(env), None, int(now)),
        )
        row = conn.execute(
            "SELECT question_id FROM swarm_questions WHERE hive=? AND remote_id=?", (env.from_hive, env.ref)
        ).fetchone()
        q = None if row is None else qs.get_question(conn, int(row[0]))
        if q is None or q.asker != f"{env.sender}@{env.from_hive}" or q.answered_at is not None:
            return f"no open question {env.ref} of {env.sender}@{env.from_hive} here"
        conn.execute("DELETE FROM swarm_questions WHERE question_id=?", (q.id,))
        resolved, _ = qs.resolve_now(
            conn, q.id, qs.CANCELLED, by=OPERATOR_NAME, now=now, cancelled=True, answerer=None, echo=False
        )
        return resolved


def receive_answer(
    conn: sqlite3.Connection, now: float, *, envelope: sm.Envelope
) -> tuple[Question, bool] | str:
    """Another hive's ``answer`` to a question asked from here, one transaction: the question resolved
    (with whether its asker is still live) or why it was not (a redelivery, no such open question
    of that asker to that hive); the envelope is recorded either way."""
    from hivecore import question_store as qs

    env = envelope
    with transaction(conn):
        if conn.execute("SELECT 1 FROM swarm_received WHERE envelope=?", (sm.received_key(env),)).fetchone():
            return "duplicate"
        conn.execute(
            "INSERT INTO swarm_received(envelope, message_id, received_at) VALUES (?,?,?)",
            (sm.received_key(env), None, int(now)),
        )
        assert env.ref is not None
        q = qs.get_question(conn, env.ref)
        if q is None or q.target is None or q.target.partition("@")[2] != env.from_hive or q.asker != env.to:
            return f"no question {env.ref} of {env.to!r} to hive {env.from_hive!r}"
        if q.answered_at is not None:
            return f"question {q.id} was already resolved"
        answerer = None if env.cancelled else f"{env.sender}@{env.from_hive}"
        return qs.resolve_now(
            conn, q.id, env.body, by=q.target, now=now, cancelled=env.cancelled, answerer=answerer, echo=False
        )


def _json(part: QuestionPart) -> str:
    return json.dumps(converter.unstructure(part), separators=(",", ":"), sort_keys=True)
