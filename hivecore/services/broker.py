"""The broker: messages between agents, the manager, the operator and ``system`` (reference §10).

Rows live in the ``messages`` table (store migrations 1 and 3); the database is the source of truth.
Everything sqlite goes through the :class:`~hivecore.store.Store` actor.

Recipients
    an existing agent's name; ``manager`` (``hm1nd`` is an alias); ``operator``; ``*`` — one row per
    existing agent other than the sender (the manager's row goes to ``manager``). Anything else is
    refused, nothing is written. Bodies are at most :data:`MAX_BODY` UTF-8 bytes.

Leases (delivery and acknowledgement)
    Every client connection that reads an inbox holds a *lease* (:meth:`Broker.open_lease`; the
    socket opens one per connection and closes it when the connection ends). ``recv`` hands out the
    oldest rows of the inbox that are

    * not delivered yet, or
    * delivered but not acked, to a lease that is no longer open (its connection closed, or it
      belonged to an earlier daemon run);

    marks them delivered to the caller's lease and returns them. A row handed out a second (or later)
    time carries ``redelivered: true``: the previous reader may have acted on it before it went away.
    Rows delivered to a lease that is still open are never handed out again, so a reader that keeps
    its connection never sees a message twice, and two live readers never share a message.

    ``ack_turn`` acks (``acked_at = now``) every delivered, unacked row of the inbox except those held
    by *another* open lease: the caller's own deliveries and any orphaned ones. So a harness that was
    restarted mid-turn acks on its new connection what it had finished, and whatever it had not
    acked comes back, flagged, on its next ``recv``.

Wake-ups
    ``recv`` with ``wait_seconds`` long-polls: it waits on a per-recipient :class:`trio.Event` that
    :meth:`send` sets right after the row is committed (no polling). The event is taken *before* the
    inbox is read, so a message committed between the read and the wait still wakes the reader.

Quota
    A sender may have at most :data:`MAX_QUEUED_PER_SENDER` rows not yet acked by their recipients
    (counted per row: a broadcast to 20 agents is 20). A send past it is refused with an error
    naming the quota and writes nothing; the count and the insert are one transaction. The daemon's
    own senders (``system`` kicks and helper events, :meth:`Broker.post`) and the operator are not
    counted against: the quota keeps a hostile agent or manager from filling the database.

The operator's inbox
    Nobody ``recv``s ``operator``: the operator reads it on the dashboard. :meth:`Broker.ack_read`
    marks the rows up to the newest one shown delivered and acked (the dashboard does on every
    ``/api/state``), which frees the senders' quota and lets the vacuum reclaim them.

Vacuum
    :meth:`run` deletes acked rows older than 30 days, once at start and then hourly. Unacked rows
    (queued or in flight) are never deleted, nor rows a kept message replies to; approvals live in
    another table and are never touched.

Every row written publishes a ``sent`` dashboard event, every row handed out a ``delivered`` one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

from hivecore import store as st
from hivecore import topology
from hivecore.errors import BadInput, HiveError
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, SYSTEM_SENDER, validate_name
from hivecore.services.handles import Publisher
from hivecore.store import Store, no_fsync, transaction
from hivecore.wire.agent import MAX_BODY, MAX_RECV_BATCH, MAX_RECV_WAIT, Delivery, LooseEnd
from hivecore.wire.events import MessageDelivered, MessageSent
from hivecore.wire.helper import MessagesUndelivered, helper_to_body

if TYPE_CHECKING:
    from hivecore.loose_ends import Party

log = logging.getLogger(__name__)

OPERATOR = OPERATOR_NAME
BROADCAST = "*"
INTERNAL_MAX_BODY = 64 * 1024
"""Kicks and helper events (a failed build's note can be long) may exceed the sockets' 4 KiB."""
VACUUM_INTERVAL = 3600.0
VACUUM_AGE = 30 * 24 * 3600
"""Acked rows older than this (seconds since ``acked_at``) are deleted."""
MAX_QUEUED_PER_SENDER = 1000
"""Rows one sender may have waiting for an ack (see Quota in the module doc)."""


class BadMessage(BadInput):
    """A send or recv that was refused; nothing was written."""


class QuotaExceeded(BadMessage):
    """A send past the sender's quota of queued messages; nothing was written."""


@attrs.frozen
class BrokerStatistics:
    sent: int
    delivered: int
    redelivered: int
    acked: int
    vacuumed: int
    sweeps: int
    open_leases: int
    waiters: int


# --- sync, on the store thread ---------------------------------------------------------------------


_COLUMNS = "id, sender, recipient, body, sent_at, in_reply_to, delivered_at, redelivered"
_UNBOUND = frozenset({OPERATOR_NAME, MANAGER_AGENT})
"""Inboxes bound to no incarnation: the operator's and the manager's (neither is ever purged)."""
_LIVE_INCARNATION = (
    "incarnation = (SELECT i.id FROM incarnations i "
    "WHERE i.agent = messages.recipient AND i.ended_at IS NULL)"
)


def _insert(
    conn: sqlite3.Connection,
    rows: list[tuple[str, str, str, int | None]],
    now: int,
    quota: int | None = None,
    *,
    broadcast: bool = False,
) -> tuple[list[int], list[str]]:
    """Insert ``rows`` in one transaction; ``(ids, recipients)`` written. With ``quota``, refuse
    (:class:`QuotaExceeded`) if the sender's unacked rows would exceed it, and (:class:`~hivecore.
    topology.RecipientNotAllowed`) a recipient the sender's ``allowedRecipients`` leaves out; a
    ``broadcast`` instead skips those recipients."""
    ids: list[int] = []
    with transaction(conn):
        if quota is not None and rows:
            sender = rows[0][0]
            if broadcast:
                reach = set(topology.broadcast_targets(conn, sender, [r[1] for r in rows]))
                rows = [r for r in rows if r[1] in reach]
            else:
                topology.check_recipients(conn, sender, [r[1] for r in rows])
        if quota is not None and rows:
            sender = rows[0][0]
            (queued,) = conn.execute(
                "SELECT count(*) FROM messages WHERE sender=? AND acked_at IS NULL "
                "AND undelivered_at IS NULL",
                (sender,),
            ).fetchone()
            if queued + len(rows) > quota:
                raise QuotaExceeded(
                    f"queued-message quota: {sender} has {queued} messages its recipients have not "
                    f"acked yet; the quota is {quota} per sender (this send needs {len(rows)} more); "
                    "wait until they are read"
                )
        for sender, recipient, body, in_reply_to in rows:
            bound = None if recipient in _UNBOUND else st.live_incarnation(conn, recipient)
            cur = conn.execute(
                "INSERT INTO messages(sender, recipient, body, sent_at, in_reply_to, incarnation) "
                "VALUES (?,?,?,?,?,?)",
                (sender, recipient, body, now, in_reply_to, bound),
            )
            assert cur.lastrowid is not None
            ids.append(cur.lastrowid)
    return ids, [r[1] for r in rows]


def _may_reply(conn: sqlite3.Connection, message_id: int, sender: str, inbox: str) -> bool:
    """Whether ``sender`` (reading ``inbox``) sent message ``message_id`` or was handed it."""
    row = conn.execute(
        "SELECT 1 FROM messages WHERE id=? AND (sender=? OR (recipient=? AND delivered_at IS NOT NULL))",
        (message_id, sender, inbox),
    ).fetchone()
    return row is not None


def _take(
    conn: sqlite3.Connection, recipient: str, lease: int, live: list[int], limit: int, now: int
) -> list[Delivery]:
    """Hand out up to ``limit`` rows to ``lease`` (see the module doc); one transaction, not
    fsynced (:func:`~hivecore.store.no_fsync`: a mark lost to a power loss means a redelivery)."""
    with no_fsync(conn):
        return _take_now(conn, recipient, lease, live, limit, now)


def _take_now(
    conn: sqlite3.Connection, recipient: str, lease: int, live: list[int], limit: int, now: int
) -> list[Delivery]:
    # an agent's inbox hands out only rows bound to its live incarnation (never an earlier one's)
    bound = "" if recipient in _UNBOUND else f"AND {_LIVE_INCARNATION} "
    with transaction(conn):
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE recipient=? AND acked_at IS NULL "
            f"AND undelivered_at IS NULL {bound}AND ("
            "delivered_at IS NULL OR lease IS NULL OR lease NOT IN (SELECT value FROM json_each(?))"
            ") ORDER BY id LIMIT ?",
            (recipient, json.dumps(live), limit),
        ).fetchall()
        out: list[Delivery] = []
        for r in rows:
            again = r["delivered_at"] is not None or r["redelivered"] > 0
            conn.execute(
                "UPDATE messages SET delivered_at=?, lease=?, redelivered=redelivered+? WHERE id=?",
                (now, lease, 1 if r["delivered_at"] is not None else 0, r["id"]),
            )
            out.append(
                Delivery(
                    id=r["id"],
                    sender=r["sender"],
                    recipient=r["recipient"],
                    body=r["body"],
                    sent_at=r["sent_at"],
                    redelivered=again,
                    in_reply_to=r["in_reply_to"],
                )
            )
    return out


