"""The prompt scheduler (SCH3DUL3S): fires scheduled prompts when due and records each target's result.

Records and rules: :mod:`hivecore.schedules`; rows: :mod:`hivecore.schedule_store` (store migration
13; schedules survive a restart: an overdue one-shot fires as the daemon starts, a recurring one
fires once and then keeps its interval from then, missed firings are not made up).

Like the reminder scheduler, :meth:`PromptScheduler.run` sleeps until the earliest ``next_fire_at``
or until a new or approved schedule wakes it (no polling; at most :data:`MAX_SLEEP` per sleep).
A firing sends the body as the operator to every target not cancelled: a running agent gets it
(``sent (message 42)``); a stopped or unknown one is recorded (``not sent: coder is not running``),
never an error of the actor; a failed send is recorded with its error. Events: ``schedule_added``,
``schedule_fired`` (the schedule with every target's result), ``schedule_cancelled``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from hivecore import schedule_store as ss
from hivecore import schedules as sc
from hivecore.audit import Recorder, record_quietly
from hivecore.errors import HiveError
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME
from hivecore.store import Store
from hivecore.wire.events import Event, ScheduleAdded, ScheduleCancelled, ScheduleFired

log = logging.getLogger(__name__)

MAX_SLEEP = 3600.0
VACUUM_INTERVAL = 3600.0

Send = Callable[[str, str, str], Awaitable[list[int]]]
"""``send(sender, to, body)`` → the queued message ids (:meth:`Broker.send`)."""


class Publisher(Protocol):
    def publish(self, event: Event) -> Any: ...


class PromptScheduler:
    def __init__(
        self,
        store: Store,
        send: Send,
        bus: Publisher,
        running: Callable[[str], bool | None],
        *,
        clock: Callable[[], float] = time.time,
        max_active: int = sc.MAX_ACTIVE,
    ) -> None:
        """``running(name)``: whether agent ``name`` runs now (``None``: there is no such agent)."""
        self._store = store
        self._send = send
        self._bus = bus
        self._running = running
        self.clock = clock
        self.max_active = max_active
        self._wake = trio.Event()
        self._last_vacuum = float("-inf")
        self.firings = self.wakeups = 0
        self.record: Recorder | None = None
        """Set by the daemon to the audit trail's ``record``: each firing (results per target) is a row."""

    # --- the verbs --------------------------------------------------------------------------------

    async def schedule(
        self,
        targets: list[str],
        body: str,
        every: str | None,
        at: str | None,
        description: str | None = None,
        *,
        owner: str = OPERATOR_NAME,
        state: sc.State = "active",
    ) -> sc.Schedule:
        """A new schedule (checked fields; every target must be an agent of this hive).
        :class:`~hivecore.errors.BadInput` for both/neither of ``every``/``at``, ``at`` in the past,
        an unknown target; :class:`~hivecore.store.QuotaExceeded` past the limit."""
        now = self.clock()
        first, interval = sc.first_fire(every, at, now)
        for t in targets:
            if self._running(t) is None:
                raise HiveError(f'no agent "{t}" in this hive to schedule a prompt to')
        quota = self.max_active

        def write(conn: Any) -> sc.Schedule:
            return ss.insert(
                conn,
                owner=owner,
                body=body,
                targets=targets,
                interval=interval,
                first_fire=first,
                now=now,
                description=description,
                state=state,
                quota=quota,
            )

        s = await self._store.call(write)
        log.info("schedule %d (%s): %s", s.id, s.state, sc.summary(s))
        self._bus.publish(ScheduleAdded(schedule=s))
        self._wake.set()
        return s

    async def listed(self, *, done: bool = False) -> list[sc.Schedule]:
        return await self._store.call(lambda c: ss.listed(c, done=done))

    async def get(self, schedule_id: int) -> sc.Schedule:
        s = await self._store.call(lambda c: ss.get(c, schedule_id))
        if s is None:
            raise sc.UnknownSchedule(schedule_id)
        return s

    async def cancel(self, schedule_id: int, target: str | None = None) -> sc.Schedule:
        """Cancel a schedule, or one target of it (see :func:`hivecore.schedule_store.cancel`)."""
        now = self.clock()
        s = await self._store.call(lambda c: ss.cancel(c, schedule_id, target, now))
        log.info("schedule %d: %s cancelled", schedule_id, f"target {target}" if target else "every target")
        self._bus.publish(ScheduleCancelled(schedule=s, target=target))
        self._wake.set()
        return s

    async def set_source(self, schedule_id: int, source: str) -> None:
        await self._store.call(lambda c: ss.set_source(c, schedule_id, source))

    async def by_source(self, source: str) -> sc.Schedule | None:
        return await self._store.call(lambda c: ss.by_source(c, source))

    async def activate(self, schedule_id: int) -> sc.Schedule:
        """An approved request becomes active (:func:`hivecore.schedule_store.activate`)."""
        now = self.clock()
        s = await self._store.call(lambda c: ss.activate(c, schedule_id, now))
        self._bus.publish(ScheduleAdded(schedule=s))
        self._wake.set()
        return s

    def wake(self) -> None:
        self._wake.set()

    # --- the actor --------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due schedules, then sleep until the next is due or one is added; until cancelled."""
        task_status.started(self)
        while True:
            wake = self._wake = trio.Event()
            self.wakeups += 1
            try:
                await self.fire_due()
                nxt = await self._store.call(ss.next_fire)
                await self._vacuum()
            except Exception:
                log.exception("schedules: could not read or fire due schedules; retrying in 10 s")
                nxt = self.clock() + 10
            sleep = MAX_SLEEP if nxt is None else min(max(nxt - self.clock(), 0.0), MAX_SLEEP)
            with trio.move_on_after(sleep):
                await wake.wait()

    async def fire_due(self) -> None:
        now = self.clock()
        for s in await self._store.call(lambda c: ss.due(c, now)):
            await self.fire(s)

    async def fire(self, s: sc.Schedule) -> sc.Schedule:
        """Send ``s``'s body to each of its live targets; record and publish the results."""
        results: dict[str, str] = {}
        for t in s.targets:
            if t.cancelled_at is None:
                results[t.target] = await self._deliver(t.target, s.body)
        now = self.clock()
        fired_at = s.next_fire_at if s.next_fire_at is not None else now
        nxt = sc.next_after(fired_at, s.interval_seconds, now)
        done = await self._store.call(lambda c: ss.record(c, s.id, results, now, nxt))
        self.firings += 1
        log.info("schedule %d fired: %s", s.id, "; ".join(f"{k}: {v}" for k, v in results.items()))
        self._bus.publish(ScheduleFired(schedule=done))
        await record_quietly(self.record, "schedule_fired", {"id": s.id, "results": results}, log)
        return done

    async def _deliver(self, target: str, body: str) -> str:
        running = self._running(target)
        if running is None:
            return f"not sent: no agent {target} in this hive"
        if not running:
            return f"not sent: {target} is not running"
        inbox = MANAGER_AGENT if target == MANAGER_NAME else target
        try:
            ids = await self._send(OPERATOR_NAME, inbox, body)
        except Exception as exc:
            return f"failed: {exc}" if isinstance(exc, HiveError) else f"failed: {type(exc).__name__}: {exc}"
        return f"sent (message {ids[0]})" if ids else "sent"

    async def _vacuum(self) -> None:
        now = self.clock()
        if now - self._last_vacuum < VACUUM_INTERVAL:
            return
        self._last_vacuum = now
        cutoff = now - sc.KEEP_DONE
        gone = await self._store.call(lambda c: ss.vacuum(c, cutoff))
        if gone:
            log.info("schedules: vacuumed %d finished schedules", gone)
