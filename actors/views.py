"""The container views actor: the only writer of the cached dashboard rows and the tombstone list.

``rescan(names)`` rescans just those agents (a lifecycle verb touches only its agent); ``rescan()``
with no names is the full scan crash_watch's tick asks for. Full scans coalesce: a request that
arrives while one is in flight is answered by the *next* full scan (its facts must be newer than
the request), and every request waiting by then shares that one scan. Facts (the runtime's probe,
stat, the ``claude/`` walk, markers) are gathered in worker threads, never on the trio thread.

Scans may finish out of order; each carries a stamp taken when it started, and a row is replaced
only by a scan that started after the one that last wrote it, so a slow full scan never overwrites a
fresher per-agent row.

Each applied change is published (``container_state_changed`` / ``container_removed``) and handed
synchronously to the observers (crash_watch) together with the rows it replaced, so transitions are
judged on every scan, not only on ticks. ``refresh_tombstones`` recomputes the kept-state list and
publishes ``tombstones_changed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
import trio

from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from hivecore.config import StatePaths
from hivecore.container_view import AgentFacts, build_view, read_facts
from hivecore.meta import read_meta_facts
from hivecore.models import ContainerView, TombstoneView, Transient
from hivecore.names import MANAGER_NAME
from hivecore.runtime.base import AgentRuntimeState, ContainerRuntime
from hivecore.tombstones import build_tombstone_views
from hivecore.wire.events import ContainerRemoved, ContainerStateChanged, TombstonesChanged

log = logging.getLogger(__name__)


@attrs.frozen
class RowsApplied:
    """What one scan changed: for each name, the row before (None: new) and after (None: removed)."""

    changes: Mapping[str, tuple[ContainerView | None, ContainerView | None]]


Observer = Callable[[RowsApplied], None]


@attrs.frozen
class ViewsStatistics:
    full_scans: int
    targeted_scans: int
    rows: int


def _order(name: str) -> tuple[bool, str]:
    return (name != MANAGER_NAME, name)


class Views:
    def __init__(
        self,
        paths: StatePaths,
        runtime: ContainerRuntime,
        transients: TransientRegistry,
        bus: EventBus,
        *,
        domain: str | None = None,
    ) -> None:
        self._paths = paths
        self._runtime = runtime
        self._transients = transients
        self._bus = bus
        self._domain = domain
        self._rows: dict[str, ContainerView] = {}
        self._written_by: dict[str, int] = {}
        self._stamp = 0
        self._tomb_stamp = 0
        self._tomb_applied = 0
        self._tombstones: list[TombstoneView] = []
        self._full_in_flight = False
        self._full_waiters: list[trio.Event] = []
        self._full_done: trio.Event | None = None
        self._full_scans = 0
        self._targeted = 0
        self._observers: list[Observer] = []
        self._nursery: trio.Nursery | None = None
        transients.listen(self._transient_changed)

    # --- reads (synchronous, from the cache) -----------------------------------------------------

    def rows(self) -> dict[str, ContainerView]:
        return dict(self._rows)

    def row(self, name: str) -> ContainerView | None:
        return self._rows.get(name)

    def tombstones(self) -> list[TombstoneView]:
        return list(self._tombstones)

    def statistics(self) -> ViewsStatistics:
        return ViewsStatistics(self._full_scans, self._targeted, len(self._rows))

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def _transient_changed(self, name: str, transient: Transient | None) -> None:
        """Keep a row's ``pending`` in step with the registry at once (no rescan needed)."""
        old = self._rows.get(name)
        pending = transient.kind if transient else None
        if old is None or old.pending == pending:
            return
        new = attrs.evolve(old, pending=pending)
        self._rows[name] = new
        self._bus.publish(ContainerStateChanged(container=new))
        self._notify(RowsApplied(changes={name: (old, new)}))

    def _notify(self, applied: RowsApplied) -> None:
        for observer in self._observers:
            try:
                observer(applied)
            except Exception:
                log.exception("views: an observer failed")

    # --- requests --------------------------------------------------------------------------------

    async def rescan(self, names: Collection[str] | None = None) -> dict[str, ContainerView]:
        """Rescan ``names`` (or everything) and return the rows afterwards."""
        if names is None:
            await self._full()
        else:
            await self._scan(sorted(set(names)), full=False)
        return dict(self._rows)

    def request_rescan(self, names: Collection[str] | None = None) -> None:
        """Fire and forget (never blocks): rescan soon in the actor's nursery."""
        if self._nursery is not None:
            self._nursery.start_soon(self.rescan, None if names is None else list(names))

    async def refresh_tombstones(self) -> list[TombstoneView]:
        """Recompute the kept-state list (a walk of each kept dir, in a thread) and publish it."""
        self._tomb_stamp += 1
        stamp = self._tomb_stamp
        live = set(self._rows)
        live |= set(await self._runtime.list())
        views = await trio.to_thread.run_sync(build_tombstone_views, self._paths, live)
        if stamp > self._tomb_applied:
            self._tomb_applied = stamp
            self._tombstones = views
            self._bus.publish(TombstonesChanged(tombstones=views))
        return list(self._tombstones)

    async def _full(self) -> None:
        # coalesce: wait for the *next* full scan to finish; start one if none is running
        done = trio.Event()
        self._full_waiters.append(done)
        if not self._full_in_flight:
            self._full_in_flight = True
            try:
                while self._full_waiters:
                    waiters, self._full_waiters = self._full_waiters, []
                    try:
                        await self._scan(None, full=True)
                    finally:
                        for w in waiters:
                            w.set()
            finally:
                self._full_in_flight = False
        await done.wait()

    async def _scan(self, names: list[str] | None, *, full: bool) -> None:
        self._stamp += 1
        stamp = self._stamp
        states = await self._runtime.list(names)
        facts = await trio.to_thread.run_sync(self._read_all_facts, list(states))
        self._apply(stamp, names, states, facts, full=full)

    def _read_all_facts(self, names: list[str]) -> dict[str, AgentFacts]:
        meta = read_meta_facts(self._paths)
        return {n: read_facts(self._paths, n, meta) for n in names}

    def _apply(
        self,
        stamp: int,
        names: list[str] | None,
        states: Mapping[str, AgentRuntimeState],
        facts: Mapping[str, AgentFacts],
        *,
        full: bool,
    ) -> None:
        if full:
            self._full_scans += 1
        else:
            self._targeted += 1
        transients = self._transients.snapshot()
        scope = set(self._rows) | set(states) if names is None else set(names)
        changes: dict[str, tuple[ContainerView | None, ContainerView | None]] = {}
        for name in sorted(scope, key=_order):
            if self._written_by.get(name, 0) > stamp:
                continue  # a scan that started later already wrote this row
            old = self._rows.get(name)
            state = states.get(name)
            new = (
                None
                if state is None
                else build_view(state, facts.get(name, AgentFacts()), transients.get(name), self._domain)
            )
            self._written_by[name] = stamp
            if new == old:
                continue
            changes[name] = (old, new)
            if new is None:
                del self._rows[name]
                self._bus.publish(ContainerRemoved(name=name))
            else:
                self._rows[name] = new
                self._bus.publish(ContainerStateChanged(container=new))
        if any(new is not None and old is None for old, new in changes.values()):
            self._rows = {n: self._rows[n] for n in sorted(self._rows, key=_order)}
        if changes:
            self._notify(RowsApplied(changes=changes))

    # --- the actor -------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery for fire-and-forget rescans; compute the tombstone list first.

        The rows are seeded by crash_watch's first tick (a full scan)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.refresh_tombstones()
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._nursery = None
