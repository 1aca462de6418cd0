"""Dashboard rows: collect facts (I/O) once, then build every ContainerView with a pure function.

``collect_inputs`` reads the runtime and the agents' state dirs; ``build_all`` and ``diff_views``
are pure and cheap, so the 10 s crash_watch tick and every lifecycle verb can afford them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from hivecore.config import StatePaths
from hivecore.meta import MetaFacts, is_stale, read_meta_facts
from hivecore.models import ContainerView, Transient
from hivecore.names import MANAGER_NAME
from hivecore.ports import agent_port
from hivecore.runtime.base import AgentRuntimeState, ContainerRuntime, container_name

PAUSE_MARKER = "hyperhive-paused"
STATUS_FILE = "hyperhive-status"


@attrs.frozen(kw_only=True)
class AgentFacts:
    """What the filesystem says about one agent, beside the runtime's view."""

    logged_in: bool = False
    paused: bool = False
    status_text: str | None = None
    status_set_at: str | None = None
    deployed_sha: str | None = None
    stale: bool = False


@attrs.frozen(kw_only=True)
class ViewInputs:
    runtime: Mapping[str, AgentRuntimeState]
    facts: Mapping[str, AgentFacts]
    transients: Mapping[str, Transient]
    domain: str | None = None


def build_view(
    state: AgentRuntimeState, facts: AgentFacts, transient: Transient | None, domain: str | None
) -> ContainerView:
    running = state.running
    return ContainerView(
        name=state.name,
        container=container_name(state.name),
        is_manager=state.name == MANAGER_NAME,
        running=running,
        failed=state.failed,
        pending=transient.kind if transient else None,
        needs_login=not facts.logged_in,
        needs_update=facts.stale,
        deployed_sha=facts.deployed_sha[:12] if facts.deployed_sha else None,
        port=agent_port(state.name),
        paused=facts.paused,
        status_text=facts.status_text if running else None,
        status_set_at=facts.status_set_at if running else None,
        url=f"https://{domain}/agent/{state.name}/" if domain else None,
    )


def build_all(inputs: ViewInputs) -> dict[str, ContainerView]:
    """One row per agent the runtime knows, sorted by name (manager first)."""
    names = sorted(inputs.runtime, key=lambda n: (n != MANAGER_NAME, n))
    return {
        n: build_view(
            inputs.runtime[n], inputs.facts.get(n, AgentFacts()), inputs.transients.get(n), inputs.domain
        )
        for n in names
    }


@attrs.frozen
class ViewDiff:
    changed: list[ContainerView]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


def diff_views(old: Mapping[str, ContainerView], new: Mapping[str, ContainerView]) -> ViewDiff:
    """Rows added or changed (in ``new``'s order) and names that vanished; unchanged rows: nothing."""
    changed = [v for n, v in new.items() if old.get(n) != v]
    removed = [n for n in old if n not in new]
    return ViewDiff(changed, removed)


# --- I/O: collecting facts ------------------------------------------------------------------------


def _has_regular_file(path: StatePaths, name: str) -> bool:
    claude = path.agent_claude(name)
    try:
        return any(p.is_file() and not p.is_symlink() for p in claude.rglob("*"))
    except OSError:
        return False


_UNSET: Any = object()


def read_facts(paths: StatePaths, name: str, meta: MetaFacts | None = _UNSET) -> AgentFacts:
    """The agent's facts; ``meta`` (read once per scan by the caller; read here when omitted)
    decides ``stale``: the applied main or the base rev is not what the agent was deployed with."""
    if meta is _UNSET:
        meta = read_meta_facts(paths)
    stale, deployed = is_stale(paths, name, meta)
    state = paths.agent_state(name)
    status_text = status_set_at = None
    status = state / STATUS_FILE
    try:
        status_text = status.read_text(errors="replace").strip() or None
        mtime = status.stat().st_mtime
        status_set_at = dt.datetime.fromtimestamp(int(mtime), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OSError:
        pass
    return AgentFacts(
        logged_in=_has_regular_file(paths, name),
        paused=(state / PAUSE_MARKER).exists(),
        status_text=status_text,
        status_set_at=status_set_at if status_text else None,
        deployed_sha=deployed,
        stale=stale,
    )


async def collect_inputs(
    paths: StatePaths,
    runtime: ContainerRuntime,
    transients: Mapping[str, Transient],
    domain: str | None = None,
) -> ViewInputs:
    states = await runtime.list()
    meta = read_meta_facts(paths)
    facts = {n: read_facts(paths, n, meta) for n in states}
    return ViewInputs(runtime=states, facts=facts, transients=dict(transients), domain=domain)
