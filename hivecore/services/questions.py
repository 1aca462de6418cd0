"""Questions (issue 18 item 1; reference §7.3, §9, §10.1): the manager and agents ask the operator
(``ask_operator``) or each other (``ask``); the asked peer answers (``answer``), the operator answers
or cancels any open one (host.sock, hivectl, the dashboard).

Rows live in ``operator_questions`` (store migration 10; ``target`` NULL: a question to the
operator). The asker hears the outcome as a helper event from ``system``: ``operator_answered``
for an operator question, ``answered`` for a peer question; a TTL expiry answers ``[expired]``, a
cancel ``[cancelled]``. A peer question is pushed to its target as ``question_asked``.

Who may answer
    The operator: any open question (a peer question too: the operator overrides). An agent (or
    the manager): only a question asked *of it*; an operator question never, from any agent socket.

Incarnations
    A question belongs to its asker's incarnation (and a peer question to its target's): when
    either is purged (:meth:`Questions.incarnation_ended`, a broker hook) its open questions are
    cancelled; a surviving asker hears ``[cancelled]``. An answer is never delivered to a later agent
    of the same name.

Deadlines
    :meth:`Questions.run` is the TTL actor: it sleeps until the earliest open deadline (read from
    the table, so deadlines survive a daemon restart) or until an ``ask`` with an earlier one wakes
    it, then answers every due question ``[expired]``. No polling.

Waiting on the operator
    An agent with an open operator question is waiting on the operator: :meth:`Questions.waiting_since`
    (the oldest such question's ``asked_at``) is on its row as ``waiting_on_operator_since``.

:func:`open_questions` is the pure query other views use (loose ends: the questions asked by or of
a principal).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Collection
from typing import Any

import trio

from hivecore import store as st
from hivecore import topology
from hivecore.audit import Recorder, record_quietly
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.models import Question
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, SYSTEM_SENDER, validate_name
from hivecore.services.broker import Broker
from hivecore.services.handles import Publisher
from hivecore.store import Store, transaction
from hivecore.wire.events import QuestionAdded, QuestionResolved
from hivecore.wire.helper import Answered, HelperEvent, OperatorAnswered, QuestionAsked, helper_to_body

log = logging.getLogger(__name__)

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


# --- the service and its TTL actor ---------------------------------------------------------------


class Questions:
    """Ask, answer, cancel, expire. The in-memory state (the waiting map, the wake-up event) changes
    only in synchronous code between checkpoints, so the object needs no lock; :meth:`run` is the
    TTL actor."""

    def __init__(
        self,
        store: Store,
        bus: Publisher,
        broker: Broker,
        agents: Callable[[], Collection[str]],
        *,
        clock: Callable[[], float] = time.time,
        rescan: Callable[[list[str]], None] | None = None,
        max_open: int = MAX_OPEN_PER_ASKER,
        max_per_minute: int = MAX_ASKS_PER_MINUTE,
    ) -> None:
        self.max_per_minute = max_per_minute
        self._recent: dict[str, collections.deque[float]] = {}
        self._store = store
        self._bus = bus
        self._broker = broker
        self._agents = agents
        self._clock = clock
        self.rescan = rescan
        """Fire-and-forget rescan of rows (the views actor's ``request_rescan``)."""
        self.max_open = max_open
        self._waiting: dict[str, int] = {}
        self._wake = trio.Event()
        self.expired = 0
        self.record: Recorder | None = None
        """Set by the daemon to the audit trail's ``record``: each expiry is a daemon row."""
        self.hive: str | None = None
        """This hive's name in the swarm (``--swarm``; set with :attr:`outbox_added`): ``ask`` then
        takes ``name@hive`` (:mod:`hivecore.swarm_ask`). None: not in a swarm."""
        self.outbox_added: Callable[[], None] | None = None
        """Wakes the swarm link's outbox flush after an ask or an answer to another hive was queued."""

    # --- reads -------------------------------------------------------------------------------------

    def waiting_since(self, name: str) -> int | None:
        """When ``name``'s oldest open question to the operator was asked (None: it waits on nothing)."""
        return self._waiting.get(name)

    async def open(self, *, asked_by: str | None = None, asked_of: str | None = None) -> list[Question]:
        """:func:`open_questions` through the store."""
        result: list[Question] = await self._store.call(
            lambda c: open_questions(c, asked_by=asked_by, asked_of=asked_of)
        )
        return result

    # --- verbs -------------------------------------------------------------------------------------

    def _target(self, asker: str, to: str | None) -> str | None:
        """The asked agent's name (None: the operator); refuses unknown agents and the asker itself."""
        if to is None or to == OPERATOR_NAME:
            return None
        if to in (MANAGER_AGENT, MANAGER_NAME):
            name = MANAGER_NAME
        else:
            try:
                name = validate_name(to)
            except HiveError:
                name = None
            if name is None or name not in set(self._agents()):
                shown = json.dumps(to[:40], ensure_ascii=False)
                raise BadInput(
                    f"no such agent {shown} to ask: ask an existing agent, "
                    f'"{MANAGER_AGENT}" or "{OPERATOR_NAME}"'
                )
        if name == asker:
            raise BadInput("you cannot ask yourself a question")
        return name

    async def ask(
        self,
        asker: str,
        question: str,
        options: list[str] | None = None,
        multi: bool = False,
        ttl_seconds: int | None = None,
        *,
        to: str | None = None,
    ) -> Question:
        """Queue a (checked) question from ``asker`` (an agent's name, ``hm1nd`` for the manager) to
        the operator or, with ``to``, a peer; the stored row."""
        if multi and not options:
            raise BadInput("multi needs options to choose from")
        remote = None
        if to is not None and "@" in to:
            from hivecore import swarm_ask

            if self.hive is None:
                raise BadInput(f"{to[:60]!r}: this hive is not in a swarm (name@hive needs --swarm)")
            name, hive = swarm_ask.remote_target(to, self.hive)
            if hive == self.hive:
                to = name
            else:
                remote = (to, name, hive)
        target = None if remote is not None else self._target(asker, to)
        now = self._clock()
        recent = self._recent.setdefault(asker, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.max_per_minute:
            raise Refused(
                f"at most {self.max_per_minute} questions a minute per asker; this one was not asked"
            )
        recent.append(now)
        if remote is not None:
            opts = list(options or [])
            return await self._ask_remote(asker, question, opts, multi, ttl_seconds, remote, now)
        q: Question = await self._store.call(
            lambda c: insert_question(
                c,
                asker=asker,
                question=question,
                options=list(options or []),
                multi=multi,
                now=now,
                ttl_seconds=ttl_seconds,
                target=target,
                max_open=self.max_open,
            )
        )
        self._added(q)
        if target is None:
            self._waiting.setdefault(asker, q.asked_at)
            self._rescan([asker])
        else:
            event = QuestionAsked(
                id=q.id,
                asker=q.asker,
                question=q.question,
                options=q.options,
                multi=q.multi,
                deadline_at=q.deadline_at,
            )
            await self._tell(target, event)
        return q

    async def _ask_remote(
        self,
        asker: str,
        question: str,
        options: list[str],
        multi: bool,
        ttl_seconds: int | None,
        remote: tuple[str, str, str],
        now: float,
    ) -> Question:
        """The question row and its ``ask`` envelope in the outbox, one transaction."""
        from hivecore import swarm_ask

        to, name, hive = remote
        q: Question = await self._store.call(
            lambda c: swarm_ask.ask(
                c,
                asker=asker,
                to=to,
                name=name,
                hive=hive,
                question=question,
                options=options,
                multi=multi,
                now=now,
                ttl_seconds=ttl_seconds,
                max_open=self.max_open,
            )
        )
        self._added(q)
        self._outbox()
        return q

    def _added(self, q: Question) -> None:
        self._bus.publish(
            QuestionAdded(
                id=q.id,
                asker=q.asker,
                question=q.question,
                options=q.options,
                multi=q.multi,
                asked_at=q.asked_at,
                deadline_at=q.deadline_at,
                target=q.target,
            )
        )
        if q.deadline_at is not None:
            self._wake.set()

    def _outbox(self) -> None:
        if self.outbox_added is not None:
            self.outbox_added()

    async def deliver_ask(self, envelope: Any, target: str | None) -> str:
        """Another hive's ``ask`` (the swarm link, before it acks): ``target`` the local agent asked
        (None: no such agent); ``received``, ``duplicate`` or ``refused`` (answered back at once)."""
        from hivecore import swarm_ask

        me = self.hive or "?"
        now = self._clock()
        # a hive's askers share one rate (a hostile hive may invent names): 30 a minute, as one asker
        recent = self._recent.setdefault(f"@{envelope.from_hive}", collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        refuse = None
        if len(recent) >= self.max_per_minute:
            refuse = f"at most {self.max_per_minute} questions a minute from hive {envelope.from_hive!r}"
        else:
            recent.append(now)
        got = await self._store.call(
            lambda c: swarm_ask.receive_ask(
                c, now, envelope=envelope, target=target, max_open=self.max_open, me=me, refuse=refuse
            )
        )
        if got is None:
            return "duplicate"
        if isinstance(got, str):
            log.info("questions: %s@%s's question not asked: %s", envelope.sender, envelope.from_hive, got)
            self._outbox()
            return "refused"
        q, inbox, message_id, body = got
        self._added(q)
        self._broker.announce(message_id, SYSTEM_SENDER, inbox, body, int(now))
        return "received"

    async def deliver_answer(self, envelope: Any) -> str:
        """Another hive's ``answer`` to a question asked from here: ``received`` (the asker is told
        as for a local peer), ``duplicate``, or ``dropped`` (not an open question of that asker to
        that hive: expired here already, or a forgery)."""
        from hivecore import swarm_ask

        now = self._clock()
        got = await self._store.call(lambda c: swarm_ask.receive_answer(c, now, envelope=envelope))
        if got == "duplicate":
            return "duplicate"
        if isinstance(got, str):
            log.info("questions: an answer from hive %s dropped: %s", envelope.from_hive, got)
            return "dropped"
        await self._resolved([got])
        return "received"

    async def deliver_cancel(self, envelope: Any) -> str:
        """Another hive closes a question it asked here: ``received`` (cancelled, nothing answered
        back), ``duplicate``, or ``dropped`` (not its open question)."""
        from hivecore import swarm_ask

        now = self._clock()
        got = await self._store.call(lambda c: swarm_ask.receive_cancel(c, now, envelope=envelope))
        if got == "duplicate":
            return "duplicate"
        if isinstance(got, str):
            log.info("questions: a cancel from hive %s dropped: %s", envelope.from_hive, got)
            return "dropped"
        await self._resolved([(got, False)])
        return "received"

    async def answer(self, question_id: int, answer: str, *, by: str) -> Question:
        """Answer open question ``question_id`` as ``by`` (``operator``, or the asked agent's name)."""
        now = self._clock()
        q, live = await self._store.call(lambda c: resolve_question(c, question_id, answer, by=by, now=now))
        await self._resolved([(q, live)])
        return q

    async def cancel(self, question_id: int) -> Question:
        """The operator cancels open question ``question_id``: its asker hears ``[cancelled]``."""
        now = self._clock()
        q, live = await self._store.call(
            lambda c: resolve_question(c, question_id, CANCELLED, by=OPERATOR_NAME, now=now, cancelled=True)
        )
        await self._resolved([(q, live)])
        return q

    async def incarnation_ended(self, agent: str) -> None:
        """``agent`` was purged: cancel the open questions asked by or of it (a broker hook)."""
        now = self._clock()
        done = await self._store.call(lambda c: cancel_for(c, agent, now))
        if done:
            log.info("questions: %d open questions of %s cancelled (its incarnation ended)", len(done), agent)
        await self._resolved(done)

    async def expire(self) -> list[Question]:
        """Answer ``[expired]`` every question due now; the expired rows."""
        now = self._clock()
        done: list[tuple[Question, bool]] = await self._store.call(lambda c: expire_due(c, now))
        self.expired += len(done)
        await self._resolved(done)
        for q, _ in done:
            args = {"id": q.id, "agent": q.asker, "to": q.target or OPERATOR_NAME}
            await record_quietly(self.record, "question_expired", args, log)
        return [q for q, _ in done]

    # --- outcomes ------------------------------------------------------------------------------------

    async def _resolved(self, done: list[tuple[Question, bool]]) -> None:
        if not done:
            return
        for q, _ in done:
            assert q.answer is not None
            assert q.answered_at is not None
            self._bus.publish(
                QuestionResolved(
                    id=q.id,
                    answer=q.answer,
                    answered_at=q.answered_at,
                    cancelled=q.cancelled,
                    target=q.target,
                    answerer=q.answerer,
                )
            )
        await self._refresh_waiting({q.asker for q, _ in done if q.target is None})
        if any("@" in q.asker or "@" in (q.target or "") for q, _ in done):
            self._outbox()  # an answer or a cancel went to the swarm outbox with the resolve
        for q, tell in done:
            if not tell or "@" in q.asker:
                continue
            assert q.answer is not None
            event: HelperEvent
            if q.target is None:
                event = OperatorAnswered(id=q.id, question=q.question, answer=q.answer)
            else:
                event = Answered(
                    id=q.id, question=q.question, answer=q.answer, target=q.target, answerer=q.answerer
                )
            await self._tell(q.asker, event)

    async def _refresh_waiting(self, askers: set[str]) -> None:
        if not askers:
            return
        self._waiting = await self._store.call(waiting_on_operator)
        self._rescan(sorted(askers))

    def _rescan(self, names: list[str]) -> None:
        if self.rescan is not None:
            try:
                self.rescan(names)
            except Exception:
                log.warning("questions: could not ask for a rescan of %s", names, exc_info=True)

    async def _tell(self, name: str, event: HelperEvent) -> None:
        """A helper event into ``name``'s inbox (best effort, logged)."""
        try:
            await self._broker.post(SYSTEM_SENDER, name, helper_to_body(event))
        except Exception:
            log.warning("questions: could not tell %s of %s", name, event.EVENT, exc_info=True)

    # --- the TTL actor -------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Load who waits on the operator, then sleep until the earliest deadline (or an earlier
        ``ask`` wakes it) and expire what is due; until cancelled."""
        self._waiting = await self._store.call(waiting_on_operator)
        task_status.started(self)
        while True:
            wake = self._wake = trio.Event()
            due: int | None = await self._store.call(next_deadline)
            wait = math.inf if due is None else due - self._clock()
            if wait <= 0:
                try:
                    await self.expire()
                except HiveError as exc:  # the store is stopping
                    log.warning("questions: expiry failed: %s", exc)
                    await trio.sleep(1.0)
                continue
            with trio.move_on_after(wait):
                await wake.wait()
