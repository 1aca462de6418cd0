"""The job lane (``rebuild_queue``): every mutation of an agent is a journaled job run here.

A surface (host.sock, the dashboard, later the manager socket) never runs multi-step work in its
own task: it calls :meth:`JobLane.submit`, which *accepts* the job synchronously (or refuses it at
once) and then waits for its outcome. The job itself runs in this actor's nursery, so cancelling
the wait (a client that hangs up, a ``hivectl --timeout``) abandons the answer, not the work.

Rules:

* at most one job per agent at a time; a second request for that agent is refused with a message
  naming the job in the way (``agent "coder" is rebuilding (job 12, 40 s)``), except that a rebuild
  requested while a rebuild is still *queued* for that agent joins it;
* build-class jobs run strictly one at a time, FIFO across all agents; light jobs for different
  agents run concurrently; a singleton kind (``meta_update``) has at most one job queued or running;
* what each kind is (build-class, singleton, its busy phrase, its effect on intent, whether a
  request joins a queued one, whether its journal rows need an fsync) is its row in the job
  registry (:mod:`hivecore.jobkinds`): the lane reads nothing else about kinds;
* every job is journaled in sqlite before it starts (a build-class job also when it is queued for
  its turn) and when it ends (a kind whose row says ``power_loss_moot`` without an fsync); at the next start
  a job the journal still shows ``queued``/``running`` (a shutdown or a ``kill -9`` interrupted it)
  is marked ``cancelled`` and replayed as a ``crash_recover`` job before anything else runs;
* on shutdown running jobs are cancelled (their transients clear through the guard) and their rows
  stay ``running`` until that replay.

Intent ("the last accepted verb stopped this agent on purpose", what crash_watch asks before calling
a stop a crash) is recorded here when a job is *accepted*, never for a refused one
(:class:`~hivecore.jobkinds.Intent`).

The runner gets, with each job, a :class:`ChildJobs` handle: the only way a job submits children.

Ownership: the lane's bookkeeping (``_entries``, ``_by_agent``, ``_history``) is plain data that
only changes in synchronous code (accepting, and the job task's transitions between awaits), so
trio's cooperative scheduling makes this object its single owner; no lock guards it.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from actors.event_bus import EventBus
from hivecore import store as st
from hivecore.audit import note_job
from hivecore.errors import Busy, HiveError, Refused, RuntimeFailure
from hivecore.jobkinds import REGISTRY, Intent
from hivecore.models import Job, JobKind, JobSource, JobState
from hivecore.store import Store
from hivecore.wire.events import RebuildQueueChanged

log = logging.getLogger(__name__)

HISTORY = 50
"""Finished jobs kept in the snapshot (the journal keeps all of them)."""


class LaneClosed(HiveError):
    """The lane is not accepting jobs (the daemon is starting up or shutting down)."""


class JobRunner(Protocol):
    """What the lane runs: the services behind each job kind."""

    async def run(self, job: Job, args: Mapping[str, Any], children: ChildJobs) -> None:
        """Do the job; a :class:`HiveError` is the operator-facing failure message."""
        ...


@attrs.define(eq=False)
class JournalStep:
    """An atomic job's ``running`` journal row as a blocking step (:attr:`ChildJobs.journal_step`):
    the job runs it first in its one thread hop (``JobContext.rescan(before=...)``), so the row
    and the job's file write cost one hop (:meth:`hivecore.store.Store.write_here`) instead of two
    threads woken at once. Runs at most once; a failure is logged and left to the lane, which
    writes the row through a store call before the job is answered."""

    store: Store
    write: Callable[[sqlite3.Connection], None]
    job_id: int
    written: bool = False
    """Set in the worker thread; read on the trio thread once that thread's hop has returned."""

    def __call__(self) -> None:
        if self.written:
            return
        try:
            self.store.write_here(self.write)
        except Exception:
            log.warning("job %d: could not journal its start in its hop", self.job_id, exc_info=True)
            return
        self.written = True


@attrs.frozen
class ChildJobs:
    """One running job's handle on the lane: submit its children (``parent_id`` = the job's id; a
    build child runs inside the parent's build turn) and ask what an agent is busy with."""

    lane: JobLane
    parent: Job
    journal_step: JournalStep | None = None
    """An atomic job's running row, for its one thread hop to write (:class:`JournalStep`)."""

    async def submit(self, kind: JobKind, agent: str | None, *, source: JobSource) -> Job:
        return await self.lane.submit(kind, agent, source=source, parent_id=self.parent.id)

    def busy_with(self, agent: str) -> Job | None:
        return self.lane.busy_with(agent)