def _release(conn: sqlite3.Connection, ids: list[int], lease: int) -> None:
    """Undo a delivery the client never received (its connection broke before the answer went out)."""
    with no_fsync(conn):
        conn.executemany(
            "UPDATE messages SET delivered_at=NULL, lease=NULL WHERE id=? AND lease=? AND acked_at IS NULL",
            [(i, lease) for i in ids],
        )


def _ack(conn: sqlite3.Connection, recipient: str, lease: int, live: list[int], now: int) -> int:
    others = json.dumps([x for x in live if x != lease])
    with no_fsync(conn):  # an ack lost to a power loss means a redelivery
        cur = conn.execute(
            "UPDATE messages SET acked_at=? WHERE recipient=? AND delivered_at IS NOT NULL "
            "AND acked_at IS NULL AND undelivered_at IS NULL "
            "AND (lease IS NULL OR lease NOT IN (SELECT value FROM json_each(?)))",
            (now, recipient, others),
        )
    return cur.rowcount


def _ack_read(conn: sqlite3.Connection, recipient: str, upto: int, now: int) -> int:
    cur = conn.execute(
        "UPDATE messages SET delivered_at=coalesce(delivered_at, ?), acked_at=? "
        "WHERE recipient=? AND acked_at IS NULL AND id<=?",
        (now, now, recipient, upto),
    )
    return cur.rowcount


