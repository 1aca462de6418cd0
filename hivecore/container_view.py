"""Dashboard rows: read an agent's facts (I/O: :func:`read_facts`), then build its ContainerView
with the pure :func:`build_view` (the views actor does both, and compares rows to find changes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
from typing import Any

import attrs

from hivecore import agentfs, credentials, usage
from hivecore.config import StatePaths
from hivecore.errors import Refused
from hivecore.meta import MetaFacts, is_stale, read_meta_facts
from hivecore.models import ContainerView, Transient
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.runtime.base import AgentRuntimeState, container_name

PAUSE_MARKER = "hyperhive-paused"
BUILDING = frozenset({"spawning", "rebuilding"})
"""Transients under which a row is never ``needs_update`` (the build is what brings it up to date)."""
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


@attrs.frozen
class StuckLimits:
    turn_limit: float = 1800.0
    stuck_after: float = 600.0


DEFAULT_LIMITS = StuckLimits()


def build_view(
    state: AgentRuntimeState,
    facts: AgentFacts,
    transient: Transient | None,
    domain: str | None,
    activity: usage.Activity | None = None,
    limits: StuckLimits = DEFAULT_LIMITS,
    waiting_since: int | None = None,
) -> ContainerView:
    running = state.running
    summary = activity.summary if activity is not None else usage.Summary()
    stuck = None
    if activity is not None:
        stuck = usage.stuck_reason(
            activity.live,
            running=running,
            paused=facts.paused,
            needs_login=not facts.logged_in,
            turn_limit=limits.turn_limit,
            stuck_after=limits.stuck_after,
        )
    return ContainerView(
        name=state.name,
        container=container_name(state.name),
        is_manager=state.name == MANAGER_NAME,
        running=running,
        failed=state.failed,
        pending=transient.kind if transient else None,
        needs_login=not facts.logged_in,
        # a build in progress is not staleness: its applied main moved first, what runs follows
        needs_update=facts.stale and not (transient is not None and transient.kind in BUILDING),
        deployed_sha=facts.deployed_sha[:12] if facts.deployed_sha else None,
        port=0,  # no agent serves a web UI yet: show no port until one does (issue 16)
        paused=facts.paused,
        status_text=facts.status_text if running else None,
        status_set_at=facts.status_set_at if running else None,
        url=f"https://{domain}/agent/{state.name}/" if domain else None,
        last_turn_at=summary.last_turn_at,
        turns_today=summary.turns_today,
        tokens_today=summary.tokens_today,
        cost_today_usd=round(summary.cost_today_usd, 6),
        stuck=stuck,
        waiting_on_operator_since=waiting_since,
        pending_reminders=activity.pending_reminders if activity is not None else 0,
        parent=activity.parent if activity is not None else None,
    )


# --- I/O: collecting facts ------------------------------------------------------------------------


STATUS_MAX_BYTES = 4096
"""The status line an agent writes is shown in one dashboard cell: the rest of a bigger file is unread."""


def has_credential_file(paths: StatePaths, name: str) -> bool:
    """``agents/<n>/claude/`` holds a credentials file (:mod:`hivecore.credentials`; links not followed)."""
    try:
        with agentfs.opened_dir(paths.agents, validate_name(name), "claude") as claude:
            return credentials.has_credential_file(claude)
    except OSError:
        return False


_UNSET: Any = object()


def read_facts(
    paths: StatePaths, name: str, meta: MetaFacts | None = _UNSET, *, env_login: bool = False
) -> AgentFacts:
    """What the agent's state dir says; nothing in it is followed, blocked on or read past a cap.

    A symlinked ``state/`` or status file, a FIFO, or a status that is not a regular file reads as
    "no status"; the pause marker counts only as a regular file (``lstat``). ``meta`` (read once per
    scan by the caller; read here when omitted) decides ``stale``: the applied main or the base rev
    is not what the agent was deployed with. ``env_login``: the operator's environment gives the
    agent credentials (:mod:`hivecore.agent_env`); else it is logged in only by a credentials file.
    """
    if meta is _UNSET:
        meta = read_meta_facts(paths)
    stale, deployed = is_stale(paths, name, meta)
    status_text = status_set_at = None
    paused = False
    try:
        with agentfs.opened_dir(paths.agents, validate_name(name), "state") as state:
            paused = agentfs.regular_file_exists(state, PAUSE_MARKER)
            try:
                status = agentfs.read_capped(state, STATUS_FILE, STATUS_MAX_BYTES)
            except OSError:
                pass
            else:
                status_text = status.data.decode(errors="replace").strip() or None
                status_set_at = dt.datetime.fromtimestamp(int(status.mtime), dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
    except OSError:
        pass
    return AgentFacts(
        logged_in=env_login or has_credential_file(paths, name),
        paused=paused,
        status_text=status_text,
        status_set_at=status_set_at if status_text else None,
        deployed_sha=deployed,
        stale=stale,
    )


def set_pause_marker(paths: StatePaths, name: str, paused: bool) -> None:
    """Create (``paused``) or remove the agent's pause marker without following any symlink.

    ``agents/<n>/state/`` is created if missing. A symlink, FIFO or other non-regular entry at the
    marker's name is removed (the link itself, never its target) and replaced by a regular file;
    a symlink at ``agents/<n>`` or ``state/`` is refused. Idempotent. Raises :class:`Refused` when
    the marker cannot be set safely, :class:`InvalidName` for a bad name.
    """
    valid = validate_name(name)
    try:
        with agentfs.opened_dir(paths.agents, valid) as agent:
            with contextlib.suppress(FileExistsError):
                os.mkdir("state", 0o755, dir_fd=agent)  # mkdir never follows a link at its name
            with agentfs.opened_subdir(agent, "state") as state:
                if paused:
                    agentfs.ensure_regular_file(state, PAUSE_MARKER)
                else:
                    agentfs.remove_entry(state, PAUSE_MARKER)
    except IsADirectoryError:
        if paused:
            raise Refused(
                f"cannot pause {valid}: its state dir holds a directory named {PAUSE_MARKER}"
            ) from None
        # not a marker (read_facts counts regular files only): nothing to remove
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:
            why = f"{paths.agents / valid} does not exist"
        elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
            why = "its agent or state directory is a symlink or not a directory; not following it"
        raise Refused(f"cannot {'pause' if paused else 'resume'} {valid}: {why}") from None
