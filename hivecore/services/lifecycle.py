"""The lifecycle jobs: spawn, start, stop, kill, restart, destroy, purge, set_paused, rebuild.

:class:`Lifecycle` is the job lane's runner. Each job runs in the lane's nursery (never in the
caller's task), under a :class:`~actors.transients.TransientGuard` where the agent is visibly busy,
rescans only its own agent, and then kicks the agent or tells the manager. Every job is idempotent,
so the lane can replay one a daemon stop interrupted (``crash_recover``) and finish it.

Intent — "the last accepted verb stopped this agent on purpose" — is recorded when the lane
*accepts* a job (:meth:`Lifecycle.accepted`), never for a refused one, and is what crash_watch asks
before calling a stop a crash.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.transients import TransientRegistry
from actors.views import Views
from hivecore import store as st
from hivecore.config import Config
from hivecore.container_view import set_pause_marker
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.kick import REASON_REBUILT, REASON_RESTARTED, REASON_STARTED
from hivecore.models import Job, TransientKind
from hivecore.names import child_path, is_manager
from hivecore.repos import Repos
from hivecore.runtime.base import AgentSpec, ContainerRuntime
from hivecore.runtime.process import default_agent_spec
from hivecore.services.notify import Notifier
from hivecore.store import Store
from hivecore.wire.helper import Destroyed, Killed, Rebuilt, Spawned

log = logging.getLogger(__name__)

Build = Callable[[str], Awaitable[None]]
"""The build step of a rebuild (a seam: the meta flake replaces it); raises HiveError on failure."""


def _default_repos(lifecycle: Lifecycle) -> Repos:
    return Repos(lifecycle.config.paths)

_STOPS = frozenset({"stop", "kill", "destroy"})
_STARTS = frozenset({"spawn", "start", "restart", "rebuild", "apply_commit"})


class Intent:
    """Which agents were stopped on purpose. Plain synchronous state, owned by whoever mutates it
    between checkpoints (the lane's accept and crash_watch's judging are both synchronous)."""

    def __init__(self) -> None:
        self._stopped: set[str] = set()

    def stopped_on_purpose(self, name: str) -> bool:
        return name in self._stopped

    def record(self, job: Job) -> None:
        if job.agent is None:
            return
        if job.kind in _STOPS:
            self._stopped.add(job.agent)
        elif job.kind in _STARTS:
            self._stopped.discard(job.agent)


@attrs.define
class Lifecycle:
    config: Config
    runtime: ContainerRuntime
    views: Views
    transients: TransientRegistry
    store: Store
    notifier: Notifier
    intent: Intent = attrs.field(factory=Intent)
    build: Build | None = None
    """The rebuild's build step; ``None``: :meth:`default_build` (nix eval of the applied config, then
    re-render the spec and restart; the meta flake replaces it)."""
    dashboard_port: Callable[[], int] | None = None
    """The dashboard's bound port (for agents' environment); default: the configured one."""
    repos: Repos = attrs.field(default=attrs.Factory(_default_repos, takes_self=True))
    """The agents' proposed/applied git repos (seeded at spawn; evaluated by the build)."""

    # --- the JobRunner protocol ----------------------------------------------------------------

    def accepted(self, job: Job, args: Mapping[str, Any]) -> None:
        self.intent.record(job)

    async def run(self, job: Job, args: Mapping[str, Any]) -> None:
        name = job.agent
        if name is None:
            raise HiveError(f"job {job.id}: {job.kind} needs an agent")
        match job.kind:
            case "spawn":
                await self.spawn(name)
            case "start":
                await self.start(name)
            case "stop":
                await self.stop(name, graceful=bool(args.get("graceful", True)))
            case "kill":
                await self.kill(name)
            case "restart":
                await self.restart(name)
            case "destroy":
                await self.destroy(name, purge=bool(args.get("purge", False)))
            case "purge":
                await self.purge(name)
            case "set_paused":
                await self.set_paused(name, bool(args.get("paused", True)))
            case "rebuild":
                await self.rebuild(name)

    # --- helpers -------------------------------------------------------------------------------

    async def _guarded(
        self, name: str, kind: TransientKind, verb: str, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``work`` under a transient, rescanning just ``name`` inside and after it.

        On an error or cancellation the guard still clears the transient, and a rescan of the agent
        is requested so the cached row does not keep a stale ``pending``.
        """
        done = False
        try:
            async with self.transients.transient(name, kind):
                try:
                    await work()
                except HiveError:
                    raise
                except Exception as exc:
                    log.warning("%s %s failed", verb, name, exc_info=True)
                    raise RuntimeFailure(f"{verb} {name} failed: {exc}") from exc
                await self.views.rescan([name])
            done = True
        finally:
            if not done:
                self.views.request_rescan([name])
        await self.views.rescan([name])

    def agent_spec(self, name: str) -> AgentSpec:
        port = self.dashboard_port() if self.dashboard_port is not None else self.config.dashboard_port
        extra = {
            "HIVE_DASHBOARD_PORT": str(port),
            "HIVE_OPERATOR_PRONOUNS": self.config.operator_pronouns,
            "HIVE_SOCKET": str(self.config.agent_socket_path(name)),
        }
        spec = default_agent_spec(self.config.paths, name, extra_env=extra)
        return attrs.evolve(spec, flake_ref=f"{self.config.paths.meta}#{name}")

    # --- the verbs -----------------------------------------------------------------------------

    async def spawn(self, name: str) -> None:
        paths = self.config.paths

        async def work() -> None:
            def layout() -> None:
                for sub in ("state", "claude", "config"):
                    (paths.agent_dir(name) / sub).mkdir(parents=True, exist_ok=True)

            await trio.to_thread.run_sync(layout)
            if await self.repos.seed(name):  # a revived tombstone keeps its repos
                log.info("spawn %s: seeded its config repos", name)
            await self.runtime.create(self.agent_spec(name))
            await self.runtime.start(name)

        try:
            await self._guarded(name, "spawning", "spawn", work)
        except HiveError as exc:
            await self.notifier.notify_manager(Spawned(agent=name, ok=False, note=str(exc)), name, str(exc))
            raise
        log.info("spawned %s", name)
        await self.views.refresh_tombstones()
        await self.notifier.notify_manager(Spawned(agent=name, ok=True), name)

    async def start(self, name: str) -> None:
        await self._guarded(name, "starting", "start", lambda: self.runtime.start(name))
        log.info("started %s", name)
        await self.notifier.kick(name, REASON_STARTED)

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        await self._guarded(name, "stopping", "stop", lambda: self.runtime.stop(name, graceful=graceful))
        log.info("stopped %s (%s)", name, "graceful" if graceful else "hard")
        if not is_manager(name):
            await self.notifier.notify_manager(Killed(agent=name), name)

    async def kill(self, name: str) -> None:
        await self._guarded(name, "stopping", "kill", lambda: self.runtime.stop(name, graceful=False))
        log.info("killed %s", name)
        await self.notifier.notify_manager(Killed(agent=name), name)

    async def restart(self, name: str) -> None:
        async def work() -> None:
            await self.runtime.stop(name, graceful=True)
            await self.runtime.start(name)

        await self._guarded(name, "restarting", "restart", work)
        log.info("restarted %s", name)
        await self.notifier.kick(name, REASON_RESTARTED)

    async def default_build(self, name: str) -> None:
        """Evaluate the applied ``agent.nix`` (a broken config fails here), then restart the agent."""
        await self.repos.evaluate(name)
        await self.runtime.update(self.agent_spec(name))
        await self.runtime.stop(name, graceful=True)
        await self.runtime.start(name)

    async def rebuild_agent(self, name: str) -> None:
        """The one build seam (rebuilds and approved config changes): :attr:`build`, else
        :meth:`default_build`, under the ``rebuilding`` transient. No kick, no helper event."""
        build = self.build if self.build is not None else self.default_build
        await self._guarded(name, "rebuilding", "rebuild", lambda: build(name))

    async def rebuild(self, name: str) -> None:
        try:
            await self.rebuild_agent(name)
        except HiveError as exc:
            await self.notifier.notify_manager(Rebuilt(agent=name, ok=False, note=str(exc)), name, str(exc))
            raise
        log.info("rebuilt %s", name)
        await self.notifier.kick(name, REASON_REBUILT)
        await self.notifier.notify_manager(Rebuilt(agent=name, ok=True), name)

    async def destroy(self, name: str, *, purge: bool = False) -> None:
        await self._guarded(name, "destroying", "destroy", lambda: self.runtime.destroy(name))
        failed = await self.store.call(lambda c: st.fail_pending_for_agent(c, name, "agent destroyed"))
        if failed:
            log.info("destroy %s: failed pending approvals %s", name, failed)
        log.info("destroyed %s (state %s)", name, "purged" if purge else "kept")
        if purge:
            await self._purge_state(name)
        await self.views.refresh_tombstones()
        await self.notifier.notify_manager(Destroyed(agent=name), name)

    async def purge(self, name: str) -> None:
        """Delete a destroyed agent's kept state (agents/<n>/ and applied/<n>/); no undo."""
        await self._purge_state(name)
        await self.views.refresh_tombstones()

    def purge_targets(self, name: str) -> list[Path]:
        """What a purge deletes. Both paths are checked before anything is deleted: a planted
        symlink refuses the whole purge."""
        paths = self.config.paths
        agent_dir = child_path(paths.agents, name)
        applied_dir = child_path(paths.applied_root, name)
        return [p for p in (agent_dir, applied_dir) if p.exists()]

    async def _purge_state(self, name: str) -> None:
        targets = await trio.to_thread.run_sync(self.purge_targets, name)
        for target in targets:
            await trio.to_thread.run_sync(shutil.rmtree, target)
        log.info("purged state of %s: %s", name, ", ".join(map(str, targets)) or "nothing left")

    async def set_paused(self, name: str, paused: bool) -> None:
        """Write or remove the agent's pause marker; works while stopped; idempotent."""
        # the state dir is agent-writable: never follow a link planted there (we run as root)
        await trio.to_thread.run_sync(set_pause_marker, self.config.paths, name, paused)
        log.info("%s %s", "paused" if paused else "resumed", name)
        await self.views.rescan([name])
