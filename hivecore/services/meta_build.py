"""The one build path: every agent is built from the meta flake.

Sync (render ``flake.nix`` from the agent set and commit a change), relock the agent's input, ``nix
eval`` its ``hiveAgents.<n>``, hand the runtime the new command and environment, and record what was
deployed (``<state>/agents/<n>/deployed.json``; the ``deployed/<id>`` tags of the applied repo name
the approval). Spawns, rebuilds, approved config changes and meta updates all come here.

While the meta lock actor is not running (it is in restart backoff, or the daemon is starting or
stopping), a build fails with :class:`MetaUnavailable` and changes nothing: an agent is never built
outside the meta flake. Removing an agent from the flake on destroy is best effort (logged).

An agent without an applied repo (none was seeded) has no flake entry: its build only re-renders
the bundled harness's spec and restarts it (nothing to evaluate).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from hivecore.config import Config
from hivecore.errors import HiveError
from hivecore.meta import (
    HYPERHIVE,
    TEMPLATE_VERSION,
    AgentEntry,
    Deployed,
    agent_input,
    deployed_path,
    write_deployed,
)
from hivecore.repos import Repos
from hivecore.runtime.base import AgentSpec, ContainerRuntime
from hivecore.runtime.nixos import CONTAINER_AGENT_ENV_FILE
from hivecore.runtime.process import default_agent_spec
from hivecore.services.handles import MetaFlake

log = logging.getLogger(__name__)


class MetaUnavailable(HiveError):
    """The meta flake's actor is not running; nothing was built."""


