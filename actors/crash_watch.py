"""crash_watch: the 10 s poller that keeps the dashboard honest and tells the manager about crashes.

Every tick (and whenever a lifecycle verb asks for a prompt rescan) it calls
``rescan_containers_and_emit`` and compares the result with the previous tick:

* crash axis — running before, not running now, no transient set and not stopped on purpose →
  ``container_crash`` to the manager;
* login axis — ``needs_login`` / ``logged_in`` on each transition;
* up-to-date axis — ``needs_update`` only when staleness appears (``rebuilt`` covers the other way).

The first tick only seeds, so a daemon restart never floods the manager. The decisions are the
pure :func:`decide`; the actor does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from hivecore.coordinator import Coordinator
from hivecore.models import ContainerView
from hivecore.wire.helper import ContainerCrash, HelperEvent, LoggedIn, NeedsLogin, NeedsUpdate

log = logging.getLogger(__name__)


@attrs.frozen
class Baseline:
    running: frozenset[str]
    needs_login: frozenset[str]
    stale: frozenset[str]


def baseline_of(views: Mapping[str, ContainerView]) -> Baseline:
    return Baseline(
        running=frozenset(n for n, v in views.items() if v.running),
        needs_login=frozenset(n for n, v in views.items() if v.needs_login),
        stale=frozenset(n for n, v in views.items() if v.needs_update),
    )


def decide(
    prev: Baseline, views: Mapping[str, ContainerView], quiet: Callable[[str], bool]
) -> list[HelperEvent]:
    """Helper events for the transitions from ``prev`` to ``views``.

    ``quiet(name)`` is true for an agent whose stop was caused by the operator (a transient is set
    or the last verb was a stop/kill/destroy); its stop is not a crash.
    """
    events: list[HelperEvent] = []
    for name, view in views.items():
        if name in prev.running and not view.running and not view.pending and not quiet(name):
            events.append(ContainerCrash(agent=name, note="container stopped without a stop request"))
        if view.needs_login and name not in prev.needs_login:
            events.append(NeedsLogin(agent=name))
        if not view.needs_login and name in prev.needs_login:
            events.append(LoggedIn(agent=name))
        if view.needs_update and name not in prev.stale:
            events.append(NeedsUpdate(agent=name))
    return events


@attrs.frozen
class CrashWatchStatistics:
    ticks: int
    crashes_reported: int
    interval: float


class CrashWatch:
    def __init__(self, coordinator: Coordinator, interval: float) -> None:
        self._coord = coordinator
        self.interval = interval
        self._baseline: Baseline | None = None
        self._ticks = 0
        self._crashes = 0

    def statistics(self) -> CrashWatchStatistics:
        return CrashWatchStatistics(self._ticks, self._crashes, self.interval)

    async def tick(self) -> list[HelperEvent]:
        """One poll. ``statistics().ticks`` counts completed ticks: once it moves, that tick's
        helper events are already in the manager's inbox."""
        views = await self._coord.rescan_containers_and_emit()
        if views is None:  # superseded by a fresher rescan; judge on the next tick
            return []
        prev, self._baseline = self._baseline, baseline_of(views)
        if prev is None:
            log.info(
                "crash_watch: seeded with %d agents (%d running)", len(views), len(self._baseline.running)
            )
            self._ticks += 1
            return []

        def quiet(name: str) -> bool:
            return self._coord.transients.get(name) is not None or self._coord.stopped_on_purpose(name)

        events = decide(prev, views, quiet)
        for event in events:
            agent: str = getattr(event, "agent", "")
            if isinstance(event, ContainerCrash):
                self._crashes += 1
                log.warning("crash_watch: %s stopped without a stop request", agent)
            await self._coord.notify_manager(event, agent, getattr(event, "note", None))
        self._ticks += 1
        return events

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every ``interval`` seconds and on every rescan request, until cancelled."""
        await self._coord.refresh_tombstones()
        await self.tick()
        task_status.started(self)
        requests = self._coord.rescan_requests
        while True:
            with trio.move_on_after(self.interval):
                await requests.receive()
            try:
                await self.tick()
            except Exception:
                # one bad tick (a runtime hiccup) must not stop the watch; the supervisor would
                # restart us anyway, but that would re-seed and could miss a crash
                log.exception("crash_watch: tick failed; trying again next tick")
