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

import trio

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

    async def activity(self, names: Collection[str]) -> dict[str, usage.Activity]:
        """Every one of ``names``' usage and liveness now (one store call)."""
        now = self._clock()
        today = usage.day_start(now)
        inboxes = {n: MANAGER_AGENT if n == MANAGER_NAME else n for n in names}
        wanted = list(names)

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[dict[str, usage.Summary], dict[str, int], dict[str, int], dict[str, str]]:
            return (
                usage.summaries(conn, wanted, today),
                usage.waiting_mail(conn, inboxes.values()),
                reminder_store.pending_counts(conn, wanted),
                topology.parents(conn, wanted),
            )

        summaries, waiting, reminders, parents = await self._store.call(read)
        out = {}
        for name, inbox in inboxes.items():
            turn_since, polling, idle_since = self._broker.reading(inbox)
            live = usage.Liveness(
                now=now,
                turn_since=turn_since,
                polling=polling,
                idle_since=idle_since,
                oldest_waiting=waiting.get(inbox),
            )
            out[name] = usage.Activity(
                summary=summaries.get(name, usage.Summary()),
                live=live,
                pending_reminders=reminders.get(name, 0),
                parent=parents.get(name),
            )
        await trio.lowlevel.checkpoint()
        return out
