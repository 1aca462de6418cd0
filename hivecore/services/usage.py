"""The usage service: records the turns agents report and gives the views actor each agent's usage
and liveness for its row (:mod:`hivecore.usage` has the records, the sqlite and the stuck rule).

A report is refused past :data:`~hivecore.usage.MAX_REPORTS_PER_MINUTE` per agent (a sliding
minute), so a hostile agent can neither flood the store thread nor grow the database (rows are
capped per agent). Each accepted report asks for a rescan of the agent's row, so its last-turn age,
turns, tokens and cost today change on the dashboard at once.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable, Collection

from hivecore import reminder_store, topology, usage
from hivecore.errors import Refused
from hivecore.names import MANAGER_AGENT, MANAGER_NAME
from hivecore.services.broker import Broker
from hivecore.store import Store, no_fsync


class Usage:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        clock: Callable[[], float] = time.time,
        rescan: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._clock = clock
        self.rescan = rescan
        """Fire-and-forget rescan of a row (the views actor's ``request_rescan``), set once built."""
        self._recent: dict[str, collections.deque[float]] = {}
        self.recorded = 0
        self.refused = 0

    async def report(self, agent: str, turn: usage.Turn) -> None:
        """Record one turn of ``agent`` (already checked); :class:`Refused` past the rate limit."""
        now = self._clock()
        recent = self._recent.setdefault(agent, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= usage.MAX_REPORTS_PER_MINUTE:
            self.refused += 1
            raise Refused(
                f"report_turn: at most {usage.MAX_REPORTS_PER_MINUTE} turns a minute per agent; "
                "this one was not recorded"
            )
        recent.append(now)

        def write(conn: sqlite3.Connection) -> None:
            with no_fsync(conn):  # a turn's numbers lost to a power cut: no harm
                usage.record(conn, agent, turn, now)

        await self._store.call(write)
        self.recorded += 1
        if self.rescan is not None:
            self.rescan([agent])

    async def summaries(self, names: Collection[str] | None = None) -> dict[str, usage.Summary]:
        today = usage.day_start(self._clock())
        wanted = None if names is None else list(names)
        return await self._store.call(lambda c: usage.summaries(c, wanted, today))

    def read_activity(self, names: Collection[str]) -> usage.ActivityRows:
        """What the database says of ``names``' activity now: blocking, for the views actor's scan
        thread (one read transaction through the store's :class:`~hivecore.store.Reader`, in the
        scan's own thread hop instead of a store call after it). Raises :class:`sqlite3.Error`."""
        now = self._clock()
        today = usage.day_start(now)
        wanted = list(names)
        inboxes = [_inbox(n) for n in wanted]

        def read(conn: sqlite3.Connection) -> usage.ActivityRows:
            return usage.ActivityRows(
                now=now,
                summaries=usage.summaries(conn, wanted, today),
                waiting=usage.waiting_mail(conn, inboxes),
                reminders=reminder_store.pending_counts(conn, wanted),
                parents=topology.parents(conn, wanted),
            )

        return self._store.reader.read(read)

    def activity_from(self, names: Collection[str], rows: usage.ActivityRows) -> dict[str, usage.Activity]:
        """``names``' usage and liveness: ``rows`` (:meth:`read_activity`) with what the broker
        knows of each one's reading right now (on the trio thread: the broker's state is its)."""
        out = {}
        for name in names:
            inbox = _inbox(name)
            turn_since, polling, idle_since = self._broker.reading(inbox)
            live = usage.Liveness(
                now=rows.now,
                turn_since=turn_since,
                polling=polling,
                idle_since=idle_since,
                oldest_waiting=rows.waiting.get(inbox),
            )
            out[name] = usage.Activity(
                summary=rows.summaries.get(name, usage.Summary()),
                live=live,
                pending_reminders=rows.reminders.get(name, 0),
                parent=rows.parents.get(name),
            )
        return out


def _inbox(name: str) -> str:
    return MANAGER_AGENT if name == MANAGER_NAME else name

