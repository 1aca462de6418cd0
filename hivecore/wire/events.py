"""Dashboard events: every frame on the SSE stream and every bus message (reference §7.2).

Each record carries ``seq`` (stamped by the event bus; 0 until published) and is tagged on the wire
by ``kind``. Add a kind by defining a record with a ``KIND`` and listing it in ``DashboardEvent``.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar

import attrs

from hivecore.models import (
    ContainerView,
    Job,
    MetaInputView,
    ReviewEval,
    ReviewFile,
    TombstoneView,
    TransientKind,
)
from hivecore.reminders import Reminder
from hivecore.schedules import Schedule
from hivecore.swarm import LinkState, SwarmAgent, SwarmStatus
from hivecore.wire.converter import configure_renamed, configure_tagged, converter


@attrs.frozen(kw_only=True)
class Event:
    KIND: ClassVar[str] = ""
    seq: int = 0


@attrs.frozen(kw_only=True)
class ApprovalAdded(Event):
    KIND = "approval_added"
    id: int
    agent: str
    approval_kind: str
    commit_ref: str = ""
    fetched_sha: str | None = None
    diff: str | None = None
    description: str | None = None
    files: list[ReviewFile] | None = None
    commit_message: str | None = None
    agent_nix: str | None = None
    requester: str | None = None
    evaluation: ReviewEval | None = None


@attrs.frozen(kw_only=True)
class ApprovalResolved(Event):
    KIND = "approval_resolved"
    id: int
    agent: str
    status: str
    approval_kind: str | None = None
    note: str | None = None
    description: str | None = None
    sha: str | None = None
    tag: str | None = None


@attrs.frozen(kw_only=True)
class ApprovalReviewed(Event):
    """A pending approval's background evaluation finished (:mod:`actors.review_evals`)."""

    KIND = "approval_reviewed"
    id: int
    agent: str
    evaluation: ReviewEval


@attrs.frozen(kw_only=True)
class ApprovalAttributed(Event):
    """Who approved or denied approval ``id`` (:func:`hivecore.audit.resolved_by`), once that
    verb's audit row is written: after ``approval_resolved``, which the job publishes."""

    KIND = "approval_attributed"
    id: int
    resolved_by: str


@attrs.frozen(kw_only=True)
class TransientSet(Event):
    KIND = "transient_set"
    name: str
    transient_kind: TransientKind
    since_unix: int


@attrs.frozen(kw_only=True)
class TransientCleared(Event):
    KIND = "transient_cleared"
    name: str


@attrs.frozen(kw_only=True)
class ContainerStateChanged(Event):
    KIND = "container_state_changed"
    container: ContainerView


@attrs.frozen(kw_only=True)
class ContainerRemoved(Event):
    KIND = "container_removed"
    name: str


@attrs.frozen(kw_only=True)
class TombstonesChanged(Event):
    KIND = "tombstones_changed"
    tombstones: list[TombstoneView] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class MetaUpdateRunning(Event):
    KIND = "meta_update_running"
    running: bool


@attrs.frozen(kw_only=True)
class MetaInputsChanged(Event):
    """The meta flake's lock changed: the full list of its inputs (``read_meta_inputs``)."""

    KIND = "meta_inputs_changed"
    inputs: list[MetaInputView] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ActorCrashed(Event):
    """A supervised actor raised; it is being restarted (or, with ``gave_up``, escalated)."""

    KIND = "actor_crashed"
    actor: str
    error: str
    restarts: int = 0
    gave_up: bool = False


@attrs.frozen(kw_only=True)
class AgentNotice(Event):
    """A helper event for the manager, mirrored on the bus (crash, login and update axes)."""

    KIND = "agent_notice"
    event: str
    agent: str
    note: str | None = None


@attrs.frozen(kw_only=True)
class RebuildQueueChanged(Event):
    """The job lane's full snapshot: queued and running jobs, then the last finished ones."""

    KIND = "rebuild_queue_changed"
    jobs: list[Job] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class MessageSent(Event):
    """A broker message was queued (reference §7.2 ``sent``: ``from``, ``to``, ``body``, ``at``)."""

    KIND = "sent"
    id: int
    from_: str
    to: str
    body: str
    at: int
    in_reply_to: int | None = None


@attrs.frozen(kw_only=True)
class MessageDelivered(Event):
    """A broker message was handed to its recipient's ``recv`` (``redelivered``: not the first time)."""

    KIND = "delivered"
    id: int
    from_: str
    to: str
    body: str
    at: int
    redelivered: bool = False


@attrs.frozen(kw_only=True)
class QuestionAdded(Event):
    """A question was asked (reference §7.2): of the operator (``target`` None) or of a peer."""

    KIND = "question_added"
    id: int
    asker: str
    question: str
    options: list[str] = attrs.field(factory=list)
    multi: bool = False
    asked_at: int
    deadline_at: int | None = None
    target: str | None = None


@attrs.frozen(kw_only=True)
class QuestionResolved(Event):
    """A question was answered, expired (``[expired]``) or cancelled (``cancelled``, ``[cancelled]``)."""

    KIND = "question_resolved"
    id: int
    answer: str
    answered_at: int
    cancelled: bool = False
    target: str | None = None
    answerer: str | None = None


# --- alarms (actors/alarms.py) ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AlarmRaised(Event):
    """An alarm was raised (or its level changed): ``key`` is stable while its condition holds."""

    KIND = "alarm_raised"
    key: str
    alarm_kind: str
    level: str
    message: str
    agent: str | None = None
    since: float = 0.0


@attrs.frozen(kw_only=True)
class AlarmCleared(Event):
    """The alarm ``key`` no longer holds."""

    KIND = "alarm_cleared"
    key: str
    alarm_kind: str
    agent: str | None = None


