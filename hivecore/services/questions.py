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

The table's queries and transactions live in :mod:`hivecore.question_store`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any

import trio

from hivecore.audit import Recorder, record_quietly
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.models import Question
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, SYSTEM_SENDER, validate_name
from hivecore.question_store import (
    CANCELLED,
    MAX_ASKS_PER_MINUTE,
    MAX_OPEN_PER_ASKER,
    cancel_for,
    expire_due,
    insert_question,
    next_deadline,
    open_questions,
    resolve_question,
    waiting_on_operator,
)
from hivecore.services.broker import Broker
from hivecore.services.handles import Publisher
from hivecore.store import Store
from hivecore.wire.events import QuestionAdded, QuestionResolved
from hivecore.wire.helper import Answered, HelperEvent, OperatorAnswered, QuestionAsked, helper_to_body

log = logging.getLogger(__name__)

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
        self.unknown_hive: Callable[[str], str | None] | None = None
        """The swarm link's :meth:`~actors.swarm_link.SwarmLink.unknown_hive`: why a hive cannot be
        asked (it never joined), so a typo is refused at once instead of waiting out the TTL."""

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
                unknown = None if self.unknown_hive is None else self.unknown_hive(hive)
                if unknown is not None:
                    raise BadInput(f"cannot ask {to}: {unknown}; nothing was asked")
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
