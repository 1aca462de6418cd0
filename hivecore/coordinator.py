"""The coordinator: the one façade every surface (host.sock, dashboard, manager socket) calls.

It owns the cached container rows and tombstones, runs each lifecycle verb inside a
:class:`~actors.transients.TransientGuard`, rescans and emits after it, and sends kicks and helper
events. It never decides *whether* a surface may call it (that is the surface's job: an agent
socket never reaches operator verbs); it decides whether the *operation* makes sense (unknown
agent, manager protections, an operation already in flight).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable

import attrs
import trio

from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from hivecore import store as st
from hivecore.config import Config
from hivecore.container_view import PAUSE_MARKER, build_all, collect_inputs, diff_views
from hivecore.errors import HiveError, InvalidName, Refused, RuntimeFailure, UnknownAgent
from hivecore.kick import REASON_RESTARTED, REASON_STARTED, kick_body
from hivecore.models import Approval, ContainerView, TombstoneView, TransientKind
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, SYSTEM_SENDER, child_path, is_manager, validate_name
from hivecore.runtime.base import AgentSpec, ContainerRuntime
from hivecore.runtime.process import default_agent_spec
from hivecore.store import Store
from hivecore.tombstones import build_tombstone_views
from hivecore.wire.events import AgentNotice, ContainerRemoved, ContainerStateChanged, TombstonesChanged
from hivecore.wire.helper import Destroyed, HelperEvent, Killed, Spawned, helper_to_body

log = logging.getLogger(__name__)

_VERB_OF: dict[TransientKind, str] = {
    "spawning": "spawn",
    "starting": "start",
    "stopping": "stop",
    "restarting": "restart",
    "rebuilding": "rebuild",
    "destroying": "destroy",
}


class Coordinator:
    def __init__(
        self,
        config: Config,
        bus: EventBus,
        store: Store,
        transients: TransientRegistry,
        runtime: ContainerRuntime,
    ) -> None:
        self.config = config
        self.paths = config.paths
        self.bus = bus
        self.store = store
        self.transients = transients
        self.runtime = runtime
        self._views: dict[str, ContainerView] = {}
        self._tombstones: list[TombstoneView] = []
        self._scan_started = 0
        self._scan_applied = 0
        self._stopped_on_purpose: set[str] = set()
        self._rescan_send, self.rescan_requests = trio.open_memory_channel[None](1)

    # --- cached state ----------------------------------------------------------------------------

    def views(self) -> dict[str, ContainerView]:
        """The last rescanned rows (what the dashboard and host.sock show)."""
        return dict(self._views)

    def tombstones(self) -> list[TombstoneView]:
        return list(self._tombstones)

    def stopped_on_purpose(self, name: str) -> bool:
        """True when the last lifecycle verb on ``name`` was a stop, kill or destroy."""
        return name in self._stopped_on_purpose

    def request_rescan(self) -> None:
        """Ask crash_watch for a prompt out-of-band rescan (never blocks; coalesces)."""
        with contextlib.suppress(trio.WouldBlock):  # one request is already queued: coalesce
            self._rescan_send.send_nowait(None)

    async def rescan_containers_and_emit(self) -> dict[str, ContainerView] | None:
        """Rebuild every row, emit ``container_state_changed``/``container_removed`` for the differences.

        Returns the new rows, or ``None`` when a rescan that started later has already been applied
        (this one's facts are older, so it changes nothing).
        """
        self._scan_started += 1
        gen = self._scan_started
        inputs = await collect_inputs(
            self.paths, self.runtime, self.transients.snapshot(), self.config.domain
        )
        if gen < self._scan_applied:
            return None
        new = build_all(inputs)
        diff = diff_views(self._views, new)
        self._views = new
        self._scan_applied = gen
        for view in diff.changed:
            self.bus.publish(ContainerStateChanged(container=view))
        for name in diff.removed:
            self.bus.publish(ContainerRemoved(name=name))
        return new

    async def refresh_tombstones(self) -> list[TombstoneView]:
        """Recompute the kept-state list and emit ``tombstones_changed`` with the full list.

        Called by every site that can create or consume a tombstone (destroy, purge, spawn).
        """
        live = await self.runtime.list()
        self._tombstones = await trio.to_thread.run_sync(build_tombstone_views, self.paths, live)
        self.bus.publish(TombstonesChanged(tombstones=self._tombstones))
        return list(self._tombstones)

    # --- queries ---------------------------------------------------------------------------------

    async def agent_names(self) -> list[str]:
        return sorted(await self.runtime.list())

    async def approvals(self) -> list[Approval]:
        return await self.store.call(st.list_approvals)

    async def require_agent(self, name: object) -> str:
        """A validated name of a container that exists, else :class:`UnknownAgent`/:class:`InvalidName`."""
        valid = validate_name(name)
        if valid not in await self.runtime.list():
            raise UnknownAgent(valid)
        return valid

    # --- messages ----------------------------------------------------------------------------------

    async def kick(self, name: str, reason: str) -> None:
        """Best effort: queue a kick for ``name``; a failure is logged, never raised."""
        try:
            recipient = MANAGER_AGENT if name == MANAGER_NAME else name
            await self.store.call(
                lambda c: st.insert_message(c, SYSTEM_SENDER, recipient, kick_body(name, reason))
            )
            log.info("kicked %s: %s", name, reason)
        except Exception:
            log.warning("could not kick %s (%s)", name, reason, exc_info=True)

    async def notify_manager(self, event: HelperEvent, agent: str, note: str | None = None) -> None:
        """Best effort: a helper event into the manager's inbox, mirrored on the event bus."""
        self.bus.publish(AgentNotice(event=event.EVENT, agent=agent, note=note))
        try:
            body = helper_to_body(event)
            await self.store.call(lambda c: st.insert_message(c, SYSTEM_SENDER, MANAGER_AGENT, body))
        except Exception:
            log.warning("could not notify the manager of %s for %s", event.EVENT, agent, exc_info=True)

    # --- lifecycle verbs -------------------------------------------------------------------------

    async def _lifecycle(self, name: str, kind: TransientKind, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` under a transient, then rescan and emit.

        On cancellation or error the guard still clears the transient, and crash_watch is asked to
        rescan promptly so the cached rows do not keep a stale ``pending``.
        """
        done = False
        try:
            async with self.transients.transient(name, kind):
                try:
                    await work()
                except HiveError:
                    raise
                except Exception as exc:
                    raise RuntimeFailure(f"{_VERB_OF[kind]} {name} failed: {exc}") from exc
                await self.rescan_containers_and_emit()
            done = True
        finally:
            if not done:
                self.request_rescan()
        await self.rescan_containers_and_emit()

    async def start(self, name: str) -> None:
        name = await self.require_agent(name)
        self._stopped_on_purpose.discard(name)
        await self._lifecycle(name, "starting", lambda: self.runtime.start(name))
        log.info("started %s", name)
        await self.kick(name, REASON_STARTED)

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        name = await self.require_agent(name)
        self._stopped_on_purpose.add(name)
        await self._lifecycle(name, "stopping", lambda: self.runtime.stop(name, graceful=graceful))
        log.info("stopped %s (%s)", name, "graceful" if graceful else "hard")
        if not is_manager(name):
            await self.notify_manager(Killed(agent=name), name)

    async def kill(self, name: str) -> None:
        name = await self.require_agent(name)
        if is_manager(name):
            raise Refused("refusing to kill the manager")
        self._stopped_on_purpose.add(name)
        await self._lifecycle(name, "stopping", lambda: self.runtime.stop(name, graceful=False))
        log.info("killed %s", name)
        await self.notify_manager(Killed(agent=name), name)

    async def restart(self, name: str) -> None:
        name = await self.require_agent(name)

        async def work() -> None:
            await self.runtime.stop(name, graceful=True)
            await self.runtime.start(name)

        self._stopped_on_purpose.discard(name)
        await self._lifecycle(name, "restarting", work)
        log.info("restarted %s", name)
        await self.kick(name, REASON_RESTARTED)

    async def destroy(self, name: str, *, purge: bool = False) -> None:
        valid = validate_name(name)
        if is_manager(valid):
            raise Refused("refusing to destroy the manager")
        name = await self.require_agent(valid)
        self._stopped_on_purpose.add(name)
        await self._lifecycle(name, "destroying", lambda: self.runtime.destroy(name))
        failed = await self.store.call(lambda c: st.fail_pending_for_agent(c, name, "agent destroyed"))
        if failed:
            log.info("destroy %s: failed pending approvals %s", name, failed)
        log.info("destroyed %s (state %s)", name, "purged" if purge else "kept")
        if purge:
            await self._purge_state(name)
        await self.refresh_tombstones()
        await self.notify_manager(Destroyed(agent=name), name)

    async def purge_tombstone(self, name: object) -> None:
        """Delete a destroyed agent's kept state (agents/<n>/ and applied/<n>/); no undo."""
        valid = validate_name(name)
        if is_manager(valid):
            raise Refused("refusing to purge the manager's state")
        if valid in await self.runtime.list():
            raise Refused(f'agent "{valid}" still has a live container; destroy it first')
        targets = self._purge_targets(valid)
        if not targets:
            raise HiveError(f'no kept state for "{valid}"')
        await self._purge_state(valid)
        await self.refresh_tombstones()

    def _purge_targets(self, name: str) -> list[str]:
        # both paths are checked before anything is deleted: a planted symlink refuses the whole purge
        agent_dir = child_path(self.paths.agents, name)
        applied_dir = child_path(self.paths.applied_root, name)
        return [str(p) for p in (agent_dir, applied_dir) if p.exists()]

    async def _purge_state(self, name: str) -> None:
        targets = self._purge_targets(name)
        for target in targets:
            await trio.to_thread.run_sync(shutil.rmtree, target)
        log.info("purged state of %s: %s", name, ", ".join(targets) or "nothing left")

    async def spawn(self, name: object) -> None:
        """Privileged spawn (no approval): create the state layout and start the agent."""
        valid = validate_name(name)
        if valid == MANAGER_AGENT:
            raise InvalidName(f'"{MANAGER_AGENT}" is reserved for the manager\'s inbox')
        if valid in await self.runtime.list():
            raise Refused(f'agent "{valid}" already exists')

        async def work() -> None:
            for sub in ("state", "claude", "config"):
                (self.paths.agent_dir(valid) / sub).mkdir(parents=True, exist_ok=True)
            await self.runtime.create(self.agent_spec(valid))
            await self.runtime.start(valid)

        self._stopped_on_purpose.discard(valid)
        try:
            await self._lifecycle(valid, "spawning", work)
        except HiveError as exc:
            await self.notify_manager(Spawned(agent=valid, ok=False, note=str(exc)), valid, str(exc))
            raise
        log.info("spawned %s", valid)
        await self.refresh_tombstones()
        await self.notify_manager(Spawned(agent=valid, ok=True), valid)

    def agent_spec(self, name: str) -> AgentSpec:
        extra = {
            "HIVE_DASHBOARD_PORT": str(self.config.dashboard_port),
            "HIVE_OPERATOR_PRONOUNS": self.config.operator_pronouns,
        }
        spec = default_agent_spec(self.paths, name, extra_env=extra)
        return attrs.evolve(spec, flake_ref=f"{self.paths.meta}#{name}")

    async def set_paused(self, name: object, paused: bool) -> None:
        """Write or remove the agent's pause marker; works while stopped; idempotent."""
        valid = await self.require_agent(name)
        marker = self.paths.agent_state(valid) / PAUSE_MARKER
        if paused:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
        log.info("%s %s", "paused" if paused else "resumed", valid)
        await self.rescan_containers_and_emit()
