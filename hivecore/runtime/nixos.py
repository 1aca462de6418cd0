"""The nixos-container runtime: each agent is a NixOS container built from the meta flake.

Every action shells out (``trio.run_process``, output captured); a non-zero exit raises
:class:`~hivecore.errors.RuntimeFailure` carrying the command's stderr.

================  ==========================================================================
create            ``nixos-container create <c> --flake <meta>#<name>`` (an existing container is
                  updated instead), then ``.conf`` hygiene
update            ``nixos-container update <c> --flake <meta>#<name>``, then ``.conf`` hygiene
start / stop      ``nixos-container start|stop <c>``
stop, not         ``machinectl terminate <c>``: machined kills every process of the container at
graceful          once and releases it, without the guest's orderly shutdown. Chosen over
                  ``systemctl kill`` because that only signals the unit's processes and leaves
                  the unit's own stop/restart logic to race with it
destroy           ``nixos-container destroy <c>`` (it stops a running container first)
list              ``nixos-container list``; per container ``nixos-container status <c>``
                  (``up``/``down``) and ``systemctl is-failed container@<c>.service``. With
                  ``names``, only those containers are probed (the ``list`` still answers which
                  exist)
wait_exit         not supported (``can_wait_exit = False``): raises ``NotImplementedError``
================  ==========================================================================

``<c>`` is :func:`~hivecore.runtime.base.container_name`: ``h-<name>``, the manager ``hm1nd``
unprefixed. Other containers on the host (``hive-forge``, ``hive-gateway`` …) are ignored.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Collection
from pathlib import Path

import trio

from hivecore.config import StatePaths
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.runtime.base import AgentRuntimeState, AgentSpec, container_name

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = Path("/etc/nixos-containers")
CLEARED_CONF_KEYS = ("HOST_ADDRESS", "LOCAL_ADDRESS", "HOST_ADDRESS6", "LOCAL_ADDRESS6", "HOST_BRIDGE")
"""Emptied in every container ``.conf``: containers share the host's network namespace."""


def sanitize_conf(text: str) -> str:
    """``.conf`` hygiene: empty the address/bridge keys and force ``PRIVATE_NETWORK=0``.

    Every other line (comments, ``EXTRA_NSPAWN_FLAGS`` …) is kept as it is. Idempotent.
    """
    out: list[str] = []
    private_network_seen = False
    for line in text.splitlines():
        key, sep, _ = line.partition("=")
        key = key.strip()
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

    def __init__(self, paths: StatePaths, *, meta_dir: Path, conf_dir: Path = DEFAULT_CONF_DIR) -> None:
        self._paths = paths
        self._meta_dir = meta_dir
        self._conf_dir = conf_dir

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
        """Create the container from ``<meta>#<name>``; an existing one is updated instead."""
        name = validate_name(spec.name)
        if name in await self._container_names():
            await self.update(spec)
            return
        container = container_name(name)
        await self._run("nixos-container", "create", container, "--flake", self._flake_ref(spec))
        self.sanitize_conf_file(container)

    async def update(self, spec: AgentSpec) -> None:
        container = container_name(validate_name(spec.name))
        await self._run("nixos-container", "update", container, "--flake", self._flake_ref(spec))
        self.sanitize_conf_file(container)

    async def start(self, name: str) -> None:
        await self._run("nixos-container", "start", container_name(validate_name(name)))

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

    async def wait_exit(self, name: str) -> None:
        """Not supported: containers are watched by periodic ``list`` rescans (``can_wait_exit``)."""
        raise NotImplementedError("the nixos runtime cannot watch a container's exit")

    def sanitize_conf_file(self, container: str) -> None:
        """Apply :func:`sanitize_conf` to ``<conf_dir>/<container>.conf`` (atomically, keeping its mode)."""
        path = self._conf_dir / f"{container}.conf"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.warning("no %s to sanitize", path)
            return
        except OSError as e:
            raise RuntimeFailure(f"cannot read {path}: {e}") from e
        clean = sanitize_conf(text)
        if clean == text:
            return
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(clean, encoding="utf-8")
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        except OSError as e:
            raise RuntimeFailure(f"cannot rewrite {path}: {e}") from e

    def _flake_ref(self, spec: AgentSpec) -> str:
        return spec.flake_ref if spec.flake_ref is not None else f"{self._meta_dir}#{spec.name}"

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

    async def _run_unchecked(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)
        except OSError as e:
            raise RuntimeFailure(f"cannot run {argv[0]}: {e}") from e