def _newest(conn: sqlite3.Connection, recipient: str, limit: int) -> list[Delivery]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE recipient=? ORDER BY id DESC LIMIT ?", (recipient, limit)
    ).fetchall()
    return [
        Delivery(
            id=r["id"],
            sender=r["sender"],
            recipient=r["recipient"],
            body=r["body"],
            sent_at=r["sent_at"],
            redelivered=r["redelivered"] > 0,
            in_reply_to=r["in_reply_to"],
        )
        for r in reversed(rows)
    ]


def _vacuum(conn: sqlite3.Connection, cutoff: int) -> int:
    cur = conn.execute(
        "DELETE FROM messages WHERE coalesce(acked_at, undelivered_at) < ? AND id NOT IN "
        "(SELECT in_reply_to FROM messages WHERE in_reply_to IS NOT NULL)",
        (cutoff,),
    )
    # the de-dup rows of mail from other hives (hivecore/swarm_mail.py): JetStream keeps a message at
    # most 14 days (the mail stream's max age), so none older than VACUUM_AGE can come again
    conn.execute("DELETE FROM swarm_received WHERE received_at < ?", (cutoff,))
    return cur.rowcount


def inbox(conn: sqlite3.Connection, recipient: str) -> list[dict[str, Any]]:
    """Every row of ``recipient`` (tests, debugging), oldest first."""
    return [
        {k: r[k] for k in r.keys()}  # noqa: SIM118  # Row has no iter
        for r in conn.execute("SELECT * FROM messages WHERE recipient=? ORDER BY id", (recipient,))
    ]


# --- the broker ---------------------------------------------------------------------------------------


