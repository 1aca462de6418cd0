"""crash_watch: keeps the dashboard honest and tells the manager about crashes, promptly.

It judges every row change the views actor applies (a tick's full scan, a verb's per-agent scan, a
prompt rescan), not only tick-to-tick:

* crash axis — running before, not running now, no transient set and not stopped on purpose →
  ``container_crash`` to the manager. "Before" is the last applied row, so an agent that a verb left
  running counts even if no tick has seen it yet;
* login axis — ``needs_login`` / ``logged_in`` on each transition;
* up-to-date axis — ``needs_update`` only when staleness appears (``rebuilt`` covers the other way).

Its first tick only seeds, so a daemon restart never floods the manager. Between ticks (every
``interval`` s, the safety net and the login/update axes' clock) it watches each running agent's
exit through the runtime (``wait_exit``: a pidfd for the process runtime) and asks for a rescan of
just that agent the moment it exits, so a crash is reported within about a second.

The decisions are the pure :func:`decide`; quietness (a transient, a stop on purpose) is judged at
the instant the views actor applies the change, synchronously, so no verb can slip in between.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from actors.views import RowsApplied, Views
from hivecore.models import ContainerView
from hivecore.runtime.base import ContainerRuntime
from hivecore.wire.helper import ContainerCrash, HelperEvent, LoggedIn, NeedsLogin, NeedsUpdate

log = logging.getLogger(__name__)

_NEW = ContainerView(name="", container="")
"""What a row that did not exist before counts as: not running, logged in, up to date."""


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


def decide_changes(applied: RowsApplied, quiet: Callable[[str], bool]) -> list[HelperEvent]:
    """:func:`decide` over one scan's changes (a removed row is never a crash: destroy is on purpose)."""
    before = {n: old or _NEW for n, (old, new) in applied.changes.items() if new is not None}
    after = {n: new for n, (_, new) in applied.changes.items() if new is not None}
    return decide(baseline_of(before), after, quiet)


@attrs.frozen
class CrashWatchStatistics:
    ticks: int
    crashes_reported: int
    interval: float
    exit_watchers: int = 0


class ManagerNotifier(Protocol):
    """Where helper events go (:class:`hivecore.services.notify.Notifier`; best effort, never raises)."""

    async def notify_manager(self, event: HelperEvent, agent: str, note: str | None = None) -> None: ...


