"""The swarm view's pure half (docs/swarm.md "Events"): what goes out on ``HIVE_EVENTS``, how a
message from another hive is read, and which dashboard events a change of the picture makes.
No I/O, no NATS import (:mod:`actors.swarm_feed` and :mod:`actors.swarm_link` do the I/O).

The stream ``HIVE_EVENTS`` (subjects ``hive.*.events.>``) carries each hive's agent-row changes:

=======================================  ============================================================
subject                                  body
=======================================  ============================================================
``hive.<hive>.events.agent``             :class:`AgentEvent`: the row, with its ``hive_agents`` revision
``hive.<hive>.events.agent_removed``     :class:`AgentRemovedEvent`: the agent's name
``hive.<hive>.events.approvals``         :class:`ApprovalsEvent`: how many approvals wait there
=======================================  ============================================================

The rows are the shared subset (:class:`hivecore.swarm.SwarmAgent`: no message bodies, no questions,
no config, no usage). The publishing hive is the subject's second token, never the body's.
"""

from __future__ import annotations

from typing import Any

import attrs

from hivecore import swarm as sw
from hivecore.errors import InvalidName
from hivecore.wire.converter import converter
from hivecore.wire.events import (
    Event,
    SwarmAgentChanged,
    SwarmAgentRemoved,
    SwarmHiveChanged,
    SwarmLinkChanged,
    SwarmStateEvent,
)

STREAM = "HIVE_EVENTS"
SUBJECTS = "hive.*.events.>"
MAX_AGE = 3600.0
"""Seconds an event stays in the stream (it is a live feed; the key-value buckets are the state)."""
MAX_BYTES = 64 * 1024 * 1024
"""The stream's size cap; the oldest events go first (discard old)."""
MAX_MSGS_PER_SUBJECT = 100_000
"""Per hive and kind; with :data:`MAX_BYTES` it keeps one hive from pushing out the others."""
MAX_EVENT_BYTES = 4096
"""The largest event body published or read (the server refuses a larger one: ``max_msg_size``)."""


def stream_config(replicas: int = 1) -> Any:
    """The ``nats.js.api.StreamConfig`` of :data:`STREAM` (memory, discard old, the limits above;
    ``replicas`` > 1 on a NATS cluster, created before the hives join: docs/swarm.md "Limits")."""
    from nats.js import api

    return api.StreamConfig(
        name=STREAM,
        subjects=[SUBJECTS],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.MEMORY,
        discard=api.DiscardPolicy.OLD,
        max_age=MAX_AGE,
        max_bytes=MAX_BYTES,
        max_msgs_per_subject=MAX_MSGS_PER_SUBJECT,
        max_msg_size=MAX_EVENT_BYTES,
        num_replicas=replicas,
    )


MAX_HIVES = 64
"""Hives kept in the picture; more (a hostile writer inventing names) are ignored."""
MAX_AGENTS_PER_HIVE = 1000
"""Agent rows kept per other hive; a hive that writes more has the rest ignored."""
MAX_DELTAS = 100
"""A change of the picture bigger than this goes to the dashboards as one ``swarm_state`` (well
under a dashboard stream's buffer of 256 events, which local events share)."""
MAX_SHOWN_TEXT = 512
"""A status or stuck text from another hive is cut to this many characters for the dashboard."""
MAX_SHOWN_WORD = 32
"""Another hive's pending transient (``starting``, ``rebuilding``, …) is cut to this many."""


@attrs.frozen(kw_only=True)
class AgentEvent:
    rev: int
    """The row's ``hive_agents`` revision (the key-value stream's sequence): a reader applies a row
    only if it is newer than the one it has, whichever way (watch or events) it came first."""
    agent: sw.SwarmAgent


@attrs.frozen(kw_only=True)
class AgentRemovedEvent:
    name: str


@attrs.frozen(kw_only=True)
class ApprovalsEvent:
    pending: int
    """Approvals pending on the hive (a count only: no agent, kind or description)."""


KINDS: dict[str, type[Any]] = {
    "agent": AgentEvent,
    "agent_removed": AgentRemovedEvent,
    "approvals": ApprovalsEvent,
}

Record = AgentEvent | AgentRemovedEvent | ApprovalsEvent


def subject(hive: str, kind: str) -> str:
    return f"hive.{hive}.events.{kind}"


def encode(record: object) -> bytes:
    return sw.encode(record)