# --- reminders (actors/reminder_scheduler.py) -----------------------------------------------------


@attrs.frozen(kw_only=True)
class ReminderAdded(Event):
    """A caller asked for a reminder (the row, its message cut for listing)."""

    KIND = "reminder_added"
    reminder: Reminder


@attrs.frozen(kw_only=True)
class ReminderSent(Event):
    """A reminder was delivered to its caller's inbox (message ``message_id``)."""

    KIND = "reminder_sent"
    id: int
    agent: str
    message_id: int
    at: float


@attrs.frozen(kw_only=True)
class ReminderFailed(Event):
    """A delivery failed: the row with ``attempt_count``, ``last_error`` and the next try's time
    (``status`` ``failed``: given up)."""

    KIND = "reminder_failed"
    reminder: Reminder


@attrs.frozen(kw_only=True)
class ReminderRemoved(Event):
    """A pending reminder is gone without being delivered: ``cancelled`` by the operator, or
    ``dropped`` (its caller was purged)."""

    KIND = "reminder_removed"
    id: int
    agent: str
    reason: str


# --- scheduled prompts (actors/prompt_scheduler.py) ----------------------------------------------


@attrs.frozen(kw_only=True)
class ScheduleAdded(Event):
    """A schedule was created (``state`` ``requested``: waiting for an approval) or approved."""

    KIND = "schedule_added"
    schedule: Schedule


@attrs.frozen(kw_only=True)
class ScheduleFired(Event):
    """A schedule fired: the row with every target's ``last_result`` (``state`` ``done`` after a
    one-shot)."""

    KIND = "schedule_fired"
    schedule: Schedule


@attrs.frozen(kw_only=True)
class ScheduleCancelled(Event):
    """A schedule (``target`` None) or one target of it was cancelled: the row after it."""

    KIND = "schedule_cancelled"
    schedule: Schedule
    target: str | None = None


# --- the swarm view (actors/swarm_feed.py, docs/swarm.md "Events") -----------------------------------
# Not on the bus's ring and never seq-stamped: :meth:`actors.event_bus.EventBus.broadcast` offers them
# to the streams that asked for them by kind, and each stream starts with a ``swarm_state`` (a
# browser that reconnects resyncs the swarm from it; Last-Event-ID replays only local events).


@attrs.frozen(kw_only=True)
class SwarmStateEvent(Event):
    """The whole swarm picture (this hive's own agent rows left out: they are ``containers``)."""

    KIND = "swarm_state"
    swarm: SwarmStatus


@attrs.frozen(kw_only=True)
class SwarmLinkChanged(Event):
    """This hive's link changed state (or its outbox depth)."""

    KIND = "swarm_link"
    state: LinkState
    error: str | None = None
    outbox: int = 0
    heartbeat_ttl: float | None = None


@attrs.frozen(kw_only=True)
class SwarmHiveChanged(Event):
    """A hive appeared, turned reachable or unreachable, or heartbeated (``last_seen``: its clock)."""

    KIND = "swarm_hive"
    name: str
    reachable: bool
    last_seen: float | None = None
    local: bool = False
    approvals: int | None = None
    """Approvals pending on that hive (approved there; None: not known)."""


@attrs.frozen(kw_only=True)
class SwarmAgentChanged(Event):
    """Another hive's agent row, new or changed."""

    KIND = "swarm_agent"
    hive: str
    agent: SwarmAgent


@attrs.frozen(kw_only=True)
class SwarmAgentRemoved(Event):
    KIND = "swarm_agent_removed"
    hive: str
    name: str


configure_renamed(MessageSent, from_="from")
configure_renamed(MessageDelivered, from_="from")


DashboardEvent = (
    ApprovalAdded
    | ApprovalResolved
    | ApprovalReviewed
    | ApprovalAttributed
    | TransientSet
    | TransientCleared
    | ContainerStateChanged
    | ContainerRemoved
    | TombstonesChanged
    | MetaUpdateRunning
    | MetaInputsChanged
    | ActorCrashed
    | AgentNotice
    | RebuildQueueChanged
    | MessageSent
    | MessageDelivered
    | QuestionAdded
    | QuestionResolved
    | AlarmRaised
    | AlarmCleared
    | ReminderAdded
    | ReminderSent
    | ReminderFailed
    | ReminderRemoved
    | ScheduleAdded
    | ScheduleFired
    | ScheduleCancelled
    | SwarmStateEvent
    | SwarmLinkChanged
    | SwarmHiveChanged
    | SwarmAgentChanged
    | SwarmAgentRemoved
)


configure_tagged(DashboardEvent, tag_attr="KIND", tag_name="kind")

EVENT_KINDS: frozenset[str] = frozenset(cl.KIND for cl in typing.get_args(DashboardEvent))
SWARM_VIEW_KINDS: frozenset[str] = frozenset(
    cl.KIND
    for cl in (SwarmStateEvent, SwarmLinkChanged, SwarmHiveChanged, SwarmAgentChanged, SwarmAgentRemoved)
)
"""The unsequenced kinds (:meth:`actors.event_bus.EventBus.broadcast`)."""


def event_to_dict(event: Event) -> dict[str, Any]:
    """The wire form of an event, ``kind`` included."""
    out: dict[str, Any] = converter.unstructure(event, unstructure_as=DashboardEvent)
    return out


def event_from_dict(data: Any) -> Event:
    """Decode a wire event; unknown keys are ignored and missing optional fields default."""
    event: Event = converter.structure(data, DashboardEvent)  # type: ignore[arg-type]  # union form
    return event
