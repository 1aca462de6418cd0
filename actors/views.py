"""The container views actor: the only writer of the cached dashboard rows and the tombstone list.

``rescan(names)`` rescans just those agents (a lifecycle verb touches only its agent); ``rescan()``
with no names is the full scan crash_watch's tick asks for. Scans run in the actor's own tasks (one
for full scans, one for per-agent scans), never in a caller's: a request joins the *next* scan of
its kind (its facts must be newer than the request), every request waiting by then shares that one
scan (per-agent requests share one scan of the union of their names), and a caller that is
cancelled abandons only its wait, so no other caller of the same scan is left waiting. Facts (the
runtime's probe, stat, the ``claude/`` walk, markers) are gathered in worker threads, never on the
trio thread.

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
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from hivecore.agent_env import AgentEnv
from hivecore.config import StatePaths
from hivecore.container_view import DEFAULT_LIMITS, AgentFacts, StuckLimits, build_view, read_facts
from hivecore.errors import HiveError
from hivecore.meta import read_meta_facts
from hivecore.models import ContainerView, TombstoneView, Transient
from hivecore.names import MANAGER_NAME
from hivecore.runtime.base import AgentRuntimeState, BlockingList, ContainerRuntime
from hivecore.tombstones import build_tombstone_views
from hivecore.usage import Activity, ActivityRows
from hivecore.wire.events import ContainerRemoved, ContainerStateChanged, TombstonesChanged

log = logging.getLogger(__name__)


class ActivitySource(Protocol):
    """Each agent's usage and liveness for its row (:class:`hivecore.services.usage.Usage`)."""

    def read_activity(self, names: Collection[str]) -> ActivityRows:
        """Blocking (the scan's worker thread): what the database says; raises sqlite3.Error."""
        ...

    def activity_from(self, names: Collection[str], rows: ActivityRows) -> Mapping[str, Activity]:
        """On the trio thread: ``rows`` with what is known in memory."""
        ...


class ViewsStopped(HiveError):
    """The views actor is not running (the daemon is starting up or shutting down)."""


@attrs.define(eq=False)
class _Scan:
    """One scan that requests join until it starts; ``done`` is set when it ends (``error``: why
    it failed, shared by every caller that joined it)."""

    names: set[str] = attrs.field(factory=set)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None
    steps: list[_Step] = attrs.field(factory=list)
    """The callers' ``before`` steps, run in the scan's thread hop between the probe and the facts."""
    usage: bool = False
    """Whether a caller needs the database's activity re-read (else each row keeps the last read)."""


Step = Callable[[Mapping[str, AgentRuntimeState]], None]
"""A caller's blocking step in a per-agent scan's thread hop: it gets the probe's states of the
scanned names (an absent name: the runtime has no such agent) and runs before the facts are read."""


