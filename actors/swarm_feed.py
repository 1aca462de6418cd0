"""The swarm view on the dashboard's stream (docs/swarm.md "Events").

:class:`SwarmFeed` follows the link's picture of the swarm (:meth:`actors.swarm_link.SwarmLink.status`)
and broadcasts what changed as unsequenced dashboard events (:mod:`hivecore.swarm_view`) on the event
bus: per hive (reachable, last seen) and per agent row. It looks after every change the link reports
(at most every :data:`COALESCE` seconds, so a burst of remote changes is one pass) and every
:data:`TICK` seconds without one, which is how a hive that stopped heartbeating turns unreachable on
open pages within the heartbeat TTL. It runs inside the link's actor and never touches NATS.

:class:`PendingApprovals` counts this hive's pending approvals for the link (which tells the swarm
the count, never what they are).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from hivecore import swarm_view as sv
from hivecore.errors import HiveError
from hivecore.swarm import SwarmStatus
from hivecore.wire.events import SwarmStateEvent

log = logging.getLogger(__name__)

COALESCE = 0.1
"""Seconds between two passes while changes keep coming."""
TICK = 0.25
"""Seconds between two passes without a change (reachability follows the clock, not a message)."""


class SwarmFeed:
    """Construct with the link and the event bus, then run :meth:`run` beside the link's sessions."""

    def __init__(self, link: Any, bus: Any) -> None:
        self._link = link
        self._bus = bus
        self.shown: SwarmStatus | None = None
        """The picture the open pages have now (as :func:`hivecore.swarm_view.shown` makes it)."""
        self.passes = 0
        self._state: SwarmStateEvent | None = None
        self._seen: tuple[int, tuple[tuple[str, bool], ...]] | None = None

    def state_event(self) -> SwarmStateEvent | None:
        """``swarm_state`` of :attr:`shown` (one object per picture: a stream's frame of it is
        encoded once), or None before the first pass. The deltas broadcast after it are relative
        to exactly this picture."""
        if self.shown is None:
            return None
        if self._state is None or self._state.swarm is not self.shown:
            self._state = SwarmStateEvent(swarm=self.shown)
        return self._state

    def step(self, *, force: bool = False) -> int:
        """One pass: broadcast what changed since the last one; how many events went out. Without
        a change of the link's picture and no hive's reachability flipped, nothing is looked at
        (an idle tick; ``force``: look anyway)."""
        seen = (self._link.version, self._link.reach())
        if seen == self._seen and not force:
            return 0
        self._seen = seen
        now = sv.shown(self._link.status())
        events = sv.changes(self.shown, now)
        self.shown = now
        self.passes += 1
        for event in events:
            self._bus.broadcast(event)
        return len(events)

    async def run(self) -> None:
        while True:
            changed = self._link.changed_event()
            self.step()
            with trio.move_on_after(TICK):
                await changed.wait()
            await trio.sleep(COALESCE)


def count_pending(conn: Any) -> int:
    row = conn.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()
    return int(row[0])


class PendingApprovals:
    """This hive's pending approvals for :meth:`actors.swarm_link.SwarmLink.set_pending_approvals`:
    counted in the store at start and after every ``approval_added`` / ``approval_resolved`` on
    the bus (a burst of them is one count)."""

    def __init__(self, link: Any, bus: Any, store: Any) -> None:
        self._link = link
        self._bus = bus
        self._store = store

    async def run(self) -> None:
        while True:
            with self._bus.subscribe(kinds=["approval_added", "approval_resolved"]) as sub:
                try:
                    while True:
                        try:
                            self._link.set_pending_approvals(await self._store.call(count_pending))
                        except (HiveError, OSError) as exc:  # the store is busy or closing: next time
                            log.warning("swarm: cannot count pending approvals: %s", exc)
                        await sub.receive()
                        while sub.backlog():
                            await sub.receive()
                except trio.EndOfChannel:
                    pass  # fell behind (or the bus closed): subscribe again and recount
            await trio.sleep(COALESCE)