def parse(subject_: str, data: bytes) -> tuple[str, Record] | None:
    """``(hive, event)`` of a message from ``HIVE_EVENTS``, or None for anything malformed: a subject
    not ``hive.<valid name>.events.<known kind>``, a body over :data:`MAX_EVENT_BYTES`, one the
    converter does not take, an agent name that is not a valid name, a negative revision."""
    parts = subject_.split(".")
    if len(parts) != 4 or parts[0] != "hive" or parts[2] != "events" or parts[3] not in KINDS:
        return None
    if len(data) > MAX_EVENT_BYTES:
        return None
    try:
        hive = sw.validate_hive_name(parts[1])
        record = converter.structure(sw.loads(data), KINDS[parts[3]])
        if isinstance(record, ApprovalsEvent):
            if not sw.approvals_ok(record.pending):
                return None
        else:
            name = record.agent.name if isinstance(record, AgentEvent) else record.name
            sw.validate_hive_name(name)  # agent names follow the same rules
    except (InvalidName, ValueError, TypeError, KeyError, AttributeError, RecursionError, Exception):
        return None
    if isinstance(record, AgentEvent) and not 0 <= record.rev < 2**63:
        return None
    return hive, record


# --- the dashboard's deltas ------------------------------------------------------------------------


def shown(status: sw.SwarmStatus) -> sw.SwarmStatus:
    """``status`` as the dashboard gets it: this hive's own agent rows left out (the page has them
    whole, as ``containers``), other hives' status texts cut to :data:`MAX_SHOWN_TEXT`."""
    return attrs.evolve(
        status,
        hives=[attrs.evolve(h, agents=[] if h.local else [_cut(a) for a in h.agents]) for h in status.hives],
    )


def _cut(row: sw.SwarmAgent) -> sw.SwarmAgent:
    """Another hive's free texts cut for the page: the status and stuck texts to
    :data:`MAX_SHOWN_TEXT`, the pending transient (a word here) to :data:`MAX_SHOWN_WORD`."""
    status, stuck, pending = (
        _short(row.status_text, MAX_SHOWN_TEXT),
        _short(row.stuck, MAX_SHOWN_TEXT),
        _short(row.pending, MAX_SHOWN_WORD),
    )
    if (status, stuck, pending) == (row.status_text, row.stuck, row.pending):
        return row
    return attrs.evolve(row, status_text=status, stuck=stuck, pending=pending)


def _short(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def changes(before: sw.SwarmStatus | None, after: sw.SwarmStatus) -> list[Event]:
    """The dashboard events that take a page from ``before`` to ``after`` (both as :func:`shown`
    makes them): per hive and per agent row, or one ``swarm_state`` when there is no ``before``,
    the hive or server changed, a hive went away, or more than :data:`MAX_DELTAS` rows changed."""
    whole: list[Event] = [SwarmStateEvent(swarm=after)]
    if before is None or (before.hive, before.server) != (after.hive, after.server):
        return whole
    out: list[Event] = []
    link = (after.state, after.error, after.outbox, after.heartbeat_ttl)
    if (before.state, before.error, before.outbox, before.heartbeat_ttl) != link:
        out.append(
            SwarmLinkChanged(
                state=after.state, error=after.error, outbox=after.outbox, heartbeat_ttl=after.heartbeat_ttl
            )
        )
    old_hives = {h.name: h for h in before.hives}
    if set(old_hives) - {h.name for h in after.hives}:
        return whole
    for hive in after.hives:
        old = old_hives.get(hive.name)
        if old is None or (old.reachable, old.last_seen, old.local, old.approvals) != (
            hive.reachable,
            hive.last_seen,
            hive.local,
            hive.approvals,
        ):
            out.append(
                SwarmHiveChanged(
                    name=hive.name,
                    reachable=hive.reachable,
                    last_seen=hive.last_seen,
                    local=hive.local,
                    approvals=hive.approvals,
                )
            )
        old_rows = {a.name: a for a in old.agents} if old is not None else {}
        new_rows = {a.name: a for a in hive.agents}
        out.extend(
            SwarmAgentChanged(hive=hive.name, agent=row)
            for name, row in new_rows.items()
            if old_rows.get(name) != row
        )
        out.extend(
            SwarmAgentRemoved(hive=hive.name, name=name) for name in sorted(old_rows.keys() - new_rows.keys())
        )
        if len(out) > MAX_DELTAS:
            return whole
    return out
