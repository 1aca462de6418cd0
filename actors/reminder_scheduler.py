"""The reminder scheduler: takes ``remind`` requests and delivers each reminder when it is due.

Records and rules: :mod:`hivecore.reminders`; rows: :mod:`hivecore.reminder_store` (store migration
10; a reminder survives a daemon restart and fires after it, at once if it fell due meanwhile).

The actor (:meth:`ReminderScheduler.run`) sleeps until the earliest ``fire_at`` in the store, or
until a new reminder wakes it (an event set right after the row is committed; no polling loop; the
sleep is capped at :data:`MAX_SLEEP` so a wall-clock jump is noticed). Each due reminder is
delivered through :meth:`~hivecore.services.broker.Broker.post` into its caller's inbox, from
``reminder``; a text written to a file first goes through :func:`hivecore.agentfs.write_below`
(never a link). A delivery that fails counts ``attempt_count``, keeps ``last_error`` and is retried
after :func:`~hivecore.reminders.backoff`; after :data:`~hivecore.reminders.MAX_ATTEMPTS` it is
``failed``. Delivery is at least once: a crash between the message's commit and the row's mark
delivers it again after the restart.

A reminder of a purged caller (its incarnation ended) is dropped when it falls due, never delivered
to a later agent of the same name. Every change is an event (``reminder_added``, ``reminder_sent``,
``reminder_failed``, ``reminder_removed``) and asks the views for a rescan of the caller's row
(its ``pending_reminders``).
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from hivecore import agentfs
from hivecore import reminder_store as rs
from hivecore import reminders as rm
from hivecore.audit import Recorder, record_quietly
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, REMINDER_SENDER
from hivecore.store import Store
from hivecore.wire.events import Event, ReminderAdded, ReminderFailed, ReminderRemoved, ReminderSent

log = logging.getLogger(__name__)

MAX_SLEEP = 3600.0
"""The longest single sleep (seconds): past it the next due time is read again."""
BATCH = 100
"""Reminders tried per wake-up (more due ones are taken at once after)."""
VACUUM_INTERVAL = 3600.0


class Publisher(Protocol):
    """The event bus (:class:`actors.event_bus.EventBus`)."""

    def publish(self, event: Event) -> Any: ...


Post = Callable[[str, str, str], Awaitable[int]]
"""``post(sender, inbox, body)`` → the message id (:meth:`Broker.post`)."""


class ReminderScheduler:
    def __init__(
        self,
        store: Store,
        post: Post,
        bus: Publisher,
        agents_root: Path,
        state_dir: Callable[[str], str],
        *,
        clock: Callable[[], float] = time.time,
        rescan: Callable[[list[str]], None] | None = None,
        max_pending: int = rm.MAX_PENDING_PER_AGENT,
    ) -> None:
        """``agents_root``: ``<state>/agents`` (a caller's state dir is ``<n>/state`` below it);
        ``state_dir(name)``: that dir as the caller sees it (:func:`hivecore.kick.agent_state_dir`)."""
        self._store = store
        self._post = post
        self._bus = bus
        self._agents_root = agents_root
        self._state_dir = state_dir
        self.clock = clock
        self.rescan = rescan
        self.max_pending = max_pending
        self._wake = trio.Event()
        self._last_vacuum = float("-inf")
        self._recent: dict[str, collections.deque[float]] = {}
        self.sent = self.failed = self.dropped = self.wakeups = 0
        self.record: Recorder | None = None
        """Set by the daemon to the audit trail's ``record``: each failed delivery is a daemon row."""

    # --- the verbs --------------------------------------------------------------------------------

    async def remind(
        self,
        agent: str,
        message: str,
        delay_seconds: float | None = None,
        at: float | None = None,
        file_path: str | None = None,
    ) -> rm.Reminder:
        """A new reminder of ``agent`` (``hm1nd`` for the manager); checked fields (the request
        record's). :class:`BadInput` for both/neither of ``delay_seconds``/``at``, ``at`` in the
        past, a ``file_path`` outside the state dir; :class:`~hivecore.store.QuotaExceeded` past
        :data:`~hivecore.reminders.MAX_PENDING_PER_AGENT` pending."""
        now = self.clock()
        due = rm.due_time(delay_seconds, at, now)
        recent = self._recent.setdefault(agent, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= rm.MAX_REMINDS_PER_MINUTE:
            raise Refused(
                f"remind: at most {rm.MAX_REMINDS_PER_MINUTE} reminders a minute per agent; "
                "this one was not set (try again in a minute)"
            )
        if file_path is not None:
            rm.state_relative(file_path, self._state_dir(agent))  # refused now, not when it fires
        quota = self.max_pending
        row = await self._store.call(lambda c: rs.insert(c, agent, message, file_path, due, now, quota))
        recent.append(now)
        log.info("reminder %d for %s due in %.0f s", row.id, agent, due - now)
        self._wake.set()
        self._bus.publish(ReminderAdded(reminder=_preview(row)))
        self._changed(agent)
        return row

    async def count_pending(self, agent: str) -> int:
        counts = await self._store.call(lambda c: rs.pending_counts(c, [agent]))
        return counts[agent]

    async def listed(self, agent: str | None = None, *, done: bool = False) -> list[rm.Reminder]:
        """Pending reminders (``agent``'s only, when given), earliest first; ``done``: also the
        sent and failed ones still kept."""
        return await self._store.call(lambda c: rs.listed(c, agent, done=done))

    async def cancel(self, reminder_id: int) -> rm.Reminder:
        """Delete a pending reminder (the operator's); :class:`~hivecore.reminders.UnknownReminder`
        when there is no pending one of that id (never was, sent, failed or cancelled already)."""
        row = await self._store.call(lambda c: rs.delete(c, reminder_id))
        if row is None:
            raise rm.UnknownReminder(reminder_id)
        log.info("reminder %d of %s cancelled", row.id, row.agent)
        self._bus.publish(ReminderRemoved(id=row.id, agent=row.agent, reason="cancelled"))
        self._changed(row.agent)
        return row

    async def loose_ends(self, agent: str) -> rm.LooseReminders:
        """``agent``'s reminders not delivered yet: due (retrying) and still to come."""
        now = self.clock()
        return await self._store.call(lambda c: rs.loose_ends(c, agent, now))

    async def pending_counts(self, names: list[str]) -> dict[str, int]:
        return await self._store.call(lambda c: rs.pending_counts(c, names))

    async def incarnation_ended(self, agent: str) -> None:
        """``agent`` was purged (:attr:`Broker.incarnation_hooks`): drop its pending reminders now
        (each a ``reminder_removed`` event, reason ``dropped``)."""
        for r in await self._store.call(rs.orphans):
            if r.agent == agent:
                await self._drop(r)
        self._changed(agent)

    def wake(self) -> None:
        """Read the next due time again now (after the clock was changed; tests)."""
        self._wake.set()

    def _changed(self, agent: str) -> None:
        if self.rescan is not None:
            self.rescan([agent])

    # --- the actor --------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due reminders, then sleep until the next is due or a new one arrives; until
        cancelled. A failing store read is logged and retried after a pause (never a crash loop)."""
        task_status.started(self)
        while True:
            wake = self._wake = trio.Event()  # before the read: a remind after it wakes this wait
            self.wakeups += 1
            try:
                more = await self.fire_due()
                nxt = await self._store.call(rs.next_fire)
                await self._vacuum()
            except Exception:
                log.exception("reminders: could not read or deliver due reminders; retrying in 10 s")
                more, nxt = False, self.clock() + 10
            if more:
                continue
            sleep = MAX_SLEEP if nxt is None else min(max(nxt - self.clock(), 0.0), MAX_SLEEP)
            with trio.move_on_after(sleep):
                await wake.wait()

    async def fire_due(self) -> bool:
        """Try every reminder due now (at most :data:`BATCH`); whether more may be due."""
        now = self.clock()
        due = await self._store.call(lambda c: rs.take_due(c, now, BATCH))
        for item in due:
            await self._fire(item)
        return len(due) >= BATCH

    async def _fire(self, item: rs.Due) -> None:
        r = item.reminder
        if item.dead:
            await self._drop(r)
            return
        try:
            message_id = await self.deliver(r)
        except Exception as exc:
            await self._failed(r, exc)
            return
        now = self.clock()
        await self._store.call(lambda c: rs.mark_sent(c, r.id, now))
        self.sent += 1
        self._bus.publish(ReminderSent(id=r.id, agent=r.agent, message_id=message_id, at=now))
        self._changed(r.agent)

    async def _drop(self, r: rm.Reminder) -> None:
        """Delete a reminder of a purged caller (never delivered to a later agent of its name)."""
        if await self._store.call(lambda c: rs.delete(c, r.id)) is not None:
            self.dropped += 1
            log.info("reminder %d dropped: %s was purged", r.id, r.agent)
            self._bus.publish(ReminderRemoved(id=r.id, agent=r.agent, reason="dropped"))

    async def deliver(self, r: rm.Reminder) -> int:
        """Post reminder ``r`` to its caller's inbox (its text to a file first when it goes to one);
        the message id. Raises what failed."""
        body = r.message
        if rm.written_to_file(r.message, r.file_path):
            seen = self._state_dir(r.agent)
            parts = (
                rm.state_relative(r.file_path, seen) if r.file_path is not None else rm.default_parts(r.id)
            )
            data = r.message.encode("utf-8", "surrogatepass")
            root = self._agents_root
            await trio.to_thread.run_sync(agentfs.write_below, root, (r.agent, "state"), parts, data)
            body = rm.pointer(seen.rstrip("/") + "/" + "/".join(parts), len(data))
        inbox = MANAGER_AGENT if r.agent == MANAGER_NAME else r.agent
        return await self._post(REMINDER_SENDER, inbox, body)

    async def _failed(self, r: rm.Reminder, exc: Exception) -> None:
        error = _describe(exc)
        attempts = r.attempt_count + 1
        retry_at = None if attempts >= rm.MAX_ATTEMPTS else self.clock() + rm.backoff(attempts)
        row = await self._store.call(lambda c: rs.mark_failed(c, r.id, error, retry_at))
        self.failed += 1
        if row is None:  # the operator cancelled it while it was being delivered
            log.info(
                "reminder %d for %s: delivery failed (%s); it was cancelled meanwhile", r.id, r.agent, error
            )
            return
        log.warning(
            "reminder %d for %s: delivery %d failed (%s); %s",
            r.id,
            r.agent,
            attempts,
            error,
            "giving up" if retry_at is None else f"retrying in {retry_at - self.clock():.0f} s",
        )
        self._bus.publish(ReminderFailed(reminder=_preview(row)))
        args = {
            "id": r.id,
            "agent": r.agent,
            "attempt": attempts,
            "error": error,
            "gave_up": retry_at is None,
        }
        await record_quietly(self.record, "reminder_failed", args, log)
        if retry_at is None:
            self._changed(r.agent)

    async def _vacuum(self) -> None:
        now = self.clock()
        if now - self._last_vacuum < VACUUM_INTERVAL:
            return
        self._last_vacuum = now
        cutoff = now - rm.KEEP_DONE

        def sweep(conn: sqlite3.Connection) -> int:
            return rs.vacuum(conn, cutoff)

        gone = await self._store.call(sweep)
        if gone:
            log.info("reminders: vacuumed %d sent or failed rows", gone)
        for r in await self._store.call(rs.orphans):  # purged callers' reminders not due yet
            await self._drop(r)


def _preview(r: rm.Reminder) -> rm.Reminder:
    return r if len(r.message) <= rm.PREVIEW else attrs.evolve(r, message=r.message[: rm.PREVIEW])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HiveError | BadInput):
        return str(exc)
    if isinstance(exc, OSError):
        name = exc.filename2 or exc.filename  # a rename's target, not the temp file beside it
        return f"{type(exc).__name__}: {exc.strerror or exc}" + (f" ({name})" if name else "")
    return f"{type(exc).__name__}: {exc}"
