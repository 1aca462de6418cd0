"""The ContainerRuntime protocol every lifecycle verb goes through.

Runtimes report facts (what exists, what runs, what failed) and perform actions; they do not decide
policy (who may stop whom, transients, events): that is the coordinator's job.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

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
    """``<meta>#<name>`` for the nixos runtime; unused by the process runtime."""


@attrs.frozen(kw_only=True)
class AgentRuntimeState:
    """One agent as the runtime sees it right now."""

    name: str
    running: bool
    failed: bool = False
    """Exited (or the unit failed) without a stop request."""
    pid: int | None = None
    exit_status: int | None = None
    started_at: float | None = None


class ContainerRuntime(Protocol):
    kind: str

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """Every agent container that exists (running or not), by logical name; with ``names``, only
        those (probing just them); a name that does not exist is absent from the result."""
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
