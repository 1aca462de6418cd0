"""The job registry: one row per job kind, the only place the job lane's rules live.

A row says which service runs the kind, which transient it shows while it runs, whether it is
build-class (one build at a time, FIFO across agents), what it means for an agent's *intent* (a stop
on purpose, or a start that ends one), how a refusal names it while it is busy, and whether only one
such job may exist at a time. :class:`~actors.rebuild_queue.JobLane` reads nothing else;
:class:`~hivecore.services.jobs.Jobs` routes by it. Adding a job kind is one row here (and its
:data:`~hivecore.models.JobKind` literal) plus the service's handler.

Pure data: no I/O, no imports of actors or services.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

from hivecore.models import JOB_KINDS, Job, JobKind, TransientKind

ServiceName = Literal["lifecycle", "approvals", "meta_update"]
"""The services behind the lane (:class:`hivecore.services.jobs.Jobs` holds one of each)."""

IntentEffect = Literal["stops", "starts"]


@attrs.frozen(kw_only=True)
class JobKindSpec:
    """One job kind's rules."""

    kind: JobKind
    service: ServiceName
    """The service whose ``run_job`` runs it."""
    busy: str
    """What the agent is doing, as a refusal names it: ``agent "coder" is <busy> (job 12, 40 s)``."""
    transient: TransientKind | None = None
    """The transient the agent shows while the job runs (``None``: it shows none)."""
    build: bool = False
    """Build-class: runs strictly one at a time, FIFO across all agents (a child of the build that
    holds the turn runs inside that turn)."""
    intent: IntentEffect | None = None
    """``stops``: once accepted, the agent counts as stopped on purpose (crash_watch stays quiet; a
    build, a meta update, auto_update and a daemon restart leave it stopped); ``starts``: that mark
    is cleared. ``None`` (a rebuild, an approved config change): the agent stays as the operator
    left it. The lane persists the mark with the job's journal row."""
    singleton: bool = False
    """At most one job of this kind is queued or running at a time (a second is refused)."""
    noun: str = ""
    """How a refusal names one job of this kind (``a meta update``); default ``a <kind>``."""
    takes_agent: bool = True
    """Whether the job is for one agent (one job per agent at a time) or for none."""
    joins_queued: bool = False
    """A request while a job of this kind is still *queued* for the agent joins it instead of being
    refused (only for requests that are not some job's child)."""
    power_loss_moot: bool = False
    """Its journal rows are committed without an fsync (``hivecore.store.no_fsync``): they survive
    ``kill -9`` like every row, but a power loss (after which every agent is down and the marker
    files may be lost too) can take the last of them; nothing would be left to replay."""
    atomic: bool = False
    """Its whole effect is one idempotent, atomic filesystem step (``set_paused``: one marker written
    or removed): its ``running`` row commits in the job's own thread hop, just before that step
    (:class:`actors.rebuild_queue.JournalStep`; through a store call before the answer if the job
    never took it), so the caller hears of it only once the row is committed. A ``kill -9`` mid-job
    leaves the step done or not done:
    with the row committed the replay redoes it (harmless), without it the caller got no answer and
    nothing changed but, at most, that step (the next scan shows the marker as it is)."""
    approval_service: ServiceName | None = None
    """A job of this kind carrying an ``approval_id`` argument carries out that approval: it is run
    by this service instead of :attr:`service` (an approved spawn)."""

    @property
    def name(self) -> str:
        return self.noun or f"a {self.kind}"

    def service_for(self, args: Mapping[str, Any]) -> ServiceName:
        """The service that runs a job of this kind with ``args``."""
        if self.approval_service is not None and "approval_id" in args:
            return self.approval_service
        return self.service


def _rows(*rows: JobKindSpec) -> Mapping[JobKind, JobKindSpec]:
    table = {row.kind: row for row in rows}
    missing = set(JOB_KINDS) - set(table)
    if missing or len(table) != len(rows):
        raise AssertionError(f"job registry: each JobKind needs exactly one row (missing {sorted(missing)})")
    return MappingProxyType(table)


REGISTRY: Mapping[JobKind, JobKindSpec] = _rows(
    JobKindSpec(
        kind="spawn",
        service="lifecycle",
        approval_service="approvals",
        busy="spawning",
        transient="spawning",
        intent="starts",
    ),
    JobKindSpec(
        kind="start",
        service="lifecycle",
        busy="starting",
        transient="starting",
        intent="starts",
        power_loss_moot=True,
    ),
    JobKindSpec(
        kind="stop",
        service="lifecycle",
        busy="stopping",
        transient="stopping",
        intent="stops",
        power_loss_moot=True,
    ),
    JobKindSpec(
        kind="restart",
        service="lifecycle",
        busy="restarting",
        transient="restarting",
        intent="starts",
        power_loss_moot=True,
    ),
    JobKindSpec(
        kind="kill",
        service="lifecycle",
        busy="being killed",
        transient="stopping",
        intent="stops",
        power_loss_moot=True,
    ),
    JobKindSpec(
        kind="destroy", service="lifecycle", busy="being destroyed", transient="destroying", intent="stops"
    ),
    JobKindSpec(kind="purge", service="lifecycle", busy="being purged"),
    JobKindSpec(
        kind="set_paused",
        service="lifecycle",
        busy="changing its pause state",
        power_loss_moot=True,
        atomic=True,
    ),
    JobKindSpec(
        kind="rebuild",
        service="lifecycle",
        busy="rebuilding",
        transient="rebuilding",
        build=True,
        joins_queued=True,
    ),
    JobKindSpec(
        kind="apply_commit",
        service="approvals",
        busy="applying a config change",
        transient="rebuilding",
        build=True,
    ),
    JobKindSpec(kind="deny", service="approvals", busy="having an approval denied"),
    JobKindSpec(kind="init_config", service="approvals", busy="having its config initialised"),
    JobKindSpec(kind="schedule_prompt", service="approvals", busy="having a scheduled prompt approved"),
    JobKindSpec(kind="cancel_approval", service="approvals", busy="having a request withdrawn"),
    JobKindSpec(
        kind="meta_update",
        service="meta_update",
        approval_service="approvals",
        busy="updating meta inputs",
        noun="a meta update",
        build=True,
        singleton=True,
        takes_agent=False,
    ),
)


def spec_of(kind: JobKind) -> JobKindSpec:
    """The registry row of ``kind``."""
    return REGISTRY[kind]


class Intent:
    """Which agents were stopped on purpose (from the registry's :attr:`JobKindSpec.intent`).

    Plain synchronous state, owned by whoever mutates it between checkpoints: the lane records an
    accepted job, crash_watch's judging and the builds read it, all synchronously. The lane loads
    it from the store at start (:meth:`load`) and persists each change with the job's journal row.
    """

    def __init__(self) -> None:
        self._stopped: set[str] = set()

    def stopped_on_purpose(self, name: str) -> bool:
        return name in self._stopped

    def load(self, names: Iterable[str]) -> None:
        """Replace the marks with ``names`` (what the store recorded)."""
        self._stopped = set(names)

    def record(self, job: Job) -> bool | None:
        """Apply ``job``'s effect; the agent's new mark (``True``: stopped on purpose) when the job
        has an effect, ``None`` when it has none."""
        if job.agent is None:
            return None
        effect = REGISTRY[job.kind].intent
        if effect == "stops":
            self._stopped.add(job.agent)
            return True
        if effect == "starts":
            self._stopped.discard(job.agent)
            return False
        return None
