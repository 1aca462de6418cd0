"""Helper events: JSON bodies of broker messages from ``system`` to the manager (reference §6).

Tagged by ``event`` in snake_case; optional fields default, so old and new readers tolerate each
other.
"""

from __future__ import annotations

import json
from typing import ClassVar

import attrs

from hivecore.wire.converter import configure_tagged, converter, dumps


@attrs.frozen(kw_only=True)
class HelperEvent:
    EVENT: ClassVar[str] = ""


@attrs.frozen(kw_only=True)
class ApprovalResolvedHelper(HelperEvent):
    EVENT = "approval_resolved"
    id: int
    agent: str
    commit_ref: str = ""
    status: str
    note: str | None = None
    sha: str | None = None
    tag: str | None = None
    description: str | None = None


@attrs.frozen(kw_only=True)
class _Outcome(HelperEvent):
    agent: str
    ok: bool
    note: str | None = None
    sha: str | None = None
    tag: str | None = None


@attrs.frozen(kw_only=True)
class Spawned(_Outcome):
    EVENT = "spawned"


@attrs.frozen(kw_only=True)
class Rebuilt(_Outcome):
    EVENT = "rebuilt"


@attrs.frozen(kw_only=True)
class _AgentOnly(HelperEvent):
    agent: str


@attrs.frozen(kw_only=True)
class Killed(_AgentOnly):
    EVENT = "killed"


@attrs.frozen(kw_only=True)
class Destroyed(_AgentOnly):
    EVENT = "destroyed"


@attrs.frozen(kw_only=True)
class ContainerCrash(_AgentOnly):
    EVENT = "container_crash"
    note: str | None = None


@attrs.frozen(kw_only=True)
class NeedsLogin(_AgentOnly):
    EVENT = "needs_login"


@attrs.frozen(kw_only=True)
class LoggedIn(_AgentOnly):
    EVENT = "logged_in"


@attrs.frozen(kw_only=True)
class NeedsUpdate(_AgentOnly):
    EVENT = "needs_update"


@attrs.frozen(kw_only=True)
class ConfigReady(_AgentOnly):
    EVENT = "config_ready"


@attrs.frozen(kw_only=True)
class MessagesUndelivered(HelperEvent):
    """Messages you sent to ``agent`` that it will never read: its incarnation ended (a purge) before
    it acked them. ``ids`` are the ``send`` answer's ids; ``delivered`` those it had been handed but
    not acked (it may have read them)."""

    EVENT = "messages_undelivered"
    agent: str
    ids: list[int]
    delivered: list[int] = attrs.field(factory=list)
    note: str


# --- questions (hivecore/services/questions.py) ---


@attrs.frozen(kw_only=True)
class OperatorAnswered(HelperEvent):
    """The operator answered your question ``id`` (``[expired]``: its TTL ran out; ``[cancelled]``:
    the operator cancelled it). A multi-choice answer is the chosen options, comma-joined."""

    EVENT = "operator_answered"
    id: int
    question: str
    answer: str


@attrs.frozen(kw_only=True)
class QuestionAsked(HelperEvent):
    """``asker`` asks you question ``id``: answer it with ``answer {id, answer}`` (free text is always
    allowed; ``options`` are suggestions; ``multi``: several may be picked, comma-joined) before
    ``deadline_at`` (Unix seconds), if it has one."""

    EVENT = "question_asked"
    id: int
    asker: str
    question: str
    options: list[str] = attrs.field(factory=list)
    multi: bool = False
    deadline_at: int | None = None


@attrs.frozen(kw_only=True)
class Answered(HelperEvent):
    """Your question ``id`` to ``target`` was answered (``answerer``: the target, or the operator
    overriding it); ``[expired]`` / ``[cancelled]`` as for :class:`OperatorAnswered`."""

    EVENT = "answered"
    id: int
    question: str
    answer: str
    target: str
    answerer: str | None = None


AnyHelperEvent = (
    ApprovalResolvedHelper
    | OperatorAnswered
    | QuestionAsked
    | Answered
    | MessagesUndelivered
    | Spawned
    | Rebuilt
    | Killed
    | Destroyed
    | ContainerCrash
    | NeedsLogin
    | LoggedIn
    | NeedsUpdate
    | ConfigReady
)


configure_tagged(AnyHelperEvent, tag_attr="EVENT", tag_name="event")


def helper_to_body(event: HelperEvent) -> str:
    """The broker message body for a helper event."""
    return dumps(event, unstructure_as=AnyHelperEvent)


def helper_from_body(body: str) -> HelperEvent:
    event: HelperEvent = converter.structure(json.loads(body), AnyHelperEvent)  # type: ignore[arg-type]
    return event
