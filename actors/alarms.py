"""alarms: reads what the alarm conditions need, evaluates them (:func:`hivecore.alarms.evaluate`,
pure) and raises/clears alarms on the bus (``alarm_raised`` / ``alarm_cleared``); the crash-loop
hold.

Every ``interval`` seconds (and at once after a hold or a release) one pass reads, in order: each
inbox's unacked mail and the pending approvals (one store call), the views' stuck rows (cached),
the holds (in memory), the state dir's and the nix store's filesystems (a thread) and what other
parts report themselves (:meth:`AlarmWatch.add_source`: notification delivery). Raised alarms are
:meth:`AlarmWatch.alarms` (``server_warnings`` in ``/api/state``, the metrics' gauge).

Crash-loop hold: crash_watch calls :meth:`AlarmWatch.record_crash` synchronously as it judges a
crash; the K-th crash within M minutes **holds** the agent at once (in memory, then in the
``held_agents`` table). A held agent is not started again by anyone (start, restart, a rebuild or
an approval leaves it stopped; see :meth:`Holds.refuse_start`) until the operator releases it
(``release NAME``). Crash times live in memory only: a daemon restart forgets them, not the holds.

The holds are plain synchronous state (:class:`Holds`), read by the job services between
checkpoints; only this actor and ``release`` change them.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.event_bus import EventBus
from hivecore import alarms as al
from hivecore import store as st
from hivecore.audit import Recorder, record_quietly
from hivecore.models import ContainerView
from hivecore.names import OPERATOR_NAME
from hivecore.store import Store
from hivecore.wire.events import AlarmCleared, AlarmRaised

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 15.0
NIX_STORE = "/nix/store"


# --- sqlite (run on the store thread) ----------------------------------------------------------------


def read_inboxes(conn: sqlite3.Connection) -> dict[str, al.Inbox]:
    """Unacked mail per recipient (the operator's inbox aside: the operator reads it on the dashboard)."""
    out: dict[str, al.Inbox] = {}
    for r in conn.execute(
        "SELECT recipient, count(*) AS n, min(sent_at) AS oldest, "
        "min(CASE WHEN delivered_at IS NULL THEN sent_at END) AS unread, "
        "(SELECT m2.sender FROM messages m2 WHERE m2.recipient = m.recipient AND m2.acked_at IS NULL "
        " AND m2.undelivered_at IS NULL ORDER BY m2.id LIMIT 1) AS sender "
        "FROM messages m WHERE acked_at IS NULL AND undelivered_at IS NULL AND recipient != ? "
        "GROUP BY recipient",
        (OPERATOR_NAME,),
    ):
        out[r["recipient"]] = al.Inbox(
            count=r["n"],
            oldest_unacked=float(r["oldest"]),
            oldest_unread=float(r["unread"]) if r["unread"] is not None else None,
            oldest_from=r["sender"] or "",
        )
    return out


def read_pending(conn: sqlite3.Connection) -> list[tuple[int, str, float]]:
    return [
        (r["id"], r["agent"], float(r["at"]))
        for r in conn.execute(
            "SELECT id, agent, CAST(strftime('%s', requested_at) AS REAL) AS at FROM approvals "
            "WHERE status = 'pending' AND requested_at IS NOT NULL ORDER BY id"
        )
        if r["at"] is not None
    ]


@attrs.frozen
class AlarmStatistics:
    passes: int
    raised: int
    """Alarms raised now (the metrics' gauge)."""
    raised_total: int
    cleared_total: int
    holds: int


AlarmSource = Callable[[], list[al.Alarm]]


class AlarmWatch:
    """The actor (module doc). ``views`` gives the cached rows; ``disk_paths`` the filesystems
    watched as ``(label, path)``; ``clock`` is wall-clock Unix seconds."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        views: Callable[[], Mapping[str, ContainerView]],
        thresholds: al.Thresholds | None = None,
        *,
        disk_paths: list[tuple[str, str]] | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._views = views
        self.thresholds = thresholds or al.Thresholds()
        self.disk_paths = disk_paths if disk_paths is not None else [("nix store", NIX_STORE)]
        self.interval = interval
        self._clock = clock
        self.holds = al.Holds()
        self._raised: dict[str, al.Alarm] = {}
        self._sources: list[AlarmSource] = []
        self._wake = trio.Event()
        self._passes = 0
        self._raised_total = 0
        self._cleared_total = 0
        self._loaded = False
        self._pending_writes: list[al.Hold] = []
        self.record: Recorder | None = None
        """Set by the daemon to the audit trail's ``record``: each raise, clear and hold is a row."""

    # --- what others read ------------------------------------------------------------------------

    def alarms(self) -> list[al.Alarm]:
        """The raised alarms, crit first, then oldest first."""
        return sorted(self._raised.values(), key=lambda a: (a.level != "crit", a.since, a.key))

    def statistics(self) -> AlarmStatistics:
        return AlarmStatistics(
            self._passes, len(self._raised), self._raised_total, self._cleared_total, len(self.holds.all())
        )

    def add_source(self, source: AlarmSource) -> None:
        """``source()`` returns alarms another part raises itself; read at every pass (sync, no I/O)."""
        self._sources.append(source)

    def request_pass(self) -> None:
        """Evaluate again soon (never blocks)."""
        self._wake.set()

    # --- crash loop ------------------------------------------------------------------------------

    def record_crash(self, name: str) -> None:
        """crash_watch judged a crash of ``name`` (synchronous: a hold is in force before any
        restart job can run)."""
        now = self._clock()
        t = self.thresholds
        crashes = self.holds.crashes.setdefault(name, collections.deque(maxlen=max(1, t.crash_loop_crashes)))
        crashes.append(now)
        if self.holds.get(name) is None and al.crash_loop(crashes, now, t):
            hold = al.Hold(name, al.crash_loop_reason(t), now)
            self.holds.hold(hold)
            self._pending_writes.append(hold)
            log.error("alarms: %s is held stopped: %s", name, hold.reason)
            self.request_pass()

    async def release(self, name: str) -> bool:
        """Lift ``name``'s hold (the operator's ``release``); whether it was held."""
        hold = self.holds.discard(name)
        self._pending_writes = [h for h in self._pending_writes if h.agent != name]
        removed = await self._store.call(lambda c: st.delete_hold(c, name))
        if hold is not None or removed:
            log.info("alarms: %s released by the operator", name)
            await self.evaluate()
        return hold is not None or removed > 0

    # --- evaluation ------------------------------------------------------------------------------

    async def observe(self) -> al.Observation:
        """Read everything :func:`hivecore.alarms.evaluate` needs (store, views, disks)."""
        while self._pending_writes:
            hold = self._pending_writes[0]
            if self.holds.get(hold.agent) is not hold:  # released or destroyed since: not in force
                self._pending_writes.pop(0)
                continue
            await self._store.call(
                partial(st.write_hold, agent=hold.agent, reason=hold.reason, since=hold.since)
            )
            if self._pending_writes and self._pending_writes[0] is hold:
                self._pending_writes.pop(0)
            await self._audit("agent_held", {"agent": hold.agent, "reason": hold.reason})

        def read(conn: sqlite3.Connection) -> tuple[dict[str, al.Inbox], list[tuple[int, str, float]]]:
            return read_inboxes(conn), read_pending(conn)

        inboxes, pending = await self._store.call(read)
        paths = list(self.disk_paths)
        disks = await trio.to_thread.run_sync(al.distinct_disks, paths) if paths else []
        rows = self._views()
        extra = [a for source in self._sources for a in source()]
        return al.Observation(
            now=self._clock(),
            inboxes=inboxes,
            stuck={n: v.stuck for n, v in rows.items() if v.stuck},
            not_reading=frozenset(n for n, v in rows.items() if not v.running or v.paused),
            holds=self.holds.all(),
            disks=disks,
            pending_approvals=pending,
            extra=extra,
        )

    async def evaluate(self) -> list[al.Alarm]:
        """One pass: observe, evaluate, publish what changed; the alarms raised now."""
        obs = await self.observe()
        current = al.carry_since(self._raised, al.evaluate(obs, self.thresholds), obs.now)
        raised, cleared = al.diff(self._raised, current)
        self._raised = current
        for alarm in raised:
            self._raised_total += 1
            log.warning("alarm raised: %s", alarm.message)
            self._bus.publish(
                AlarmRaised(
                    key=alarm.key,
                    alarm_kind=alarm.kind,
                    level=alarm.level,
                    message=alarm.message,
                    agent=alarm.agent,
                    since=alarm.since,
                )
            )
        for alarm in cleared:
            self._cleared_total += 1
            log.info("alarm cleared: %s", alarm.key)
            self._bus.publish(AlarmCleared(key=alarm.key, alarm_kind=alarm.kind, agent=alarm.agent))
        for alarm in raised:
            await self._audit(
                "alarm_raised",
                {"key": alarm.key, "level": alarm.level, "agent": alarm.agent, "message": alarm.message},
            )
        for alarm in cleared:
            await self._audit("alarm_cleared", {"key": alarm.key, "agent": alarm.agent})
        self._passes += 1
        return self.alarms()

    async def _audit(self, action: str, args: Mapping[str, Any]) -> None:
        await record_quietly(self.record, action, args, log)

    async def load(self) -> None:
        """Read the holds the store kept (once, at the first :meth:`run`)."""
        holds = [al.Hold(*row) for row in await self._store.call(st.read_holds)]
        for hold in self.holds.all():  # a hold judged before the load stays
            holds = [h for h in holds if h.agent != hold.agent] + [hold]
        self.holds.load(holds)
        self._loaded = True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Load the holds, pass once, then serve: a pass every ``interval`` s and on request."""
        if not self._loaded:
            await self.load()
        await self._pass()
        task_status.started(self)
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            await self._pass()

    async def _pass(self) -> None:
        self._wake = trio.Event()
        try:
            await self.evaluate()
        except Exception:
            # one bad pass (a store hiccup) must not stop the watch
            log.exception("alarms: evaluation failed; trying again in %g s", self.interval)


def default_disk_paths(state_dir: Path) -> list[tuple[str, str]]:
    return [("state dir", str(state_dir)), ("nix store", NIX_STORE)]