@attrs.define
class _Step:
    """One caller's ``before`` step and what it raised (for that caller only)."""

    fn: Step
    error: Exception | None = None

    def run(self, states: Mapping[str, AgentRuntimeState]) -> None:
        try:
            self.fn(states)
        except Exception as exc:
            self.error = exc


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
        agent_env: AgentEnv | None = None,
        activity: ActivitySource | None = None,
        limits: StuckLimits = DEFAULT_LIMITS,
        waiting: Callable[[str], int | None] | None = None,
    ) -> None:
        self._waiting = waiting
        """Since when an agent waits on the operator
        (:meth:`hivecore.services.questions.Questions.waiting_since`)."""
        self._activity = activity
        """Each agent's usage and liveness (:class:`hivecore.services.usage.Usage`), read in the
        scan's thread hop."""
        self._limits = limits
        self._paths = paths
        self._agent_env = agent_env
        self._runtime = runtime
        self._transients = transients
        self._bus = bus
        self._domain = domain
        self._rows: dict[str, ContainerView] = {}
        self._activity_read: dict[str, Activity] = {}
        """Each row's activity as last read from the database (a scan that need not re-read it)."""
        self._written_by: dict[str, int] = {}
        self._stamp = 0
        self._tomb_stamp = 0
        self._tomb_applied = 0
        self._tombstones: list[TombstoneView] = []
        self._next_full: _Scan | None = None
        self._next_targeted: _Scan | None = None
        self._full_wanted = trio.Event()
        self._targeted_wanted = trio.Event()
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

    async def rescan(
        self, names: Collection[str] | None = None, *, before: Step | None = None, usage: bool = True
    ) -> dict[str, ContainerView]:
        """Rescan ``names`` (or everything) and return the rows afterwards.

        ``before`` (blocking, with ``names`` only): run in the scan's worker thread after the probe
        (it gets the probe's states) and before the facts are read, so a verb's own file write and
        its rescan cost one thread hop; what it raises is raised to this caller alone (the scan goes
        on for the others). Once joined, it runs even if this caller is cancelled.

        ``usage=False`` (with ``names`` only): this caller's change leaves the database's activity
        (usage, waiting mail, reminders, parent) alone, so the rows may keep the activity last read;
        a scan re-reads it when any caller joined without saying so (``set_paused``: one read less).

        Raises :class:`ViewsStopped` when the actor is not running, or what the scan raised (the
        runtime's probe failing). Cancelling this call leaves the scan running for the others."""
        if (before is not None or not usage) and names is None:
            raise ValueError("a step before a rescan, or a rescan without usage, needs the names")
        scan = self._join(names, usage=usage)
        step = None
        if before is not None:
            step = _Step(before)
            scan.steps.append(step)
        await scan.done.wait()
        if step is not None and step.error is not None:
            raise step.error
        if scan.error is not None:
            raise scan.error
        return dict(self._rows)

    def request_rescan(self, names: Collection[str] | None = None) -> None:
        """Fire and forget (never blocks): join the next scan; nothing while the actor is stopped."""
        if self._nursery is not None:
            self._join(names)

    def _join(self, names: Collection[str] | None, *, usage: bool = True) -> _Scan:
        if self._nursery is None:
            raise ViewsStopped("hive-c0re is starting up or shutting down; try again in a moment")
        if names is None:
            if self._next_full is None:
                self._next_full = _Scan()
                self._full_wanted.set()
            return self._next_full
        if self._next_targeted is None:
            self._next_targeted = _Scan()
            self._targeted_wanted.set()
        self._next_targeted.names.update(names)
        self._next_targeted.usage |= usage
        return self._next_targeted

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

    async def _full_scanner(self) -> None:
        while True:
            await self._full_wanted.wait()
            self._full_wanted = trio.Event()
            scan, self._next_full = self._next_full, None
            if scan is not None:
                await self._run_scan(scan, None)

    async def _targeted_scanner(self) -> None:
        while True:
            await self._targeted_wanted.wait()
            self._targeted_wanted = trio.Event()
            scan, self._next_targeted = self._next_targeted, None
            if scan is not None:
                await self._run_scan(scan, sorted(scan.names))

    async def _run_scan(self, scan: _Scan, names: list[str] | None) -> None:
        try:
            await self._scan(names, full=names is None, steps=scan.steps, usage=names is None or scan.usage)
        except Exception as exc:
            log.warning("views: a %s scan failed", "full" if names is None else "per-agent", exc_info=True)
            scan.error = exc
        except BaseException:
            scan.error = ViewsStopped("hive-c0re stopped before the scan finished")
            raise
        finally:
            scan.done.set()

    async def _scan(
        self, names: list[str] | None, *, full: bool, steps: Sequence[_Step] = (), usage: bool = True
    ) -> None:
        self._stamp += 1
        stamp = self._stamp
        runtime = self._runtime
        # a scan that need not re-read activity keeps each row's last read (all of them known)
        kept = None if usage else self._kept_activity(names)
        if isinstance(runtime, BlockingList):  # the probe, the steps, the facts in one thread hop
            states, facts, rows = await trio.to_thread.run_sync(
                self._probe_and_read, runtime, names, steps, kept is None
            )
        else:
            states = await runtime.list(names)
            facts, rows = await trio.to_thread.run_sync(self._steps_and_read, states, steps, kept is None)
        activity: Mapping[str, Activity] = kept or {}
        if self._activity is not None and rows is not None:
            activity = self._activity.activity_from(list(states), rows)
            self._activity_read.update(activity)
        self._apply(stamp, names, states, facts, full=full, activity=activity)

    def _kept_activity(self, names: list[str] | None) -> dict[str, Activity] | None:
        if self._activity is None or names is None or any(n not in self._activity_read for n in names):
            return None
        return {n: self._activity_read[n] for n in names}

    def _probe_and_read(
        self, runtime: BlockingList, names: list[str] | None, steps: Sequence[_Step], usage: bool
    ) -> tuple[dict[str, AgentRuntimeState], dict[str, AgentFacts], ActivityRows | None]:
        states = runtime.list_nowait(names)
        return states, *self._steps_and_read(states, steps, usage)

    def _steps_and_read(
        self, states: dict[str, AgentRuntimeState], steps: Sequence[_Step], usage: bool
    ) -> tuple[dict[str, AgentFacts], ActivityRows | None]:
        for step in steps:
            step.run(states)
        return self._read_all(list(states), usage=usage)

    def _read_all(
        self, names: list[str], *, usage: bool = True
    ) -> tuple[dict[str, AgentFacts], ActivityRows | None]:
        """The agents' facts and (with an activity source, unless ``usage`` is false) what the
        database says of their activity: blocking, in the scan's thread."""
        facts = self._read_all_facts(names)
        if self._activity is None or not names or not usage:
            return facts, None
        try:
            return facts, self._activity.read_activity(names)
        except sqlite3.Error as exc:  # the database is stopping or broken: rows without usage
            log.info("views: no usage for this scan: %s", exc)
            return facts, None

    def _read_all_facts(self, names: list[str]) -> dict[str, AgentFacts]:
        meta = read_meta_facts(self._paths)
        by_env = self._agent_env.logged_in_by_env(names) if self._agent_env is not None else set()
        return {n: read_facts(self._paths, n, meta, env_login=n in by_env) for n in names}

    def _apply(
        self,
        stamp: int,
        names: list[str] | None,
        states: Mapping[str, AgentRuntimeState],
        facts: Mapping[str, AgentFacts],
        *,
        full: bool,
        activity: Mapping[str, Activity] | None = None,
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
                else build_view(
                    state,
                    facts.get(name, AgentFacts()),
                    transients.get(name),
                    self._domain,
                    (activity or {}).get(name),
                    self._limits,
                    self._waiting(name) if self._waiting is not None else None,
                )
            )
            self._written_by[name] = stamp
            if new == old:
                continue
            changes[name] = (old, new)
            if new is None:
                del self._rows[name]
                self._activity_read.pop(name, None)
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
        """Run the scanner tasks; compute the tombstone list first.

        The rows are seeded by crash_watch's first tick (a full scan)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._full_scanner)
                nursery.start_soon(self._targeted_scanner)
                await self.refresh_tombstones()
                task_status.started(self)
        finally:
            self._nursery = None
            for scan in (self._next_full, self._next_targeted):  # joined, never started
                if scan is not None:
                    scan.error = ViewsStopped("hive-c0re stopped before the scan started")
                    scan.done.set()
            self._next_full = self._next_targeted = None
