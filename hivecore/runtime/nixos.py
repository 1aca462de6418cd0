"""The nixos-container runtime: each agent is a NixOS container built from the meta flake.

Every action shells out (``trio.run_process``, output captured); a non-zero exit raises
:class:`~hivecore.errors.RuntimeFailure` carrying the command's stderr.

================  ==========================================================================
create            ``nixos-container create <c> --system-path <path>`` (an existing container is
                  updated instead), then host-side reconcile (below)
update            ``nix-env -p <profiles>/<c>/system --set <path>`` (what ``nixos-container update``
                  does after its build), ``systemctl reload container@<c>`` if it is up (as
                  ``nixos-container update`` does), then host-side reconcile
start             host-side reconcile, then ``nixos-container start <c>``
stop              ``nixos-container stop <c>``
stop, not         ``machinectl terminate <c>``: machined kills every process of the container at
graceful          once and releases it, without the guest's orderly shutdown. Chosen over
                  ``systemctl kill`` because that only signals the unit's processes and leaves
                  the unit's own stop/restart logic to race with it
destroy           ``nixos-container destroy <c>`` (it stops a running container first; it removes
                  the ``.conf`` too), then the resources drop-in is removed (+ ``daemon-reload``)
list              ``nixos-container list``; per container ``nixos-container status <c>``
                  (``up``/``down``) and ``systemctl is-failed container@<c>.service``. With
                  ``names``, only those containers are probed (the ``list`` still answers which
                  exist)
wait_exit         not supported (``can_wait_exit = False``): raises ``NotImplementedError``
================  ==========================================================================

``<path>`` is ``AgentSpec.system_path``: the container's system closure, which the daemon evaluated
**confined** and built itself (:meth:`hivecore.meta.MetaRepo.build_system`: restrict-eval, the
evaluator uid, memory and time limits). ``nixos-container`` is never given ``--flake`` or
``--config``: both make it evaluate the (manager-written, approved) agent config as root with none of
those limits. A spec without a system path is refused. A ``FLAKE=`` line (which makes a bare
``nixos-container update`` re-evaluate as root) is dropped from every ``.conf``.

``<c>`` is :func:`~hivecore.runtime.base.container_name`: ``h-<name>``, the manager ``hm1nd``
unprefixed. Other containers on the host (``hive-forge``, ``hive-gateway`` …) are ignored.

Host-side reconcile (reference §4.1: "rebuild is the reconcile verb"; also done on every start, so a
reboot, which empties ``/run``, or a daemon upgrade never starts a container with stale host state):

1. the bind sources the daemon owns exist (created if missing): the agent's ``state`` and ``claude``
   dirs and its socket dir; a missing read-only source (applied repo, meta) is logged. Every source
   is walked from a daemon-owned root one component at a time without following a link
   (:mod:`hivecore.agentfs`): the manager has ``/agents`` read-write, so ``agents/<n>/claude`` (or
   ``agents/<n>`` itself) may have been swapped for a link to a host directory; such a source is
   refused (:class:`~hivecore.errors.RuntimeFailure`) and the container is not started;
2. ``<conf_dir>/<c>.conf`` (``/etc/nixos-containers``): :func:`render_conf` (``PRIVATE_NETWORK=0``,
   addresses cleared, ``EXTRA_NSPAWN_FLAGS`` = :func:`container_binds`, every other line kept);
3. ``<unit_dir>/container@<c>.service.d/hive-resources.conf``: ``MemoryMax=``/``CPUQuota=``
   (:func:`render_resources`); ``systemctl daemon-reload`` only when that file changed.

The operator's environment for the agent (``--agent-env-file`` and ``hivectl env``:
:meth:`hivecore.agent_env.AgentEnv.env_for`) is written at every start, just before
``nixos-container start``, to ``<state>/agent-env.d/<n>/env`` (``KEY=VALUE`` lines, 0600, created
0600 and renamed into place in the daemon-owned 0700 dir, reached without following a link), which is
bound read-only at ``/run/hive-env``; the harness loads ``HIVE_AGENT_ENV_FILE`` (the identity sets
it to :data:`CONTAINER_AGENT_ENV_FILE`). No value is ever in the ``.conf``, the store or a log;
destroy removes the file.

``unit_dir`` defaults to ``/run/systemd/system``, not ``/etc/systemd/system``: on NixOS the latter is
a read-only link into the Nix store (generated from the system configuration); ``/run`` is writable
and, being volatile, never keeps a destroyed container's drop-in across a reboot (a start rewrites it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from hivecore import agentfs, proc
from hivecore.agent_env import check_key, check_value
from hivecore.atomic import write_text_atomic
from hivecore.config import StatePaths
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.limits import DEFAULT_CPU_QUOTA, DEFAULT_MEMORY_MAX, validate_cpu_quota, validate_memory_max
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.runtime.base import AgentRuntimeState, AgentSpec, container_name

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = Path("/etc/nixos-containers")
DEFAULT_UNIT_DIR = Path("/run/systemd/system")
DEFAULT_PROFILE_DIR = Path("/nix/var/nix/profiles/per-container")
"""Where ``nixos-container`` keeps each container's ``system`` profile (``<dir>/<c>/system``)."""
_STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+")
RESOURCES_DROPIN = "hive-resources.conf"
CONTAINER_SOCKET = "/run/hive/mcp.sock"
"""The agent's (and the manager's) socket as seen inside its container: what ``HIVE_SOCKET`` must be
there (the meta flake's identity module sets it; the host path in ``AgentSpec.env`` is the process
runtime's)."""
AGENT_ENV_DIR = "agent-env.d"
"""``<state>/agent-env.d/<n>/``: the daemon's (0700), holding agent ``n``'s environment file."""
AGENT_ENV_TARGET = "/run/hive-env"
AGENT_ENV_FILE_NAME = "env"
CONTAINER_AGENT_ENV_FILE = f"{AGENT_ENV_TARGET}/{AGENT_ENV_FILE_NAME}"
"""The operator's environment as the container sees it (its ``HIVE_AGENT_ENV_FILE``)."""
SOCKET_DIR_MODE = 0o751
"""As :mod:`hivecore.unix_listener` makes it when it binds the socket there."""
_SAFE_BIND_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
"""Paths that survive ``EXTRA_NSPAWN_FLAGS`` unharmed: the container's start script expands the
variable unquoted (split on whitespace, globbed) and systemd-nspawn splits ``--bind=`` on ``:``."""
TIME_LIMIT = 120.0
"""Seconds a ``nixos-container``/``systemctl``/``machinectl`` call may take before its group is killed."""
BUILD_TIME_LIMIT = 3600.0
"""Seconds for the calls that build a system closure (``nixos-container create|update``)."""
_BUILDS = (("nixos-container", "create"),)
DROPPED_CONF_KEYS = ("FLAKE",)
"""Removed from every container ``.conf``: ``nixos-container update`` without flags re-evaluates it."""
CLEARED_CONF_KEYS = ("HOST_ADDRESS", "LOCAL_ADDRESS", "HOST_ADDRESS6", "LOCAL_ADDRESS6", "HOST_BRIDGE")
"""Emptied in every container ``.conf``: containers share the host's network namespace."""


