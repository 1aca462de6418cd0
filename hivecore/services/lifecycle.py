"""The lifecycle jobs: spawn, start, stop, kill, restart, destroy, purge, set_paused, rebuild.

:class:`Lifecycle` runs the lifecycle kinds of the job registry (:mod:`hivecore.jobkinds`). Each job
runs in the lane's nursery (never in the caller's task) with a
:class:`~hivecore.services.context.JobContext`: under the transient its registry row names, where the
agent is visibly busy, it rescans only its own agent, and then kicks the agent or tells the manager.
Every job is idempotent, so the lane can replay one a daemon stop interrupted (``crash_recover``)
and finish it. Every build goes through :class:`~hivecore.services.meta_build.MetaBuild`.

Intent ("stopped on purpose") is the lane's, from the registry (:class:`hivecore.jobkinds.Intent`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from hivecore import agent_users, topology, usage
from hivecore import store as st
from hivecore.agent_env import AgentEnv
from hivecore.config import Config
from hivecore.container_view import set_pause_marker
from hivecore.errors import HiveError, RuntimeFailure, UnknownAgent
from hivecore.jobkinds import REGISTRY
from hivecore.kick import REASON_REBUILT, REASON_RESTARTED, REASON_STARTED
from hivecore.models import JobKind
from hivecore.names import OPERATOR_NAME, child_path, is_manager
from hivecore.repos import Repos
from hivecore.runtime.base import AgentRuntimeState, ContainerRuntime
from hivecore.services.context import JobContext
from hivecore.services.handles import MetaFlake
from hivecore.services.meta_build import MetaBuild
from hivecore.wire.helper import Destroyed, Killed, Rebuilt, Spawned

log = logging.getLogger(__name__)

DESTROYED_NOTE = "{name} was destroyed while this approval was pending; nothing was deployed"
"""The note of a pending approval a destroy of its agent fails."""

Build = Callable[[str], Awaitable[None]]
"""The build step of a rebuild (a seam for tests); raises HiveError on failure."""


def remove_tree(path: Path) -> None:
    """``rmtree`` that tolerates entries vanishing under it (blocking); :class:`HiveError` naming
    what could not be removed."""

    def vanished(func: Any, failed: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    try:
        shutil.rmtree(path, onerror=vanished)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HiveError(
            f"could not delete {exc.filename or path}: {exc.strerror or exc}; nothing else of it "
            "changed, purge again to finish"
        ) from None


@attrs.define
class Lifecycle:
    config: Config
    runtime: ContainerRuntime
    repos: Repos
    """The agents' proposed/applied git repos (seeded at spawn)."""
    builder: MetaBuild
    """The one build path (the meta flake)."""
    build: Build | None = None
    """A stand-in for :meth:`MetaBuild.build` (tests); ``None``: the meta flake's build."""
    agent_env: AgentEnv | None = None
    """The operator's per-agent environment values: a purge forgets the agent's."""

    @property
    def meta(self) -> MetaFlake:
        """The meta flake's actor handle (the façade reads its inputs)."""
        return self.builder.meta

    # --- the job service -----------------------------------------------------------------------

    async def run_job(self, ctx: JobContext, args: Mapping[str, Any]) -> None:
        job = ctx.job
        name = job.agent
        if name is None:
            raise HiveError(f"job {job.id}: {job.kind} needs an agent")
        match job.kind:
            case "spawn":
                await self.spawn(ctx, name)
            case "start":
                await self.start(ctx, name)
            case "stop":
                await self.stop(ctx, name, graceful=bool(args.get("graceful", True)))
            case "kill":
                await self.kill(ctx, name)
            case "restart":
                await self.restart(ctx, name)
            case "destroy":
                await self.destroy(ctx, name, purge=bool(args.get("purge", False)))
            case "purge":
                await self.purge(ctx, name)
            case "set_paused":
                await self.set_paused(ctx, name, bool(args.get("paused", True)))
            case "rebuild":
                await self.rebuild(ctx, name)
            case _:
                raise HiveError(f"job {job.id}: {job.kind} is not a lifecycle job")

    # --- helpers -------------------------------------------------------------------------------

    async def _guarded(
        self, ctx: JobContext, name: str, kind: JobKind, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``work`` under the transient of ``kind``'s registry row, rescanning just ``name``
        inside and after it.

        On an error or cancellation the guard still clears the transient, and a rescan of the agent
        is requested so the cached row does not keep a stale ``pending``.
        """
        transient = REGISTRY[kind].transient
        assert transient is not None, f"{kind} shows no transient"
        done = False
        try:
            async with ctx.transient(name, transient):
                try:
                    await work()
                except HiveError:
                    raise
                except Exception as exc:
                    log.warning("%s %s failed", kind, name, exc_info=True)
                    raise RuntimeFailure(f"{kind} {name} failed: {exc}") from exc
                await ctx.rescan([name])
            done = True
        finally:
            if not done:
                ctx.request_rescan([name])
        await ctx.rescan([name])

    # --- the verbs -----------------------------------------------------------------------------

    async def spawn(self, ctx: JobContext, name: str, *, parent: str | None = OPERATOR_NAME) -> None:
        """Create and start ``name``; ``parent`` is who requested it (:mod:`hivecore.topology`; the
        manager has none)."""
        paths = self.config.paths
        recorded = None if is_manager(name) else parent
        await ctx.store.call(lambda c: topology.set_parent(c, name, recorded))

        async def work() -> None:
            def layout() -> None:
                # 0700: under a root daemon other agents traverse agents/ (see hivecore.agent_users)
                paths.agent_dir(name).mkdir(mode=0o700, exist_ok=True)
                for sub in ("state", "claude", "config"):
                    (paths.agent_dir(name) / sub).mkdir(mode=0o700, exist_ok=True)

            await trio.to_thread.run_sync(layout)
            # its inbox: the incarnation a destroy kept (a revive), else a new one (no earlier one's mail)
            await ctx.notify.broker.begin_incarnation(name)
            if await self.repos.seed(name):  # a revived tombstone keeps its repos
                log.info("spawn %s: seeded its config repos", name)
            if self.config.runtime == "process":  # the manager's uid edits every proposed repo
                await trio.to_thread.run_sync(agent_users.prepare_config, paths, name)
            await self.builder.create(name)
            await self.runtime.start(name)
            await self.builder.record_deployed(name)

        try:
            await self._guarded(ctx, name, "spawn", work)
        except HiveError as exc:
            await ctx.notify.notify_manager(Spawned(agent=name, ok=False, note=str(exc)), name, str(exc))
            raise
        log.info("spawned %s", name)
        await ctx.refresh_tombstones()
        await ctx.notify.notify_manager(Spawned(agent=name, ok=True), name)

    async def start(self, ctx: JobContext, name: str) -> None:
        """Start a stopped agent and kick it; a running one is left as it is (no kick)."""
        state = (await self.runtime.list([name])).get(name)
        if state is not None and state.running:
            log.info("start %s: already running", name)
            return
        ctx.refuse_if_held(name)
        await self._guarded(ctx, name, "start", lambda: self.runtime.start(name))
        log.info("started %s", name)
        await ctx.notify.kick(name, REASON_STARTED)

    async def stop(self, ctx: JobContext, name: str, *, graceful: bool = True) -> None:
        await self._guarded(ctx, name, "stop", lambda: self.runtime.stop(name, graceful=graceful))
        log.info("stopped %s (%s)", name, "graceful" if graceful else "hard")
        if not is_manager(name):
            await ctx.notify.notify_manager(Killed(agent=name), name)

    async def kill(self, ctx: JobContext, name: str) -> None:
        await self._guarded(ctx, name, "kill", lambda: self.runtime.stop(name, graceful=False))
        log.info("killed %s", name)
        await ctx.notify.notify_manager(Killed(agent=name), name)

    async def restart(self, ctx: JobContext, name: str) -> None:
        ctx.refuse_if_held(name)

        async def work() -> None:
            await self.runtime.stop(name, graceful=True)
            await self.runtime.start(name)

        await self._guarded(ctx, name, "restart", work)
        log.info("restarted %s", name)
        await ctx.notify.kick(name, REASON_RESTARTED)

    async def rebuild_agent(
        self,
        ctx: JobContext,
        name: str,
        *,
        before: Callable[[], Awaitable[None]] | None = None,
        on_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The one build seam (rebuilds and approved config changes): :attr:`build`, else the meta
        flake's build, under the ``rebuilding`` transient. No kick, no helper event.

        Inside the transient, in order: a rollback an earlier approval's failure left unfinished is
        settled (:meth:`~hivecore.repos.Repos.settle_rollbacks`; if it cannot be, nothing is built:
        a main that should have been rolled back is never deployed), then ``before`` (an approval
        moves main), the build, and on a build error ``on_failure`` (an approval rolls main back),
        so the row never shows the half-way state as ``needs_update``. An agent the operator
        stopped on purpose is built and left stopped (:meth:`JobContext.stopped_on_purpose`)."""
        keep_stopped = ctx.stopped_on_purpose(name) or ctx.held(name)  # a crash-loop hold too

        async def build(name: str) -> None:
            if self.build is not None:
                await self.build(name)
            else:
                await self.builder.build(name, start=not keep_stopped)

        async def work() -> None:
            if await self.repos.is_repo(self.repos.applied(name)):
                try:
                    await self.repos.settle_rollbacks(name)
                except HiveError as exc:
                    raise HiveError(
                        f"{name} was not built: a failed approval left its applied main to be rolled "
                        f"back and that still fails ({exc})"
                    ) from None
            if before is not None:
                await before()
            try:
                await build(name)
            except Exception:
                if on_failure is not None:
                    await on_failure()
                raise

        await self._guarded(ctx, name, "rebuild", work)

    async def rebuild(self, ctx: JobContext, name: str) -> None:
        try:
            await self.rebuild_agent(ctx, name)
        except HiveError as exc:
            await ctx.notify.notify_manager(Rebuilt(agent=name, ok=False, note=str(exc)), name, str(exc))
            raise
        log.info(
            "rebuilt %s%s",
            name,
            " (left stopped, as the operator left it)" if ctx.stopped_on_purpose(name) else "",
        )
        if not ctx.stopped_on_purpose(name):
            await ctx.notify.kick(name, REASON_REBUILT)
        sha = self.builder.deployed_rev(name)
        tag = await self.builder.deployed_tag(name, sha) if sha else None
        await ctx.notify.notify_manager(Rebuilt(agent=name, ok=True, sha=sha, tag=tag), name)
        self.builder.publish_inputs()

    async def destroy(self, ctx: JobContext, name: str, *, purge: bool = False) -> None:
        await self._guarded(ctx, name, "destroy", lambda: self.runtime.destroy(name))
        await self.builder.remove(name)
        if ctx.env.holds.discard(name) is not None:  # a crash-loop hold ends with the agent
            await ctx.store.call(lambda c: st.delete_hold(c, name))
        note = DESTROYED_NOTE.format(name=name)
        failed = await ctx.store.call(lambda c: st.fail_pending_for_agent(c, name, note))
        for approval in failed:  # the manager and the dashboard see each resolve, as for a deny
            log.info("destroy %s: approval %d failed", name, approval.id)
            await ctx.notify.approval_resolved(approval)
        log.info("destroyed %s (state %s)", name, "purged" if purge else "kept")
        if purge:
            await ctx.notify.broker.end_incarnation(name, f"{name} was destroyed and its state purged")
            await self._purge_state(name)
            await self._forget(ctx, name)
        await ctx.refresh_tombstones()
        await ctx.notify.notify_manager(Destroyed(agent=name), name)

    async def purge(self, ctx: JobContext, name: str) -> None:
        """Delete a destroyed agent's kept state (agents/<n>/ and applied/<n>/); no undo. Its
        incarnation ends first: mail still queued for it is never handed to a later agent of the name."""
        await ctx.notify.broker.end_incarnation(name, f"the kept state of {name} was purged")
        await self._purge_state(name)
        await self._forget(ctx, name)
        await ctx.refresh_tombstones()

    async def _forget(self, ctx: JobContext, name: str) -> None:
        """A purged agent's environment values and usage go with its state: a new agent of the same
        name starts clean."""
        if self.agent_env is not None:
            await trio.to_thread.run_sync(self.agent_env.forget, name)
        await ctx.store.call(lambda c: usage.forget(c, name))
        await ctx.store.call(lambda c: topology.forget(c, name))

    def purge_targets(self, name: str) -> list[Path]:
        """What a purge deletes. Both paths are checked before anything is deleted: a planted
        symlink refuses the whole purge."""
        paths = self.config.paths
        agent_dir = child_path(paths.agents, name)
        applied_dir = child_path(paths.applied_root, name)
        released_dir = child_path(paths.released_root, name)
        return [p for p in (agent_dir, applied_dir, released_dir) if p.exists()]

    async def _purge_state(self, name: str) -> None:
        """Delete what :meth:`purge_targets` lists; a file that vanishes meanwhile is not an error.
        Raises :class:`HiveError` when something is left (the tombstone stays; a retry of the purge,
        or of ``destroy --purge``, completes it)."""
        targets = await trio.to_thread.run_sync(self.purge_targets, name)
        for target in targets:
            await trio.to_thread.run_sync(remove_tree, target)
        log.info("purged state of %s: %s", name, ", ".join(map(str, targets)) or "nothing left")

    async def set_paused(self, ctx: JobContext, name: str, paused: bool) -> None:
        """Write or remove the agent's pause marker; works while stopped; idempotent.
        :class:`UnknownAgent` when the runtime has no such agent (the rescan's own probe says so)."""

        def mark(states: Mapping[str, AgentRuntimeState]) -> None:
            if name not in states:
                raise UnknownAgent(name)
            # the state dir is agent-writable: never follow a link planted there (we run as root)
            set_pause_marker(self.config.paths, name, paused)

        # the marker is written in the rescan's own thread hop, between its probe and its facts; a
        # pause changes no usage, so the row keeps the activity last read (one database read less)
        await ctx.rescan([name], before=mark, usage=False)
        log.info("%s %s", "paused" if paused else "resumed", name)