class Broker:
    """Send, long-poll ``recv``, ``ack_turn``, vacuum. Wake-ups, leases and counters are plain
    state changed only in synchronous code between checkpoints, so the object needs no lock;
    :meth:`run` is the small actor task that vacuums."""

    def __init__(
        self,
        store: Store,
        bus: Publisher,
        agents: Callable[[], Collection[str]],
        *,
        clock: Callable[[], float] = time.time,
        vacuum_interval: float = VACUUM_INTERVAL,
        max_queued: int = MAX_QUEUED_PER_SENDER,
        known: Callable[[], Awaitable[tuple[Collection[str], Collection[str]]]] | None = None,
    ) -> None:
        self.remote: Callable[[str, str, str], Awaitable[int]] | None = None
        """The swarm's outbox (``--swarm``): ``remote(sender, "name@hive", body)`` queues a message
        to another hive and returns its outbox id (:mod:`hivecore.swarm_mail`); None: no swarm."""
        self.incarnation_hooks: list[Callable[[str], Awaitable[None]]] = []
        """Called with the agent's name after its incarnation ended (questions cancel theirs)."""
        self._known = known
        """The agents that exist and those with kept state, for :meth:`reconcile_incarnations`
        at the first :meth:`run` (``None``: no reconciling, tests of the broker alone)."""
        self._store = store
        self._bus = bus
        self._agents = agents
        self._clock = clock
        self.vacuum_interval = vacuum_interval
        self.also_sweep: list[Callable[[], Awaitable[object]]] = []
        """More retention the hourly sweep runs after its own vacuum (the audit trail's and the job
        journal's: :meth:`hivecore.services.audit.AuditLog.sweep`); a failure is logged, not fatal."""
        self.max_queued = max_queued
        self._wake: dict[str, trio.Event] = {}
        self._parked: dict[str, int] = {}
        self._park_changed = trio.Event()
        self._leases: set[int] = set()
        self._last_lease = 0
        self.started_at = clock()
        self._turns: dict[str, tuple[int, float]] = {}
        """Per inbox: the lease its current turn was handed out to and when (until that lease
        acks, polls again or closes): what ``stuck`` measures."""
        self._last_poll: dict[str, float] = {}
        """Per inbox: when a ``recv`` of it last ran (started or returned)."""
        self._sent = self._delivered = self._redelivered = self._acked = self._vacuumed = self._sweeps = 0

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            sent=self._sent,
            delivered=self._delivered,
            redelivered=self._redelivered,
            acked=self._acked,
            vacuumed=self._vacuumed,
            sweeps=self._sweeps,
            open_leases=len(self._leases),
            waiters=sum(self._parked.values()),
        )

    # --- leases ------------------------------------------------------------------------------------

    def open_lease(self) -> int:
        """A new lease id, unique across daemon runs (nanosecond clock, strictly increasing)."""
        lease = max(time.time_ns(), self._last_lease + 1)
        self._last_lease = lease
        self._leases.add(lease)
        return lease

    def close_lease(self, lease: int) -> None:
        """The connection holding ``lease`` ended: its unacked rows become redeliverable."""
        self._leases.discard(lease)
        for inbox, (held, _) in list(self._turns.items()):
            if held == lease:
                del self._turns[inbox]

    def _end_turn(self, inbox: str, lease: int) -> None:
        held = self._turns.get(inbox)
        if held is not None and held[0] == lease:
            del self._turns[inbox]

    def reading(self, inbox: str) -> tuple[float | None, bool, float]:
        """What ``stuck`` needs of ``inbox`` (Unix seconds): when its current turn began (None: not
        in one), whether a ``recv`` of it is waiting now, and when it last polled (the daemon's
        start if it has not)."""
        turn = self._turns.get(inbox)
        return (
            turn[1] if turn is not None else None,
            self.parked(inbox) > 0,
            self._last_poll.get(inbox, self.started_at),
        )

    # --- send -----------------------------------------------------------------------------------------

    def resolve(self, sender: str, to: object) -> list[str]:
        """The inboxes a message from ``sender`` to ``to`` goes to; :class:`BadMessage` if none."""
        if not isinstance(to, str):
            raise BadMessage("recipient must be a string")
        if to in (MANAGER_AGENT, MANAGER_NAME):
            return [MANAGER_AGENT]
        if to == OPERATOR:
            return [OPERATOR]
        agents = set(self._agents())
        if to == BROADCAST:
            inboxes = {MANAGER_AGENT if a == MANAGER_NAME else a for a in agents}
            inboxes.discard(MANAGER_AGENT if sender == MANAGER_NAME else sender)
            return sorted(inboxes)
        try:
            name = validate_name(to)
        except HiveError:
            name = None
        if name is None or name not in agents:
            shown = json.dumps(to[:40], ensure_ascii=False)
            raise BadMessage(
                f"no such recipient {shown}: send to an existing agent, "
                f'"{MANAGER_AGENT}", "{OPERATOR}" or "{BROADCAST}"'
            )
        return [name]

    async def send(
        self,
        sender: str,
        to: object,
        body: object,
        *,
        in_reply_to: int | None = None,
        check: bool = True,
        max_body: int = MAX_BODY,
    ) -> list[int]:
        """Queue ``body`` for ``to`` (fan-out for ``*``); the ids written, one per inbox.

        ``check=False`` (internal senders: kicks and helper events) skips the existence check of an
        agent recipient and the sender's quota, never the body checks. A send past the quota raises
        :class:`QuotaExceeded` (see Quota in the module doc).
        """
        if not isinstance(body, str):
            raise BadMessage("body must be a string")
        size = len(body.encode("utf-8", "surrogatepass"))
        if size > max_body:
            raise BadMessage(
                f"body is {size} bytes; the limit is {max_body}: write longer content to a file in "
                "your state dir and send its path"
            )
        if not body.strip():
            raise BadMessage("body is empty")
        if check and isinstance(to, str) and "@" in to:
            # name@hive: another hive's agent, through the swarm's outbox (the id is the outbox row's)
            if self.remote is None:
                raise BadMessage(f"{to[:60]!r}: this hive is not in a swarm (name@hive needs --swarm)")
            if in_reply_to is not None:
                raise BadMessage("in_reply_to refers to this hive's messages; leave it out for name@hive")
            # hyperhive.allowedRecipients holds for other hives too (list them as name@hive)
            await self._store.call(lambda c: topology.check_recipient(c, sender, to))
            return [await self.remote(sender, to, body)]
        if check:
            inboxes = self.resolve(sender, to)
        else:
            assert isinstance(to, str)
            inboxes = [MANAGER_AGENT if to == MANAGER_NAME else to]
        if not inboxes:
            return []  # a broadcast with nobody else in the hive
        if in_reply_to is not None:
            # only a message the sender sent or was handed: the same answer for one that does not
            # exist and one in another inbox (no oracle over other inboxes)
            inbox = MANAGER_AGENT if sender == MANAGER_NAME else sender
            mine = await self._store.call(lambda c: _may_reply(c, in_reply_to, sender, inbox))
            if not mine:
                raise BadMessage(f"in_reply_to {in_reply_to}: no message you sent or received has that id")
        now = int(self._clock())
        rows = [(sender, r, body, in_reply_to) for r in inboxes]
        quota = self.max_queued if check and sender != OPERATOR else None
        fan_out = to == BROADCAST
        ids, inboxes = await self._store.call(lambda c: _insert(c, rows, now, quota, broadcast=fan_out))
        self._sent += len(ids)
        for message_id, recipient in zip(ids, inboxes, strict=True):
            self._bus.publish(
                MessageSent(
                    id=message_id, from_=sender, to=recipient, body=body, at=now, in_reply_to=in_reply_to
                )
            )
            if (event := self._wake.pop(recipient, None)) is not None:
                event.set()
        return ids

    def announce(self, message_id: int, sender: str, recipient: str, body: str, at: int) -> None:
        """A message another service inserted in its own transaction (a question from another hive:
        :mod:`hivecore.swarm_ask`): tell the dashboards and wake the recipient."""
        self._sent += 1
        self._bus.publish(
            MessageSent(id=message_id, from_=sender, to=recipient, body=body, at=at, in_reply_to=None)
        )
        if (event := self._wake.pop(recipient, None)) is not None:
            event.set()

    async def receive_remote(
        self, write: Callable[[sqlite3.Connection, int], int | None], sender: str, recipient: str, body: str
    ) -> int | None:
        """A message from another hive: ``write(conn, now)`` inserts it and records its envelope in one
        transaction (:func:`hivecore.swarm_mail.receive`); the recipient is woken. The new id, or None
        when ``write`` found the envelope already received (a JetStream redelivery)."""
        now = int(self._clock())
        message_id = await self._store.call(lambda c: write(c, now))
        if message_id is None:
            return None
        self._sent += 1
        self._bus.publish(
            MessageSent(id=message_id, from_=sender, to=recipient, body=body, at=now, in_reply_to=None)
        )
        if (event := self._wake.pop(recipient, None)) is not None:
            event.set()
        return message_id

    async def loose_ends(self, party: Party, parts: tuple[str, ...] | None = None) -> list[LooseEnd]:
        """What is still open for ``party`` (:func:`hivecore.loose_ends.collect`, one store call)."""
        from hivecore import loose_ends  # its parts read other services' tables (questions imports us)

        now = int(self._clock())
        rows: list[LooseEnd] = await self._store.call(lambda c: loose_ends.collect(c, party, now, parts))
        return rows

    async def post(self, sender: str, recipient: str, body: str) -> int:
        """Internal send to exactly one inbox (no existence check, a 64 KiB body cap); the row id."""
        ids = await self.send(sender, recipient, body, check=False, max_body=INTERNAL_MAX_BODY)
        return ids[0]

    # --- incarnations ---------------------------------------------------------------------------------

    async def begin_incarnation(self, agent: str) -> int | None:
        """Bind ``agent``'s inbox to its live incarnation (a spawn; a revive keeps the one its
        destroy kept); its id. The manager's inbox is bound to none (``None``)."""
        if agent in (MANAGER_NAME, MANAGER_AGENT):
            return None
        now = int(self._clock())
        return await self._store.call(lambda c: st.begin_incarnation(c, agent, now))

    async def end_incarnation(self, agent: str, why: str) -> list[st.Undelivered]:
        """End ``agent``'s incarnation (a purge): every message to it not acked yet is never handed
        out again, to it or to a later agent of the same name, and each sender is told
        (:meth:`tell_undelivered`); the rows."""
        now = int(self._clock())
        ended, rows = await self._store.call(lambda c: st.end_incarnation(c, agent, now))
        if ended is not None or rows:
            log.info(
                "broker: incarnation %s of %s ended (%s); %d messages undelivered",
                ended,
                agent,
                why,
                len(rows),
            )
        await self.tell_undelivered(agent, rows, why)
        for hook in self.incarnation_hooks:
            try:
                await hook(agent)
            except Exception:
                log.warning("broker: an incarnation hook failed for %s", agent, exc_info=True)
        return rows

    async def tell_undelivered(self, agent: str, rows: list[st.Undelivered], why: str) -> None:
        """One notice per sender: a helper event (``messages_undelivered``) to an agent or the
        manager, a line in the operator's inbox to the operator; the daemon's own senders get none."""
        by_sender: dict[str, list[st.Undelivered]] = {}
        for row in rows:
            if row.sender != SYSTEM_SENDER:
                by_sender.setdefault(row.sender, []).append(row)
        for sender, mine in by_sender.items():
            ids = [r.id for r in mine]
            note = f"{agent} will never read {len(ids)} message{'s' if len(ids) != 1 else ''} you sent: {why}"
            if sender == OPERATOR:
                listed = ", ".join(str(i) for i in ids[:20]) + (", …" if len(ids) > 20 else "")
                body = f"not delivered: {note} (message ids {listed})"
            else:
                event = MessagesUndelivered(
                    agent=agent, ids=ids, delivered=[r.id for r in mine if r.delivered], note=note
                )
                body = helper_to_body(event)
            try:
                await self.post(SYSTEM_SENDER, sender, body)
            except Exception:
                log.warning(
                    "broker: could not tell %s its messages to %s were undelivered",
                    sender,
                    agent,
                    exc_info=True,
                )

    async def reconcile_incarnations(self, existing: Collection[str], kept: Collection[str]) -> None:
        """At start: every agent that exists has a live incarnation; one whose name neither exists
        nor has kept state (purged while the daemon was down, or a crash between purge steps) is
        ended, its senders told."""
        live = await self._store.call(st.live_incarnations)
        for name in sorted(set(existing) - set(live)):
            await self.begin_incarnation(name)
        for name in sorted(set(live) - set(existing) - set(kept)):
            await self.end_incarnation(name, f"{name} was purged")

    # --- recv / ack -----------------------------------------------------------------------------------

    async def recv(
        self, recipient: str, *, lease: int, wait_seconds: float = 0.0, max: int = 1
    ) -> list[Delivery]:
        """Up to ``max`` messages for ``recipient``; with none, wait up to ``wait_seconds`` for one.

        ``wait_seconds`` is capped at 180 and ``max`` at 32 (larger values are clamped); negative or
        zero ``max`` and negative waits are refused.
        """
        if not wait_seconds >= 0:
            raise BadMessage("wait_seconds must be 0 or more")
        if max < 1:
            raise BadMessage("max must be at least 1")
        limit = min(max, MAX_RECV_BATCH)
        deadline = trio.current_time() + min(wait_seconds, MAX_RECV_WAIT)
        self._end_turn(recipient, lease)  # polling again: the reader is done with its last batch
        self._last_poll[recipient] = self._clock()
        try:
            return await self._recv(recipient, lease, limit, deadline)
        finally:
            self._last_poll[recipient] = self._clock()

    async def _recv(self, recipient: str, lease: int, limit: int, deadline: float) -> list[Delivery]:
        while True:
            event = self._wake.get(recipient)
            if event is None:
                event = self._wake[recipient] = trio.Event()
            live = sorted(self._leases | {lease})
            now = int(self._clock())
            got = await self._store.call(
                partial(_take, recipient=recipient, lease=lease, live=live, limit=limit, now=now)
            )
            if got:
                for d in got:
                    self._delivered += 1
                    self._redelivered += d.redelivered
                    self._bus.publish(
                        MessageDelivered(
                            id=d.id,
                            from_=d.sender,
                            to=d.recipient,
                            body=d.body,
                            at=now,
                            redelivered=d.redelivered,
                        )
                    )
                self._turns.setdefault(recipient, (lease, self._clock()))
                return got
            if trio.current_time() >= deadline:
                return []
            self._park(recipient, +1)
            try:
                with trio.move_on_at(deadline):
                    await event.wait()
            finally:
                self._park(recipient, -1)

    def _park(self, recipient: str, delta: int) -> None:
        count = self._parked.get(recipient, 0) + delta
        if count:
            self._parked[recipient] = count
        else:
            self._parked.pop(recipient, None)
        self._park_changed.set()
        self._park_changed = trio.Event()

    def parked(self, recipient: str) -> int:
        """How many ``recv`` calls are waiting for a message to ``recipient`` right now."""
        return self._parked.get(recipient, 0)

    async def wait_parked(self, recipient: str) -> None:
        """Return once at least one ``recv`` is waiting for ``recipient`` (tests, benchmarks)."""
        while not self._parked.get(recipient):
            await self._park_changed.wait()

    async def release(self, lease: int, messages: list[Delivery]) -> None:
        """Put back rows whose ``recv`` answer never reached the client."""
        ids = [m.id for m in messages]
        for inbox in {m.recipient for m in messages}:
            self._end_turn(inbox, lease)
        await self._store.call(lambda c: _release(c, ids, lease))

    async def ack_turn(self, recipient: str, *, lease: int) -> int:
        """Ack the delivered rows of ``recipient`` not held by another open lease; how many."""
        live = sorted(self._leases)
        now = int(self._clock())
        self._end_turn(recipient, lease)
        count = await self._store.call(lambda c: _ack(c, recipient, lease, live, now))
        self._acked += count
        return count

    async def read(self, recipient: str, limit: int) -> list[Delivery]:
        """The newest ``limit`` rows of ``recipient`` (acked or not), oldest first, and ack them as
        read (:meth:`ack_read`): an inbox nobody ``recv``s, the operator's."""
        rows = await self._store.call(lambda c: _newest(c, recipient, limit))
        if rows:
            await self.ack_read(recipient, rows[-1].id)
        return rows

    async def ack_read(self, recipient: str, upto: int) -> int:
        """``recipient``'s reader (the operator, on the dashboard) has seen every row up to id
        ``upto``: mark them delivered and acked; how many were not yet."""
        now = int(self._clock())
        count = await self._store.call(lambda c: _ack_read(c, recipient, upto, now))
        self._acked += count
        return count

    # --- vacuum -------------------------------------------------------------------------------------

    async def vacuum(self, max_age: float = VACUUM_AGE) -> int:
        cutoff = int(self._clock() - max_age)
        deleted = await self._store.call(lambda c: _vacuum(c, cutoff))
        self._vacuumed += deleted
        self._sweeps += 1
        if deleted:
            log.info("broker: vacuumed %d acked messages older than %d days", deleted, max_age // 86400)
        return deleted

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile incarnations (the first run only, before any job can spawn or purge), then
        vacuum at start and every :attr:`vacuum_interval` seconds, until cancelled."""
        if self._known is not None:
            known, self._known = self._known, None
            try:
                existing, kept = await known()
                await self.reconcile_incarnations(existing, kept)
            except Exception:
                log.exception("broker: could not reconcile incarnations at start")
        task_status.started(self)
        while True:
            try:
                await self.vacuum()
            except Exception:
                log.warning("broker: vacuum failed; retrying in %g s", self.vacuum_interval, exc_info=True)
            for sweep in self.also_sweep:
                try:
                    await sweep()
                except Exception:
                    log.warning(
                        "sweep %r failed; retrying in %g s", sweep, self.vacuum_interval, exc_info=True
                    )
            await trio.sleep(self.vacuum_interval)
