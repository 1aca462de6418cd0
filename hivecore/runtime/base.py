"""The ContainerRuntime protocol every lifecycle verb goes through.

Runtimes report facts (what exists, what runs, what failed) and perform actions; they do not decide
policy (who may stop whom, transients, events): that is the coordinator's job.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

import attrs

from hivecore.names import MANAGER_NAME


def container_name(name: str) -> str:
    """``h-<name>`` for sub-agents, the manager unprefixed (reference §1.4)."""
    return name if name == MANAGER_NAME else f"h-{name}"


@attrs.frozen(kw_only=True)
class AgentSpec:
    """What to run for an agent: the command and environment (later evaluated from the meta flake)."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)
    flake_ref: str | None = None
    """``<meta>#<name>``: where the spec was evaluated from (recorded; nothing runs it)."""
    system_path: str | None = None
    """The nixos runtime's container system (a ``/nix/store`` path the daemon built confined:
    :meth:`hivecore.meta.MetaRepo.build_system`); unused by the process runtime."""
    allowed_recipients: tuple[str, ...] | None = None
    """``hyperhive.allowedRecipients`` as the confined evaluation gave it (``None``: no limit);
    recorded for the broker (:mod:`hivecore.topology`), never given to the runtime."""


@attrs.frozen(kw_only=True)
class AgentRuntimeState:
    """One agent as the runtime sees it right now."""

    name: str
    running: bool
    failed: bool = False
    """Exited (or the unit failed) without a stop request."""
    pid: int | None = None
    """Process runtime: the shim's pid, which is also the agent's process-group id (``os.killpg``)."""
    exit_status: int | None = None
    started_at: float | None = None
    orphaned: bool = False
    """Running without its supervisor: the process runtime's shim died (was killed) but processes of its
    group still run. The agent is unsupervised (no log capture, no exit status); a stop ends the group."""


@runtime_checkable
class BlockingList(Protocol):
    """A runtime whose probe may run in any worker thread (the process runtime's file and ``/proc``
    reads): callers fold it into the thread hop they make anyway."""

    def list_nowait(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """What ``list(names)`` answers, probed in the calling thread (blocking)."""
        ...


class ContainerRuntime(Protocol):
    kind: str
    can_wait_exit: bool
    """Whether :meth:`wait_exit` works; where it does not, callers rely on periodic ``list`` rescans."""

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """Every agent container that exists (running or not), by logical name.

        With ``names``, only those are probed (the cost does not grow with the number of other agents);
        the ones that do not exist are simply absent from the result.
        """
        ...

    async def create(self, spec: AgentSpec) -> None:
        """Create the container (not started). Idempotent for an existing container: updates its spec."""
        ...

    async def update(self, spec: AgentSpec) -> None:
        """Apply a new spec (rebuild); a running agent keeps running the old one until restarted."""
        ...

    async def start(self, name: str) -> None: ...

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        """Stop; graceful = SIGTERM then SIGKILL after the stop timeout; not graceful = SIGKILL now."""
        ...

    async def destroy(self, name: str) -> None:
        """Stop and remove the container; the agent's state dirs are not touched."""
        ...

    async def wait_exit(self, name: str) -> None:
        """Return once the agent running now has exited (all of its processes gone); at once if it is
        not running. Event-driven where supported (``can_wait_exit``): a watcher task per running agent
        then notices a crash within about a second, without polling.

        Optional: a runtime that cannot watch exits sets ``can_wait_exit = False`` and raises
        ``NotImplementedError`` here (at once, never blocking).
        """
        ...