@attrs.define
class MetaBuild:
    config: Config
    runtime: ContainerRuntime
    repos: Repos
    meta: MetaFlake
    """The meta lock actor's handle (the only path to ``<state>/meta``)."""
    dashboard_port: Callable[[], int] | None = None
    """The dashboard's bound port (for agents' environment); default: the configured one."""
    record_recipients: Callable[[str, tuple[str, ...] | None], Awaitable[None]] | None = None
    """Records an agent's deployed ``allowedRecipients`` (from its confined evaluation) for the
    broker (:func:`hivecore.topology.set_allowed`); ``None``: not recorded (tests of builds alone)."""

    _adding: set[str] = attrs.field(factory=set, init=False)
    """Agents a spawn is adding (rendered although their container does not exist yet), so a
    concurrent sync (a rebuild's) never drops them from the meta flake mid-spawn."""
    _removing: set[str] = attrs.field(factory=set, init=False)

    # --- what is rendered --------------------------------------------------------------------------

    def agent_spec(self, name: str) -> AgentSpec:
        """The bundled harness's spec for ``name`` (its identity environment, flake ref set)."""
        port = self.dashboard_port() if self.dashboard_port is not None else self.config.dashboard_port
        extra = {
            "HIVE_DASHBOARD_PORT": str(port),
            "HIVE_OPERATOR_PRONOUNS": self.config.operator_pronouns,
            "HIVE_SOCKET": str(self.config.agent_socket_path(name)),
            "HIVE_TURN_LIMIT": f"{self.config.turn_limit:g}",
        }
        if self.config.runtime == "process":  # a container's is its root's, /root/.claude (bound)
            extra["CLAUDE_CONFIG_DIR"] = str(self.config.paths.agent_claude(name))
        else:  # the process runtime merges the operator's env itself; a container reads it (bound)
            extra["HIVE_AGENT_ENV_FILE"] = CONTAINER_AGENT_ENV_FILE
        spec = default_agent_spec(self.config.paths, name, extra_env=extra)
        return attrs.evolve(spec, flake_ref=f"{self.config.paths.meta}#{name}")

    def entry(self, name: str) -> AgentEntry:
        """How ``name`` is rendered into the meta flake (its identity env: :meth:`agent_spec`'s)."""
        spec = self.agent_spec(name)
        return AgentEntry(
            name=name, applied=self.config.paths.released(name), command=spec.command, identity=spec.env
        )

    async def agents(self, *, adding: str | None = None, removing: str | None = None) -> list[str]:
        """The agents the meta flake renders: every container with an applied repo."""
        names = set(await self.runtime.list()) | self._adding
        if adding is not None:
            names.add(adding)
        names -= self._removing
        names.discard(removing or "")
        paths = self.config.paths

        def with_repo() -> list[str]:
            return sorted(n for n in names if (paths.applied(n) / ".git").is_dir())

        return await trio.to_thread.run_sync(with_repo)

    def _require(self, what: str) -> MetaFlake:
        if not self.meta.running:
            raise MetaUnavailable(
                f"the meta flake is not available ({what}): its actor is restarting, or hive-c0re is "
                "starting or stopping; nothing was built, try again in a moment"
            )
        return self.meta

    # --- the steps ---------------------------------------------------------------------------------

    async def sync(self, *, adding: str | None = None, removing: str | None = None) -> bool:
        """Re-render the meta flake from the agent set (idempotent; commits only a change)."""
        meta = self._require("sync")
        names = await self.agents(adding=adding, removing=removing)
        return await meta.sync([self.entry(n) for n in names])

    async def _evaluate(self, meta: MetaFlake, name: str) -> AgentSpec:
        """``name``'s spec, evaluated confined; for the nixos runtime with its container system built
        by the daemon (confined too: :meth:`hivecore.meta.MetaRepo.build_system`)."""
        spec: AgentSpec = await meta.evaluate(name)
        if self.runtime.kind == "nixos":
            spec = attrs.evolve(spec, system_path=await meta.build_system(name))
        return spec

    async def create(self, name: str) -> None:
        """A spawn's build: render ``name`` into the flake, evaluate it, create its container (not
        started; :meth:`record_deployed` once it runs)."""
        meta = self._require(f"spawn {name}")
        self._adding.add(name)
        try:
            await self.sync(adding=name)
            spec: AgentSpec = await self._evaluate(meta, name)
            await self.runtime.create(spec)
            await self._record(name, spec.allowed_recipients)
        finally:
            self._adding.discard(name)

    async def build(self, name: str, *, start: bool = True) -> None:
        """Sync, relock ``agent-<n>``, ``nix eval`` ``hiveAgents.<n>``, then the runtime runs the new
        command and environment (restart; with ``start=False``, an agent the operator stopped on
        purpose, it is left stopped and runs them at its next start), and the deployed revs are
        recorded (``needs_update`` clears). Raises :class:`MetaUnavailable` (nothing changed) while
        the meta lock is down."""
        meta = self._require(f"rebuild {name}")
        if not await self.repos.check_config(name):
            spec = self.agent_spec(name)
            await self.runtime.update(spec)
        else:
            await self.sync()
            await meta.lock_update_for_rebuild(name)
            spec = await self._evaluate(meta, name)
            await self.runtime.update(spec)
        await self._record(name, spec.allowed_recipients)
        await self.runtime.stop(name, graceful=True)
        if start:
            await self.runtime.start(name)
        await self.record_deployed(name)

    async def _record(self, name: str, allowed: tuple[str, ...] | None) -> None:
        if self.record_recipients is not None:
            await self.record_recipients(name, allowed)

    async def remove(self, name: str) -> None:
        """After a destroy: drop ``name`` from the flake (best effort) and its deployed record."""
        self._removing.add(name)
        try:
            await self.sync(removing=name)
        except HiveError as exc:
            log.warning("destroy %s: could not re-render the meta flake: %s", name, exc)
        finally:
            self._removing.discard(name)
        await trio.to_thread.run_sync(partial(deployed_path(self.config.paths, name).unlink, missing_ok=True))

    async def relock(self, name: str) -> None:
        """After a failed build rolled applied main back: pin the lock to it again (best effort)."""
        try:
            await self._require(f"relock {name}").relock_after_failure(name)
        except HiveError as exc:
            log.warning("meta: could not relock %s after a rollback: %s", name, exc)

    # --- what was deployed -------------------------------------------------------------------------

    async def record_deployed(self, name: str) -> None:
        rev = self.meta.locked_rev(agent_input(name))
        if rev is None:
            return
        record = Deployed(rev, self.meta.locked_rev(HYPERHIVE), TEMPLATE_VERSION)
        await trio.to_thread.run_sync(write_deployed, self.config.paths, name, record)

    def deployed_rev(self, name: str) -> str | None:
        return self.meta.locked_rev(agent_input(name))

    async def deployed_tag(self, name: str, sha: str) -> str | None:
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

    def publish_inputs(self) -> None:
        self.meta.publish_inputs()
