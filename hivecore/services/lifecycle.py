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
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.meta_lock import MetaLock
from actors.transients import TransientRegistry
from actors.views import Views
from hivecore import agent_users
from hivecore import store as st
from hivecore.config import Config
from hivecore.container_view import set_pause_marker
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.kick import REASON_REBUILT, REASON_RESTARTED, REASON_STARTED
from hivecore.meta import (
    HYPERHIVE,
    TEMPLATE_VERSION,
    AgentEntry,
    Deployed,
    agent_input,
    deployed_path,
    write_deployed,
)
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
    meta: MetaLock | None = None
    """The meta flake (the only path to ``<state>/meta``). While its actor runs, spawn, destroy and
    every rebuild go through it; without it (tests that do not start it) the plain Python spec and
    :meth:`default_build` are used."""

    _meta_adding: set[str] = attrs.field(factory=set, init=False)
    """Agents a spawn is adding (rendered although their container does not exist yet), so a
    concurrent sync (a rebuild's) never drops them from the meta flake mid-spawn."""
    _meta_removing: set[str] = attrs.field(factory=set, init=False)

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
                # 0700: under a root daemon other agents traverse agents/ (see hivecore.agent_users)
                paths.agent_dir(name).mkdir(mode=0o700, exist_ok=True)
                for sub in ("state", "claude", "config"):
                    (paths.agent_dir(name) / sub).mkdir(mode=0o700, exist_ok=True)

            await trio.to_thread.run_sync(layout)
            if await self.repos.seed(name):  # a revived tombstone keeps its repos
                log.info("spawn %s: seeded its config repos", name)
            if self.config.runtime == "process":  # the manager's uid edits every proposed repo
                await trio.to_thread.run_sync(agent_users.prepare_config, paths, name)
            if self._meta_on():
                self._meta_adding.add(name)
                try:
                    await self.sync_meta(adding=name)
                    spec = await self._meta_spec(name)
                    await self.runtime.create(spec)
                finally:
                    self._meta_adding.discard(name)
                await self.runtime.start(name)
                await self._record_deployed(name)
            else:
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

    # --- the meta flake ------------------------------------------------------------------------

    def _meta_on(self) -> bool:
        return self.meta is not None and self.meta.running

    def meta_entry(self, name: str) -> AgentEntry:
        """How ``name`` is rendered into the meta flake (its identity env: :meth:`agent_spec`'s)."""
        spec = self.agent_spec(name)
        return AgentEntry(
            name=name, applied=self.config.paths.applied(name), command=spec.command, identity=spec.env
        )

    async def meta_agents(self, *, adding: str | None = None, removing: str | None = None) -> list[str]:
        """The agents the meta flake renders: every container with an applied repo."""
        names = set(await self.runtime.list()) | self._meta_adding
        if adding is not None:
            names.add(adding)
        names -= self._meta_removing
        names.discard(removing or "")
        paths = self.config.paths

        def with_repo() -> list[str]:
            return sorted(n for n in names if (paths.applied(n) / ".git").is_dir())

        return await trio.to_thread.run_sync(with_repo)

    async def sync_meta(self, *, adding: str | None = None, removing: str | None = None) -> bool:
        """Re-render the meta flake from the agent set (idempotent; commits only a change)."""
        assert self.meta is not None
        names = await self.meta_agents(adding=adding, removing=removing)
        return await self.meta.sync([self.meta_entry(n) for n in names])

    async def _meta_spec(self, name: str) -> AgentSpec:
        assert self.meta is not None
        return await self.meta.evaluate(name)

    async def _record_deployed(self, name: str) -> None:
        assert self.meta is not None
        rev = self.meta.locked_rev(agent_input(name))
        if rev is None:
            return
        record = Deployed(rev, self.meta.locked_rev(HYPERHIVE), TEMPLATE_VERSION)
        await trio.to_thread.run_sync(write_deployed, self.config.paths, name, record)

    async def meta_build(self, name: str) -> None:
        """The meta flake's build: sync, relock ``agent-<n>``, ``nix eval`` ``hiveAgents.<n>``, then
        the runtime runs the new command and environment (restart), and the deployed revs are
        recorded (``needs_update`` clears). An agent without an applied repo: :meth:`default_build`."""
        if not await self.repos.check_config(name):
            await self.default_build(name)
            return
        await self.sync_meta()
        assert self.meta is not None
        await self.meta.lock_update_for_rebuild(name)
        spec = await self._meta_spec(name)
        await self.runtime.update(spec)
        await self.runtime.stop(name, graceful=True)
        await self.runtime.start(name)
        await self._record_deployed(name)

    async def relock(self, name: str) -> None:
        """After a failed build rolled applied main back: pin the lock to it again (best effort)."""
        if not self._meta_on():
            return
        assert self.meta is not None
        try:
            await self.meta.lock_update_for_rebuild(name)
        except HiveError as exc:
            log.warning("meta: could not relock %s after a rollback: %s", name, exc)

    def deployed_rev(self, name: str) -> str | None:
        return self.meta.locked_rev(agent_input(name)) if self.meta is not None else None

    def publish_meta_inputs(self) -> None:
        if self.meta is not None:
            self.meta.publish_inputs()

    async def default_build(self, name: str) -> None:
        """Evaluate the applied ``agent.nix`` (a broken config fails here), then restart the agent."""
        await self.repos.evaluate(name, limits=self.config.eval_limits)
        await self.runtime.update(self.agent_spec(name))
        await self.runtime.stop(name, graceful=True)
        await self.runtime.start(name)

    async def rebuild_agent(self, name: str) -> None:
        """The one build seam (rebuilds and approved config changes): :attr:`build`, else
        :meth:`meta_build` while the meta lock runs, else :meth:`default_build`, under the
        ``rebuilding`` transient. No kick, no helper event."""
        if self.build is not None:
            build = self.build
        elif self._meta_on():
            build = self.meta_build
        else:
            build = self.default_build
        await self._guarded(name, "rebuilding", "rebuild", lambda: build(name))

    async def rebuild(self, name: str) -> None:
        try:
            await self.rebuild_agent(name)
        except HiveError as exc:
            await self.notifier.notify_manager(Rebuilt(agent=name, ok=False, note=str(exc)), name, str(exc))
            raise
        log.info("rebuilt %s", name)
        await self.notifier.kick(name, REASON_REBUILT)
        sha = self.deployed_rev(name)
        tag = await self._deployed_tag(name, sha) if sha else None
        await self.notifier.notify_manager(Rebuilt(agent=name, ok=True, sha=sha, tag=tag), name)
        self.publish_meta_inputs()

    async def _deployed_tag(self, name: str, sha: str) -> str | None:
        """The newest ``deployed/<id>`` tag at ``sha`` (the approval that deployed it), if any."""
        try:
            result = await self.repos.git(
                self.repos.applied(name),
                "tag",
                "--points-at",
                sha,
                "--list",
                "deployed/*",
                what="reading deployed tags",
                check=False,
            )
        except HiveError:
            return None
        tags = result.stdout.decode(errors="replace").split()
        return max(
            tags,
            key=lambda t: int(t.rsplit("/", 1)[1]) if t.rsplit("/", 1)[1].isdigit() else -1,
            default=None,
        )

    async def destroy(self, name: str, *, purge: bool = False) -> None:
        await self._guarded(name, "destroying", "destroy", lambda: self.runtime.destroy(name))
        if self._meta_on():
            self._meta_removing.add(name)
            try:
                await self.sync_meta(removing=name)
            except HiveError as exc:
                log.warning("destroy %s: could not re-render the meta flake: %s", name, exc)
            finally:
                self._meta_removing.discard(name)
        await trio.to_thread.run_sync(partial(deployed_path(self.config.paths, name).unlink, missing_ok=True))
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