def sanitize_conf(text: str) -> str:
    """``.conf`` hygiene: empty the address/bridge keys, drop ``FLAKE=``, force ``PRIVATE_NETWORK=0``.

    Every other line (comments, ``EXTRA_NSPAWN_FLAGS`` …) is kept as it is. Idempotent.
    """
    out: list[str] = []
    private_network_seen = False
    for line in text.splitlines():
        key, sep, _ = line.partition("=")
        key = key.strip()
        if sep and key in DROPPED_CONF_KEYS:
            continue
        if sep and key in CLEARED_CONF_KEYS:
            out.append(f"{key}=")
        elif sep and key == "PRIVATE_NETWORK":
            if not private_network_seen:
                out.append("PRIVATE_NETWORK=0")
            private_network_seen = True
        else:
            out.append(line)
    if not private_network_seen:
        out.append("PRIVATE_NETWORK=0")
    return "\n".join(out) + "\n"


@attrs.frozen
class Bind:
    """One ``--bind``/``--bind-ro`` of a container: host ``root/parts…`` at ``target`` inside it.

    ``root`` is the daemon's own directory (trusted); ``parts`` are the components below it, which a
    hostile manager or agent may have replaced: they are walked without following links.
    """

    root: Path
    parts: tuple[str, ...]
    target: str
    read_only: bool = False
    owned: bool = True
    """The daemon creates ``source`` if it is missing (state, creds, socket dirs); else only checks."""

    @property
    def source(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def flag(self) -> str:
        for path in (str(self.source), self.target):
            if _SAFE_BIND_PATH.fullmatch(path) is None:
                raise RuntimeFailure(
                    f"cannot bind {path!r} into a container: only letters, digits and ._/+@- are safe "
                    "in EXTRA_NSPAWN_FLAGS (choose a --state-dir / --runtime-dir without them)"
                )
        return f"--bind{'-ro' if self.read_only else ''}={self.source}:{self.target}"


def container_binds(name: str, paths: StatePaths, runtime_dir: Path) -> tuple[Bind, ...]:
    """What agent ``name``'s container sees of the host.

    A sub-agent ``n``: its state dir at ``/agents/<n>/state``, its Claude creds at ``/root/.claude``,
    its socket dir ``<runtime-dir>/agents/<n>/`` at ``/run/hive`` (so ``/run/hive/mcp.sock``) and its
    applied repo, read-only, at ``/agents/<n>/applied.git``.

    The manager (reference §1.4): every agent's dir at ``/agents`` (read-write: it edits the
    proposed repos ``/agents/<n>/config``; its own state is ``/agents/hm1nd/state`` as for any
    agent), the applied repos at ``/applied`` and the meta flake at ``/meta`` (both read-only: its
    deploy log and ``flake.lock``), its creds at ``/root/.claude`` and ``<runtime-dir>/manager/`` at
    ``/run/hive``. Every container also gets its environment dir ``<state>/agent-env.d/<n>``,
    read-only, at ``/run/hive-env`` (module doc). Note that ``/agents`` includes the other agents'
    ``claude`` dirs, as in the original.
    """
    name = validate_name(name)
    agents = paths.agents  # agent_state(n) and agent_claude(n) are agents/<n>/state and …/claude
    env = Bind(paths.root, (AGENT_ENV_DIR, name), AGENT_ENV_TARGET, read_only=True)
    if name == MANAGER_NAME:
        return (
            Bind(agents.parent, (agents.name,), "/agents"),
            Bind(agents, (name, "claude"), "/root/.claude"),
            Bind(runtime_dir, ("manager",), "/run/hive"),
            Bind(
                paths.applied_root.parent, (paths.applied_root.name,), "/applied", read_only=True, owned=False
            ),
            Bind(paths.meta.parent, (paths.meta.name,), "/meta", read_only=True, owned=False),
            env,
        )
    return (
        Bind(agents, (name, "state"), f"/agents/{name}/state"),
        Bind(agents, (name, "claude"), "/root/.claude"),
        Bind(runtime_dir, ("agents", name), "/run/hive"),
        Bind(paths.applied_root, (name,), f"/agents/{name}/applied.git", read_only=True, owned=False),
        env,
    )


def nspawn_flags(binds: Sequence[Bind]) -> str:
    return " ".join(bind.flag for bind in binds)


def render_conf(text: str, extra_nspawn_flags: str) -> str:
    """:func:`sanitize_conf`, with ``EXTRA_NSPAWN_FLAGS="<flags>"`` replacing any previous value (in
    place, else appended). The daemon owns that key: flags set there by hand do not survive."""
    out: list[str] = []
    seen = False
    for line in sanitize_conf(text).splitlines():
        key, sep, _ = line.partition("=")
        if sep and key.strip() == "EXTRA_NSPAWN_FLAGS":
            if not seen:
                out.append(f'EXTRA_NSPAWN_FLAGS="{extra_nspawn_flags}"')
            seen = True
        else:
            out.append(line)
    if not seen:
        out.append(f'EXTRA_NSPAWN_FLAGS="{extra_nspawn_flags}"')
    return "\n".join(out) + "\n"


def render_resources(memory_max: str, cpu_quota: str) -> str:
    """The ``hive-resources.conf`` drop-in of ``container@<c>.service`` (values already validated)."""
    return (
        "# written by hive-c0re (--agent-memory-max, --agent-cpu-quota); rewritten on every start and\n"
        "# rebuild, removed on destroy\n"
        "[Service]\n"
        f"MemoryMax={memory_max}\n"
        f"CPUQuota={cpu_quota}\n"
    )


def logical_name(container: str) -> str | None:
    """The agent name of a container, or ``None`` if the container is not one of ours."""
    if container == MANAGER_NAME:
        return MANAGER_NAME
    if not container.startswith("h-"):
        return None
    try:
        return validate_name(container.removeprefix("h-"))
    except HiveError:
        return None


class NixosRuntime:
    """:class:`~hivecore.runtime.base.ContainerRuntime` over ``nixos-container`` (see the module doc)."""

    kind = "nixos"
    can_wait_exit = False

    def __init__(
        self,
        paths: StatePaths,
        *,
        meta_dir: Path,
        runtime_dir: Path | None = None,
        conf_dir: Path = DEFAULT_CONF_DIR,
        unit_dir: Path = DEFAULT_UNIT_DIR,
        profile_dir: Path = DEFAULT_PROFILE_DIR,
        memory_max: str = DEFAULT_MEMORY_MAX,
        cpu_quota: str = DEFAULT_CPU_QUOTA,
        env_source: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        """``runtime_dir``: where the sockets live (``Config.runtime_path``; default ``<state>/run``).
        ``env_source``: the operator's environment of an agent (written at every start; none: empty).
        ``conf_dir``, ``unit_dir`` and ``profile_dir`` are parameters for the tests."""
        self._paths = paths
        self._env_source = env_source
        self._meta_dir = meta_dir
        self._runtime_dir = runtime_dir if runtime_dir is not None else paths.run
        self._conf_dir = conf_dir
        self._unit_dir = unit_dir
        self._profile_dir = profile_dir
        self._resources = render_resources(validate_memory_max(memory_max), validate_cpu_quota(cpu_quota))

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """Every ``h-*`` container and the manager (only those in ``names`` when given; the others are
        not probed); the per-container queries run concurrently."""
        existing = await self._container_names()
        if names is not None:
            wanted = frozenset(names)
            existing = tuple(name for name in existing if name in wanted)
        states: dict[str, AgentRuntimeState] = {}
        errors: list[RuntimeFailure] = []

        async def probe(name: str) -> None:
            container = container_name(name)
            try:
                status = await self._run("nixos-container", "status", container)
                unit = f"container@{container}.service"
                is_failed = await self._run_unchecked("systemctl", "is-failed", unit)
            except RuntimeFailure as e:
                errors.append(e)  # raised plainly below, not wrapped in the nursery's ExceptionGroup
                return
            running = status.strip() == "up"
            failed = is_failed.stdout.decode(errors="replace").strip() == "failed"
            states[name] = AgentRuntimeState(name=name, running=running, failed=failed and not running)

        async with trio.open_nursery() as nursery:
            for name in existing:
                nursery.start_soon(probe, name, name=f"probe {name}")
        if errors:
            raise errors[0]
        return dict(sorted(states.items()))

    async def create(self, spec: AgentSpec) -> None:
        """Create the container from the built system ``spec.system_path``; an existing one is
        updated instead. :class:`RuntimeFailure` for a spec without a system path."""
        name = validate_name(spec.name)
        system = self._system_path(spec)
        self.nspawn_flags(name)  # an unusable bind path is refused before anything is built
        if name in await self._container_names():
            await self.update(spec)
            return
        await self._run("nixos-container", "create", container_name(name), "--system-path", system)
        await self.reconcile(name)

    async def update(self, spec: AgentSpec) -> None:
        """Point the container's ``system`` profile at ``spec.system_path``; reload it if it is up."""
        name = validate_name(spec.name)
        system = self._system_path(spec)
        self.nspawn_flags(name)
        container = container_name(name)
        profile = self._profile_dir / container / "system"
        await trio.to_thread.run_sync(self._prepare_profile_dir, profile.parent)
        await self._run("nix-env", "-p", str(profile), "--set", system)
        if (await self._run("nixos-container", "status", container)).strip() == "up":
            await self._run("systemctl", "reload", f"container@{container}.service")
        await self.reconcile(name)

    @staticmethod
    def _system_path(spec: AgentSpec) -> str:
        path = spec.system_path
        if path is None or _STORE_PATH.fullmatch(path) is None:
            raise RuntimeFailure(
                f"no built system for {spec.name} ({path!r}): the nixos runtime runs only a system "
                "closure the daemon built from the meta flake (confined), never a flake reference"
            )
        return path

    @staticmethod
    def _prepare_profile_dir(directory: Path) -> None:
        """``<profiles>/<c>`` as ``nixos-container create`` makes it (parent 0700, itself 0755)."""
        try:
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o755, exist_ok=True)
        except OSError as e:
            raise RuntimeFailure(f"cannot create {directory}: {e}") from e

    async def start(self, name: str) -> None:
        """Reconcile, write the agent's environment file (module doc), ``nixos-container start``."""
        await self.reconcile(validate_name(name))
        await trio.to_thread.run_sync(self._write_agent_env, name)
        await self._run("nixos-container", "start", container_name(name))

    def _write_agent_env(self, name: str) -> None:
        """``<state>/agent-env.d/<name>/env`` := the operator's environment (blocking). Created 0600
        and renamed into place; no link followed. :class:`RuntimeFailure` names keys, never values."""
        try:
            given = self._env_source(name) if self._env_source is not None else {}
            values = {check_key(k): check_value(k, v) for k, v in given.items()}  # one line each
        except HiveError as exc:
            raise RuntimeFailure(f'cannot start agent "{name}": {exc}') from None
        data = "".join(f"{k}={v}\n" for k, v in sorted(values.items())).encode()
        tmp = f".{AGENT_ENV_FILE_NAME}.tmp"
        try:
            with agentfs.opened_dir(self._paths.root, AGENT_ENV_DIR, name) as fd:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=fd)
                out = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
                )
                try:
                    os.fchmod(out, 0o600)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view) :]
                    os.fsync(out)
                finally:
                    os.close(out)
                os.replace(tmp, AGENT_ENV_FILE_NAME, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            raise RuntimeFailure(
                f'cannot write the environment of agent "{name}" ({AGENT_ENV_DIR}/{name}): {exc.strerror}'
            ) from None

    def _remove_agent_env(self, name: str) -> None:
        """Remove ``<state>/agent-env.d/<name>/`` and its file (blocking; absent: nothing to do)."""
        try:
            with agentfs.opened_dir(self._paths.root, AGENT_ENV_DIR) as fd:
                with agentfs.opened_dir(self._paths.root, AGENT_ENV_DIR, name) as own:
                    for entry in (AGENT_ENV_FILE_NAME, f".{AGENT_ENV_FILE_NAME}.tmp"):
                        agentfs.remove_entry(own, entry)
                os.rmdir(name, dir_fd=fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RuntimeFailure(f'cannot remove the environment of agent "{name}": {exc.strerror}') from None

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        """Graceful: ``nixos-container stop``. Not graceful: ``machinectl terminate`` if it is up."""
        container = container_name(validate_name(name))
        if graceful:
            await self._run("nixos-container", "stop", container)
            return
        if (await self._run("nixos-container", "status", container)).strip() == "up":
            await self._run("machinectl", "terminate", container)

    async def destroy(self, name: str) -> None:
        """``nixos-container destroy`` (stops it first); a container that does not exist is a no-op."""
        validate_name(name)
        if name in await self._container_names():
            await self._run("nixos-container", "destroy", container_name(name))
        await trio.to_thread.run_sync(self._remove_agent_env, name)
        if await trio.to_thread.run_sync(self._remove_resources, container_name(name)):
            await self._run("systemctl", "daemon-reload")

    async def wait_exit(self, name: str) -> None:
        """Not supported: containers are watched by periodic ``list`` rescans (``can_wait_exit``)."""
        raise NotImplementedError("the nixos runtime cannot watch a container's exit")

    async def reconcile(self, name: str) -> None:
        """Re-apply the host-side state of ``name``'s container (module doc): bind sources, ``.conf``,
        resources drop-in, and ``systemctl daemon-reload`` if the drop-in changed."""
        if await trio.to_thread.run_sync(self._reconcile_files, validate_name(name)):
            await self._run("systemctl", "daemon-reload")

    def nspawn_flags(self, name: str) -> str:
        """``EXTRA_NSPAWN_FLAGS`` of ``name``'s container (:class:`RuntimeFailure` for an unsafe path)."""
        return nspawn_flags(container_binds(name, self._paths, self._runtime_dir))

    def resources_dropin(self, container: str) -> Path:
        return self._unit_dir / f"container@{container}.service.d" / RESOURCES_DROPIN

    def _reconcile_files(self, name: str) -> bool:
        """The file work of :meth:`reconcile` (blocking); whether the drop-in changed."""
        container = container_name(name)
        binds = container_binds(name, self._paths, self._runtime_dir)
        flags = nspawn_flags(binds)  # refuses unsafe paths before anything is touched
        for bind in binds:
            self._prepare_source(bind, container)
        self._rewrite(self._conf_dir / f"{container}.conf", lambda text: render_conf(text, flags))
        return self._write_if_changed(self.resources_dropin(container), self._resources)

    @staticmethod
    def _prepare_source(bind: Bind, container: str) -> None:
        """Make sure ``bind``'s source is a real directory reached without a link (module doc, 1.).

        Raises :class:`RuntimeFailure` when a component below the root is a symlink or not a
        directory, or an owned source cannot be created; a missing read-only source is logged.
        """
        mode = SOCKET_DIR_MODE if bind.target == "/run/hive" else 0o700
        between = 0o700 if bind.target == AGENT_ENV_TARGET else SOCKET_DIR_MODE
        try:
            if bind.owned:
                bind.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(bind.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        except OSError as e:
            raise RuntimeFailure(f"cannot create {bind.root} (bound into {container}): {e}") from e
        try:
            for i, part in enumerate(bind.parts):
                if fd < 0:
                    break
                last = i == len(bind.parts) - 1
                kind = agentfs.entry_mode(fd, part)
                if kind is None and bind.owned:
                    try:
                        os.mkdir(part, mode if last else between, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: checked below like any other entry
                    except OSError as e:
                        raise RuntimeFailure(
                            f"cannot create {bind.source} (bound into {container}): {e}"
                        ) from e
                    kind = agentfs.entry_mode(fd, part)
                if kind is None:
                    os.close(fd)
                    fd = -1
                    break
                if not stat.S_ISDIR(kind):
                    what = "a symlink" if stat.S_ISLNK(kind) else "not a directory"
                    at = bind.root.joinpath(*bind.parts[: i + 1])
                    raise RuntimeFailure(
                        f"refusing to bind {bind.source} into {container}: {at} is {what} "
                        "(bind sources are never followed through links; remove it and retry)"
                    )
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as e:  # swapped between the check and the open
                    raise RuntimeFailure(
                        f"refusing to bind {bind.source} into {container}: {part} changed under us ({e})"
                    ) from e
                os.close(fd)
                fd = child
        finally:
            if fd >= 0:
                os.close(fd)
        if fd < 0 and not bind.owned:
            log.warning(
                "%s: %s (bound at %s) is missing; the container will not start",
                container,
                bind.source,
                bind.target,
            )

    def sanitize_conf_file(self, container: str) -> None:
        """Apply :func:`sanitize_conf` to ``<conf_dir>/<container>.conf`` (atomically, keeping its mode)."""
        self._rewrite(self._conf_dir / f"{container}.conf", sanitize_conf)

    @staticmethod
    def _rewrite(path: Path, transform: Callable[[str], str]) -> None:
        """``path`` := ``transform(its text)``, atomically, keeping its mode; a missing file is logged."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.warning("no %s to rewrite", path)
            return
        except OSError as e:
            raise RuntimeFailure(f"cannot read {path}: {e}") from e
        clean = transform(text)
        if clean == text:
            return
        try:
            write_text_atomic(path, clean, mode=path.stat().st_mode & 0o7777)
        except OSError as e:
            raise RuntimeFailure(f"cannot rewrite {path}: {e}") from e

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> bool:
        """Write ``path`` (0644, atomically) unless it already holds ``text``; whether it was written."""
        try:
            if path.read_text(encoding="utf-8") == text:
                return False
        except FileNotFoundError:
            pass
        except OSError as e:
            raise RuntimeFailure(f"cannot read {path}: {e}") from e
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text, mode=0o644)
        except OSError as e:
            raise RuntimeFailure(f"cannot write {path}: {e}") from e
        return True

    def _remove_resources(self, container: str) -> bool:
        """Remove the drop-in (and its dir when empty); whether there was one."""
        path = self.resources_dropin(container)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise RuntimeFailure(f"cannot remove {path}: {e}") from e
        with contextlib.suppress(OSError):  # not empty: someone else's drop-ins
            path.parent.rmdir()
        return True

    async def _container_names(self) -> tuple[str, ...]:
        out = await self._run("nixos-container", "list")
        names = (logical_name(line.strip()) for line in out.splitlines())
        return tuple(name for name in names if name is not None)

    async def _run(self, *argv: str) -> str:
        """Run ``argv``; its stdout, or :class:`RuntimeFailure` with its stderr if it fails."""
        result = await self._run_unchecked(*argv)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise RuntimeFailure(f"`{' '.join(argv)}` failed (exit {result.returncode}): {detail}")
        return result.stdout.decode(errors="replace")

    async def _run_unchecked(self, *argv: str) -> proc.Result:
        limit = BUILD_TIME_LIMIT if argv[:2] in _BUILDS or argv[0] == "nix-env" else TIME_LIMIT
        try:
            result = await proc.run(argv, env=os.environ, time_limit=limit)
        except OSError as e:
            raise RuntimeFailure(f"cannot run {argv[0]}: {e}") from e
        if result.timed_out:
            raise RuntimeFailure(f"`{' '.join(argv)}` did not finish within {limit:.0f} s (stopped)")
        return result