class CrashWatch:
    """The actor. ``quiet(name)`` says whether a stop of ``name`` was caused on purpose right now."""

    def __init__(
        self,
        views: Views,
        notifier: ManagerNotifier,
        quiet: Callable[[str], bool],
        interval: float,
        *,
        runtime: ContainerRuntime | None = None,
        on_crash: Callable[[str], None] | None = None,
    ) -> None:
        self._on_crash = on_crash
        """Called synchronously with each crashed agent's name as it is judged (the alarms'
        crash-loop count: a hold is in force before any restart can run)."""
        self._views = views
        self._notifier = notifier
        self._quiet = quiet
        self.interval = interval
        self._runtime = runtime
        self._seeded = False
        self._ticks = 0
        self._crashes = 0
        self._crashes_by_agent: collections.Counter[str] = collections.Counter()
        self._outbox: collections.deque[HelperEvent] = collections.deque()
        self._queued = 0
        self._sent = 0
        self._has_work = trio.Event()
        self._delivery_waiters: list[tuple[int, trio.Event]] = []
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self._watching: set[str] = set()
        self._nursery: trio.Nursery | None = None
        views.observe(self._observe)

    def statistics(self) -> CrashWatchStatistics:
        return CrashWatchStatistics(self._ticks, self._crashes, self.interval, len(self._watching))

    def crashes_by_agent(self) -> dict[str, int]:
        """Crashes reported since the daemon started, per agent (``/metrics``)."""
        return dict(self._crashes_by_agent)

    def request_rescan(self, names: list[str] | None = None) -> None:
        """A prompt rescan (never blocks): of ``names`` at once, or a full out-of-band tick."""
        if names is not None:
            self._views.request_rescan(names)
            return
        with contextlib.suppress(trio.WouldBlock):  # one is already queued: coalesce
            self._wake_send.send_nowait(None)

    # --- judging (synchronous, called by the views actor as it applies a scan) -------------------

    def _observe(self, applied: RowsApplied) -> None:
        for name, (_, new) in applied.changes.items():
            if new is not None and new.running:
                self._watch_exit(name)
        if not self._seeded:
            return
        for event in decide_changes(applied, self._quiet):
            if isinstance(event, ContainerCrash):
                self._crashes += 1
                self._crashes_by_agent[event.agent] += 1
                log.warning("crash_watch: %s stopped without a stop request", event.agent)
                if self._on_crash is not None:
                    self._on_crash(event.agent)
            self._outbox.append(event)
            self._queued += 1
        if self._outbox:
            self._has_work.set()

    # --- exit watchers -----------------------------------------------------------------------------

    def _watch_exit(self, name: str) -> None:
        runtime = self._runtime
        if runtime is None or not runtime.can_wait_exit or self._nursery is None or name in self._watching:
            return
        wait_exit = runtime.wait_exit
        self._watching.add(name)
        self._nursery.start_soon(self._exit_watcher, name, wait_exit, name=f"crash_watch: exit of {name}")

    async def _exit_watcher(self, name: str, wait_exit: Callable[[str], Any]) -> None:
        try:
            await wait_exit(name)
        except Exception:
            log.debug("crash_watch: cannot watch %s's exit; the tick covers it", name, exc_info=True)
            return
        finally:
            self._watching.discard(name)
        log.info("crash_watch: %s exited; rescanning it now", name)
        try:
            row = (await self._views.rescan([name])).get(name)
        except Exception:  # views stopping (shutdown) or a failed probe: the next tick covers it
            log.debug("crash_watch: cannot rescan %s after its exit; the tick covers it", name, exc_info=True)
            return
        if row is not None and row.running:  # a restart: watch the new process
            self._watch_exit(name)

    # --- ticks and delivery ------------------------------------------------------------------------

    async def tick(self) -> None:
        """One full scan. ``statistics().ticks`` counts completed ticks: once it moves, that tick's
        helper events are already in the manager's inbox."""
        views = await self._views.rescan()
        if not self._seeded:
            self._seeded = True
            log.info(
                "crash_watch: seeded with %d agents (%d running)",
                len(views),
                sum(1 for v in views.values() if v.running),
            )
        if self._sent < self._queued:
            delivered = trio.Event()
            self._delivery_waiters.append((self._queued, delivered))
            await delivered.wait()
        self._ticks += 1

    async def _deliverer(self) -> None:
        """The one task that delivers helper events, in the order they were judged."""
        while True:
            if not self._outbox:
                self._has_work = trio.Event()
                await self._has_work.wait()
                continue
            event = self._outbox.popleft()
            agent: str = getattr(event, "agent", "")
            try:
                await self._notifier.notify_manager(event, agent, getattr(event, "note", None))
            finally:
                self._sent += 1
                ready = [w for w in self._delivery_waiters if w[0] <= self._sent]
                for w in ready:
                    self._delivery_waiters.remove(w)
                    w[1].set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every ``interval`` seconds and on every full-rescan request, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._deliverer)
                await self._views.refresh_tombstones()
                await self.tick()
                for name, row in self._views.rows().items():
                    if row.running:
                        self._watch_exit(name)
                task_status.started(self)
                while True:
                    with trio.move_on_after(self.interval):
                        await self._wake_recv.receive()
                    try:
                        await self.tick()
                    except Exception:
                        # one bad tick (a runtime hiccup) must not stop the watch; a supervisor
                        # restart would re-seed and could miss a crash
                        log.exception("crash_watch: tick failed; trying again next tick")
            finally:
                self._nursery = None