@attrs.frozen
class LaneStatistics:
    queued: int
    """Jobs accepted and not started (build-class jobs waiting for their turn)."""
    running: int


@attrs.define(eq=False)
class _Entry:
    job: Job
    args: Mapping[str, Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    turn: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None
    stopped_on_purpose: bool | None = None
    """The agent's intent mark this job set (``None``: it sets none), persisted with its journal row."""
    mark_changed: bool = False
    """Whether that mark changed the agent's intent (then its journal row is fsynced)."""


class JobLane:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        runner: JobRunner,
        *,
        history: int = HISTORY,
        clock: Callable[[], float] = time.time,
        intent: Intent | None = None,
        on_finished: Callable[[Job], None] | None = None,
        audit_log: Any = None,
    ) -> None:
        self._on_finished = on_finished
        """Told of every job as it leaves the lane, finished (``/metrics``: jobs and durations)."""
        self._store = store
        self._audit = audit_log
        """The :class:`~hivecore.services.audit.AuditLog` a crash recovery's replays are recorded in."""
        self._bus = bus
        self._runner = runner
        self._clock = clock
        self._history_len = history
        self._entries: dict[int, _Entry] = {}
        self._by_agent: dict[str, _Entry] = {}
        self._history: collections.deque[Job] = collections.deque(maxlen=history)
        self._next_id = 0
        self._nursery: trio.Nursery | None = None
        self._open = False
        self._build_send, self._build_recv = trio.open_memory_channel[_Entry](float("inf"))
        self._build_holder: _Entry | None = None
        """The build-class job that has the build turn now (its child builds run inside it)."""
        self.intent = intent if intent is not None else Intent()
        """Which agents the last accepted job stopped on purpose (crash_watch and the builds ask
        it); loaded from the store at :meth:`run`, each change persisted with its job's row."""

    # --- the handle ----------------------------------------------------------------------------

    def snapshot(self) -> list[Job]:
        """Queued and running jobs (by id), then the last finished ones (oldest first)."""
        live = [e.job for e in sorted(self._entries.values(), key=lambda e: e.job.id)]
        return [*live, *self._history]

    def statistics(self) -> LaneStatistics:
        queued = sum(e.job.state == "queued" for e in self._entries.values())
        return LaneStatistics(queued=queued, running=len(self._entries) - queued)

    def busy_with(self, agent: str) -> Job | None:
        entry = self._by_agent.get(agent)
        return entry.job if entry else None

    async def submit(
        self,
        kind: JobKind,
        agent: str | None,
        *,
        source: JobSource,
        args: Mapping[str, Any] | None = None,
        parent_id: int | None = None,
    ) -> Job:
        """Accept a job (or raise :class:`Busy` at once), then wait for it; returns the finished job.

        A failed job re-raises its error. Cancelling this wait leaves the job running.
        """
        job = self.submit_nowait(kind, agent, source=source, args=args, parent_id=parent_id)
        return await self.wait(job.id)

    def submit_nowait(
        self,
        kind: JobKind,
        agent: str | None,
        *,
        source: JobSource,
        args: Mapping[str, Any] | None = None,
        parent_id: int | None = None,
    ) -> Job:
        """Accept a job without waiting for it (fire and forget); raises :class:`Busy` like submit.
        The job's id is noted for the audit row of the verb being run in this task, if any."""
        job = self._accept(kind, agent, source, dict(args or {}), parent_id).job
        note_job(job.id)
        return job

    async def wait(self, job_id: int) -> Job:
        """Wait for a job accepted earlier; its error is re-raised."""
        entry = self._entries.get(job_id)
        if entry is None:
            for job in self._history:
                if job.id == job_id:
                    return job
            raise HiveError(f"no job {job_id}")
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry.job

    # --- accepting -----------------------------------------------------------------------------

    def _accept(
        self,
        kind: JobKind,
        agent: str | None,
        source: JobSource,
        args: Mapping[str, Any],
        parent_id: int | None,
        *,
        internal: bool = False,
    ) -> _Entry:
        # a running job's child is accepted during the replay too (a replayed meta update's rebuilds)
        child = parent_id is not None and parent_id in self._entries
        if self._nursery is None or not (self._open or internal or child):
            raise LaneClosed("hive-c0re is starting up or shutting down; try again in a moment")
        spec = REGISTRY[kind]
        if spec.singleton and (other := self.running_kind(kind)) is not None:
            raise Refused(f"{spec.name} is already running (job {other.id}); wait for it to finish")
        if agent is not None and (current := self._by_agent.get(agent)) is not None:
            job = current.job
            # (a child never joins: the queued one waits for the turn its parent holds)
            if spec.joins_queued and job.kind == kind and job.state == "queued" and parent_id is None:
                log.info("job %d: %s of %s joined by a request from %s", job.id, kind, agent, source)
                return current
            raise Busy(self._busy_message(agent, job))
        self._next_id += 1
        job = Job(
            id=self._next_id,
            kind=kind,
            agent=agent,
            source=source,
            state="queued",
            queued_at=self._clock(),
            parent_id=parent_id,
        )
        entry = _Entry(job, args)
        self._entries[job.id] = entry
        if agent is not None:
            self._by_agent[agent] = entry
            before = self.intent.stopped_on_purpose(agent)
            entry.stopped_on_purpose = self.intent.record(job)
            entry.mark_changed = entry.stopped_on_purpose not in (None, before)
        self._nursery.start_soon(self._run_job, entry, name=f"job {job.id} {kind} {agent or ''}")
        self._publish()
        return entry

    def _busy_message(self, agent: str, job: Job) -> str:
        if job.state == "queued":
            waited = int(self._clock() - job.queued_at)
            return f'agent "{agent}" has a {job.kind} queued (job {job.id}, {waited} s); try again later'
        started = job.started_at if job.started_at is not None else job.queued_at
        return (
            f'agent "{agent}" is {REGISTRY[job.kind].busy} (job {job.id}, {int(self._clock() - started)} s)'
        )

    # --- running -------------------------------------------------------------------------------

    async def _journal(self, entry: _Entry) -> None:
        await self._store.call(self._journal_row(entry))

    def _journal_row(self, entry: _Entry) -> Callable[[sqlite3.Connection], None]:
        """The write of ``entry``'s row as it is now (for the store thread, or a job's own hop)."""
        job, args = entry.job, json.dumps(dict(entry.args))
        live = job.state in ("queued", "running")
        # an intent change is worth an fsync even for a light verb: a stop on purpose must hold
        fsync = not REGISTRY[job.kind].power_loss_moot or (live and entry.mark_changed)
        mark = entry.stopped_on_purpose if live else None
        return lambda c: st.journal_job(c, job, args, fsync=fsync, stopped_on_purpose=mark)

    def _transition(self, entry: _Entry, state: JobState, **changes: Any) -> None:
        entry.job = attrs.evolve(entry.job, state=state, **changes)
        if state in ("queued", "running"):  # a finished job is published once, by _finish
            self._publish()

    async def _run_job(self, entry: _Entry) -> None:
        job = entry.job
        try:
            if REGISTRY[job.kind].build and not self._is_child_of_holder(job):
                await self._journal(entry)  # queued: it may wait for its turn a long time
                self._build_send.send_nowait(entry)
                await entry.turn.wait()
            # a job that runs at once is journaled once before it starts, as running: one commit
            # less on every light verb's path (replay treats queued and running alike)
            self._transition(entry, "running", started_at=self._clock())
            step = None
            if REGISTRY[job.kind].atomic:  # its row commits in its own thread hop, beside its step
                step = JournalStep(self._store, self._journal_row(entry), job.id)
            else:
                await self._journal(entry)
            log.info("job %d: %s %s (from %s) started", job.id, job.kind, job.agent or "", job.source)
            await self._runner.run(entry.job, entry.args, ChildJobs(self, entry.job, step))
            if step is not None and not step.written:
                await self._store.call(step.write)  # an answered job is in the journal
        except trio.Cancelled:
            entry.error = LaneClosed(f"job {job.id} ({job.kind}) was cancelled: hive-c0re is shutting down")
            self._transition(entry, "cancelled", finished_at=self._clock(), error=str(entry.error))
            log.warning("job %d: %s %s cancelled by shutdown", job.id, job.kind, job.agent or "")
            raise
        except Exception as exc:
            entry.error = exc if isinstance(exc, HiveError) else _wrap(job, exc)
            self._transition(entry, "failed", finished_at=self._clock(), error=str(entry.error))
            log.warning("job %d: %s %s failed: %s", job.id, job.kind, job.agent or "", entry.error)
        else:
            self._transition(entry, "done", finished_at=self._clock())
            log.info("job %d: %s %s done", job.id, job.kind, job.agent or "")
        finally:
            self._finish(entry)
        try:
            await self._journal(entry)  # an atomic job's running row is written by now, if at all
        except Exception:
            log.warning("job %d: could not journal its end", job.id, exc_info=True)

    def _finish(self, entry: _Entry) -> None:
        self._entries.pop(entry.job.id, None)
        if entry.job.agent is not None and self._by_agent.get(entry.job.agent) is entry:
            del self._by_agent[entry.job.agent]
        self._history.append(entry.job)
        entry.turn.set()  # a build that never got its turn must not block the build runner
        entry.done.set()
        self._publish()
        if self._on_finished is not None:
            try:
                self._on_finished(entry.job)
            except Exception:
                log.exception("job %d: the finish hook failed", entry.job.id)

    def _is_child_of_holder(self, job: Job) -> bool:
        """A build submitted by the build job that holds the turn (a ``meta_update``'s rebuilds,
        which carry its id as ``parent_id``) runs inside the parent's turn instead of queueing
        behind it; the parent runs its children one at a time."""
        holder = self._build_holder
        return (
            job.parent_id is not None
            and job.source != "crash_recover"
            and holder is not None
            and not holder.done.is_set()
            and holder.job.id == job.parent_id
        )

    def running_kind(self, kind: JobKind) -> Job | None:
        """A queued or running job of ``kind`` (a singleton's, or one of a kind that takes no agent)."""
        for entry in self._entries.values():
            if entry.job.kind == kind:
                return entry.job
        return None

    async def _build_runner(self) -> None:
        """Give build-class jobs their turn, one at a time, in the order they were queued."""
        async for entry in self._build_recv:
            if entry.done.is_set():
                continue
            self._build_holder = entry
            entry.turn.set()
            await entry.done.wait()
            self._build_holder = None

    def _publish(self) -> None:
        self._bus.publish(RebuildQueueChanged(jobs=self.snapshot()))

    # --- the actor -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Load the journal, replay what a previous run left unfinished, then accept jobs."""
        self._next_id = await self._store.call(st.max_job_id)
        self._history.clear()
        self._history.extend(await self._store.call(lambda c: st.recent_jobs(c, self._history_len)))
        unfinished = await self._store.call(st.unfinished_jobs)
        self.intent.load(await self._store.call(st.stopped_on_purpose))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._build_runner)
                await self._reconcile(unfinished)
                self._open = True
                log.info("job lane open (next job id %d)", self._next_id + 1)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._open = False
            self._nursery = None

    async def _reconcile(self, unfinished: list[tuple[Job, str]]) -> None:
        """Replay every job a previous run left queued or running, oldest first, one at a time.

        A child whose parent is replayed too (a meta update's rebuild) is not replayed on its own:
        the parent's replay resumes its recorded plan, which redoes every child it had not finished.
        """
        replayed = {old.id for old, _ in unfinished}
        for old, raw_args in unfinished:
            try:
                args = json.loads(raw_args)
            except ValueError:
                args = {}
            closed = attrs.evolve(
                old, state="cancelled", finished_at=self._clock(), error="interrupted: hive-c0re stopped"
            )
            if old.parent_id is not None and old.parent_id in replayed:
                closed = attrs.evolve(
                    closed, error=f"interrupted: hive-c0re stopped; redone by job {old.parent_id}'s replay"
                )
                await self._store.call(partial(st.journal_job, job=closed, args=raw_args))
                self._history.append(closed)
                log.warning(
                    "job %d (%s %s): left to its parent job %d's replay",
                    old.id,
                    old.kind,
                    old.agent or "",
                    old.parent_id,
                )
                continue
            entry = self._accept(old.kind, old.agent, "crash_recover", args, old.id, internal=True)
            note = f"interrupted: hive-c0re stopped; replayed as job {entry.job.id}"
            closed = attrs.evolve(closed, error=note)
            await self._store.call(partial(st.journal_job, job=closed, args=raw_args))
            self._history.append(closed)
            log.warning(
                "job %d (%s %s, %s) was interrupted by a daemon stop; replaying it as job %d",
                old.id,
                old.kind,
                old.agent or "",
                old.state,
                entry.job.id,
            )
            await entry.done.wait()
            if entry.error is not None:
                log.warning("replay of job %d failed: %s", old.id, entry.error)
            if self._audit is not None:
                await self._audit.record(
                    "crash_recover",
                    {"kind": old.kind, "agent": old.agent, "interrupted_job": old.id, "was": old.state},
                    outcome="ok" if entry.error is None else "failed",
                    error=None if entry.error is None else str(entry.error),
                    jobs=[old.id, entry.job.id],
                )


def _wrap(job: Job, exc: Exception) -> RuntimeFailure:
    log.error("job %d: %s %s raised", job.id, job.kind, job.agent or "", exc_info=exc)
    verb = f"{job.kind} {job.agent}" if job.agent else job.kind
    return RuntimeFailure(f"{verb} failed: {type(exc).__name__}: {exc}")
