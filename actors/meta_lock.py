"""The meta lock actor (reference §3 ``META_LOCK``): the only path to the meta repo.

Every operation (``sync``, ``lock_update``, ``lock_update_for_rebuild``, ``lock_update_hyperhive``,
``read_meta_inputs``, ``evaluate``, ``build_system``) is a message on a memory channel; one task
runs them in order, so no two git or nix commands ever touch ``<state>/meta`` at once. A caller that
is cancelled abandons the answer; the operation it asked for still runs to its end. A shutdown (or
kill -9) mid-operation may leave ``.git/index.lock`` or an uncommitted lock file: the next start
cleans the first and the next ``sync`` commits the second.

At start the actor removes a ``.git/index.lock`` a crash left (logged) and seeds the base flake.
After each lock change it refreshes its cached input list (``inputs()``, for ``/api/state``) and
publishes ``meta_inputs_changed`` with the full list.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import outcome
import trio

from actors.event_bus import EventBus
from hivecore.errors import HiveError
from hivecore.meta import HYPERHIVE, AgentEntry, MetaRepo, agent_input, locked_revs, parse_lock
from hivecore.models import MetaInputView
from hivecore.runtime.base import AgentSpec
from hivecore.wire.events import MetaInputsChanged

log = logging.getLogger(__name__)

T = TypeVar("T")


class MetaLockClosed(HiveError):
    """The meta lock actor is not running (the daemon is starting up or shutting down)."""


@attrs.define(eq=False)
class _Op:
    what: str
    work: Callable[[], Awaitable[Any]]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: outcome.Outcome[Any] | None = None


class MetaLock:
    def __init__(self, repo: MetaRepo, bus: EventBus | None = None) -> None:
        self.repo = repo
        self._bus = bus
        self._send, self._recv = trio.open_memory_channel[_Op](float("inf"))
        self._running = False
        self._inputs: list[MetaInputView] = []
        self._revs: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self._running

    # --- the handle (each call: one message, answered in order) ----------------------------------

    async def _call(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        if not self._running:
            raise MetaLockClosed(
                f"the meta repo is not available ({what}): hive-c0re is starting or stopping"
            )
        op = _Op(what, work)
        self._send.send_nowait(op)
        await op.done.wait()
        assert op.result is not None
        value: T = op.result.unwrap()
        return value

    def inputs(self) -> list[MetaInputView]:
        """The cached ``read_meta_inputs()`` (refreshed after each lock change)."""
        return list(self._inputs)

    def publish_inputs(self) -> None:
        """Publish ``meta_inputs_changed`` with the cached full list."""
        if self._bus is not None:
            self._bus.publish(MetaInputsChanged(inputs=list(self._inputs)))

    def locked_rev(self, name: str) -> str | None:
        """The full locked rev of a top-level input (cached)."""
        return self._revs.get(name)

    async def sync(self, agents: Iterable[AgentEntry]) -> bool:
        entries = list(agents)
        return await self._call("sync", lambda: self._changed(self.repo.sync(entries)))

    async def lock_update(self, inputs: Sequence[str], message: str | None = None) -> bool:
        names = list(dict.fromkeys(inputs))
        return await self._call("lock_update", lambda: self._changed(self.repo.lock_update(names, message)))

    async def lock_update_for_rebuild(self, name: str) -> bool:
        return await self.lock_update([agent_input(name)])

    async def relock_after_failure(self, name: str) -> bool:
        """After a failed deploy rolled applied main back: lock ``agent-<n>`` at it again, in a commit
        that says so (``failed deploy of <n>: …``), so the meta log never shows a failed deploy and
        its revert as two ordinary updates."""
        return await self.lock_update(
            [agent_input(name)],
            f"failed deploy of {name}: {agent_input(name)} locked back at its rolled-back main",
        )

    async def lock_update_hyperhive(self) -> bool:
        return await self.lock_update([HYPERHIVE])

    async def read_meta_inputs(self) -> list[MetaInputView]:
        async def read() -> list[MetaInputView]:
            await self._refresh()
            return list(self._inputs)

        return await self._call("read_meta_inputs", read)

    async def evaluate(self, name: str) -> AgentSpec:
        return await self._call("evaluate", lambda: self.repo.evaluate(name))

    async def build_system(self, name: str) -> str:
        return await self._call("build_system", lambda: self.repo.build_system(name))

    # --- the actor -------------------------------------------------------------------------------

    async def _refresh(self) -> bool:
        data = await self.repo.lock_data()
        inputs = parse_lock(data)
        changed = inputs != self._inputs
        self._inputs = inputs
        self._revs = locked_revs(data)
        return changed

    async def _changed(self, work: Awaitable[bool]) -> bool:
        committed = await work
        if await self._refresh() and self._bus is not None:
            self._bus.publish(MetaInputsChanged(inputs=list(self._inputs)))
        return committed

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self.repo.clean_stale_locks)
        try:
            await self.repo.seed_base()
        except HiveError as exc:
            log.error("meta: could not seed the base flake: %s", exc)
        await self._refresh()
        self._running = True
        task_status.started(self)
        try:
            async for op in self._recv:
                try:
                    # a caller going away never interrupts the operation (it runs here, not in the
                    # caller's task); only the actor's own cancellation (shutdown) does, and a git
                    # index.lock it leaves is removed at the next start
                    op.result = outcome.Value(await op.work())
                except Exception as exc:
                    op.result = outcome.Error(exc)
                except trio.Cancelled:
                    op.result = outcome.Error(MetaLockClosed(f"{op.what}: hive-c0re is shutting down"))
                    raise
                finally:
                    op.done.set()
        finally:
            self._running = False
            while True:
                try:
                    op = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                op.result = outcome.Error(MetaLockClosed(f"{op.what}: hive-c0re is shutting down"))
                op.done.set()
