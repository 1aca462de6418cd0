"""The actors' handles a service is given, as protocols: services import no actor.

The actors (``actors/``) satisfy these structurally; :mod:`hivecore.daemon` hands them in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from hivecore.models import (
    ContainerView,
    Job,
    JobKind,
    JobSource,
    MetaInputView,
    TombstoneView,
    TransientKind,
)
from hivecore.runtime.base import AgentRuntimeState
from hivecore.wire.events import Event


class Publisher(Protocol):
    """The event bus (:class:`actors.event_bus.EventBus`): publish never blocks."""

    def publish(self, event: Event) -> Any: ...


class Transients(Protocol):
    """The transient registry (:class:`actors.transients.TransientRegistry`)."""

    def transient(self, name: str, kind: TransientKind) -> AbstractAsyncContextManager[Any]: ...


class AgentViews(Protocol):
    """The views actor (:class:`actors.views.Views`): cached rows and rescans."""

    def rows(self) -> dict[str, ContainerView]: ...

    async def rescan(
        self,
        names: Collection[str] | None = None,
        *,
        before: Callable[[Mapping[str, AgentRuntimeState]], None] | None = None,
        usage: bool = True,
    ) -> dict[str, ContainerView]: ...

    def request_rescan(self, names: Collection[str] | None = None) -> None: ...

    async def refresh_tombstones(self) -> list[TombstoneView]: ...


class MetaFlake(Protocol):
    """The meta lock actor (:class:`actors.meta_lock.MetaLock`), the only path to ``<state>/meta``."""

    @property
    def running(self) -> bool: ...

    def inputs(self) -> list[MetaInputView]: ...

    def publish_inputs(self) -> None: ...

    def locked_rev(self, name: str) -> str | None: ...

    async def sync(self, agents: Iterable[Any]) -> bool: ...

    async def lock_update(self, inputs: Sequence[str], message: str | None = None) -> bool: ...

    async def lock_update_for_rebuild(self, name: str) -> bool: ...

    async def relock_after_failure(self, name: str) -> bool: ...

    async def lock_update_hyperhive(self) -> bool: ...

    async def evaluate(self, name: str) -> Any: ...

    async def build_system(self, name: str) -> str:
        """The container system of ``name`` (a store path), evaluated confined and built."""
        ...


class ChildJobs(Protocol):
    """The lane's handle for one running job (:class:`actors.rebuild_queue.ChildJobs`)."""

    async def submit(self, kind: JobKind, agent: str | None, *, source: JobSource) -> Job:
        """Accept a child job of this one (``parent_id`` set) and wait for it; its error is raised."""
        ...

    def busy_with(self, agent: str) -> Job | None: ...

    @property
    def journal_step(self) -> Callable[[], None] | None:
        """An atomic job's running journal row: a blocking step for the job's one thread hop to
        run first (:meth:`hivecore.services.context.JobContext.rescan` does); ``None`` otherwise."""
        ...
