"""What a job's service may touch: services import no actor (see :mod:`hivecore.services.handles`).

A job's service gets one :class:`JobContext` per job (built by
:class:`~hivecore.services.jobs.Jobs` from the shared :class:`JobEnv` and the lane's child-job
handle for that job): transients, rescans, child jobs, notifications, the store and the bus.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from hivecore.alarms import Holds
from hivecore.jobkinds import Intent
from hivecore.models import ContainerView, Job, JobKind, JobSource, TombstoneView, TransientKind
from hivecore.runtime.base import AgentRuntimeState
from hivecore.services.handles import AgentViews, ChildJobs, Publisher, Transients
from hivecore.services.notify import Notifier
from hivecore.store import Store
from hivecore.wire.events import Event


@attrs.frozen
class JobEnv:
    """The handles every job shares (built once by the daemon)."""

    store: Store
    bus: Publisher
    transients: Transients
    views: AgentViews
    notify: Notifier
    intent: Intent = attrs.field(factory=Intent)
    """The lane's intent marks (the daemon hands the lane the same object)."""
    holds: Holds = attrs.field(factory=Holds)
    """Agents held stopped after a crash loop (the alarms actor's; a start of one is refused)."""

    def for_job(self, job: Job, children: ChildJobs) -> JobContext:
        return JobContext(job=job, env=self, children=children)


@attrs.frozen(kw_only=True)
class JobContext:
    """What one job's service may touch: its own job, the shared handles, and its child jobs."""

    job: Job
    env: JobEnv
    children: ChildJobs

    @property
    def store(self) -> Store:
        return self.env.store

    @property
    def notify(self) -> Notifier:
        return self.env.notify

    @property
    def views(self) -> AgentViews:
        return self.env.views

    def stopped_on_purpose(self, name: str) -> bool:
        """Whether the operator stopped ``name`` on purpose (a build then leaves it stopped)."""
        return self.env.intent.stopped_on_purpose(name)

    def refuse_if_held(self, name: str) -> None:
        """Raise :class:`~hivecore.alarms.AgentHeld` when a crash loop holds ``name`` stopped."""
        self.env.holds.refuse_start(name)

    def held(self, name: str) -> bool:
        return self.env.holds.get(name) is not None

    def publish(self, event: Event) -> None:
        self.env.bus.publish(event)

    def transient(self, name: str, kind: TransientKind) -> AbstractAsyncContextManager[Any]:
        """``async with ctx.transient(name, kind):`` shows ``kind`` on the row; any exit clears it."""
        return self.env.transients.transient(name, kind)

    async def rescan(
        self,
        names: Collection[str] | None = None,
        *,
        before: Callable[[Mapping[str, AgentRuntimeState]], None] | None = None,
        usage: bool = True,
    ) -> dict[str, ContainerView]:
        """Rescan ``names``; ``before`` runs in the scan's thread hop after the probe, with its
        states (:meth:`Views.rescan`), after an atomic job's journal row
        (:attr:`ChildJobs.journal_step`): one hop for the probe, the row, the step and the facts.
        ``usage=False``: the job leaves usage alone (the rows keep the activity last read)."""
        journal = self.children.journal_step
        if journal is not None and before is not None:
            step = before

            def before(states: Mapping[str, AgentRuntimeState]) -> None:
                journal()
                step(states)

        return await self.env.views.rescan(names, before=before, usage=usage)

    def request_rescan(self, names: Collection[str] | None = None) -> None:
        self.env.views.request_rescan(names)

    async def refresh_tombstones(self) -> list[TombstoneView]:
        return await self.env.views.refresh_tombstones()

    async def submit_child(self, kind: JobKind, agent: str | None, *, source: JobSource) -> Job:
        """Run a child job of this one (it runs inside this job's build turn); its error is raised."""
        return await self.children.submit(kind, agent, source=source)

    def busy_with(self, agent: str) -> Job | None:
        """The lane's queued or running job for ``agent``, if any."""
        return self.children.busy_with(agent)
