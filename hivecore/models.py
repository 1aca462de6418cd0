"""Domain records shared by the daemon's parts; several of them also travel on the wire."""

from __future__ import annotations

import typing
from typing import Literal

import attrs

TransientKind = Literal["spawning", "starting", "stopping", "restarting", "rebuilding", "destroying"]
TRANSIENT_KINDS: tuple[TransientKind, ...] = (
    "spawning",
    "starting",
    "stopping",
    "restarting",
    "rebuilding",
    "destroying",
)

ApprovalKind = Literal[
    "spawn", "init_config", "apply_commit", "update_meta_inputs", "merge_config_pr", "schedule_prompt"
]
ApprovalStatus = Literal["pending", "approved", "denied", "failed", "cancelled"]


@attrs.frozen
class Transient:
    kind: TransientKind
    since_unix: int


@attrs.frozen(kw_only=True)
class ContainerView:
    """One dashboard row per agent (reference §7.2); built by ``container_view.build_view``."""

    name: str
    container: str
    is_manager: bool = False
    running: bool = False
    failed: bool = False
    pending: TransientKind | None = None
    needs_login: bool = False
    needs_update: bool = False
    deployed_sha: str | None = None
    port: int = 0
    paused: bool = False
    pending_reminders: int = 0
    parent: str | None = None
    active_model: str | None = None
    status_text: str | None = None
    status_set_at: str | None = None
    url: str | None = None
    last_turn_at: int | None = None
    """When its last reported turn ended (Unix seconds); None: it has reported none."""
    turns_today: int = 0
    tokens_today: int = 0
    """Input + output + cache tokens of today's turns (the UTC day)."""
    cost_today_usd: float = 0.0
    stuck: str | None = None
    """Why it looks stuck (a turn past its limit, or mail left unread while it does not poll)."""
    waiting_on_operator_since: int | None = None
    """Waiting on the operator: when its oldest open question to the operator was asked (Unix s)."""


@attrs.frozen(kw_only=True)
class TombstoneView:
    name: str
    state_bytes: int
    age_seconds: int
    claude_creds_kept: bool


@attrs.frozen(kw_only=True)
class ReviewFile:
    """One changed file of an apply_commit review (``git diff --numstat`` against applied main).

    ``added``/``removed`` are line counts (``None`` for a binary file); ``size`` is the proposed
    blob's size in bytes (``None`` when the file is deleted); ``truncated``: its patch in ``diff`` is
    cut (or not shown) by the review caps.
    """

    path: str
    added: int | None = None
    removed: int | None = None
    binary: bool = False
    size: int | None = None
    truncated: bool = False


@attrs.frozen(kw_only=True)
class RuntimeChange:
    """One thing a proposal changes in what the agent runs (its evaluated ``hiveAgents.<n>``), or
    one meta input's rev an ``update_meta_inputs`` moves: ``what`` (``model``, ``env FOO``,
    ``command``, ``setting allowedTools``, ``input hyperhive``), its value now and after (``None``:
    absent). Values are cut at :data:`hivecore.review_eval.VALUE_CAP` characters."""

    what: str
    before: str | None = None
    after: str | None = None


ReviewEvalStatus = Literal["pending", "ok", "failed", "cancelled"]


@attrs.frozen(kw_only=True)
class ReviewEval:
    """The evaluation of an approval's proposal, made in the background when it was requested
    (:mod:`hivecore.review_eval`): ``pending`` until it ran; ``ok`` with ``changes`` (what the
    agent would run differently; for ``update_meta_inputs`` each input's current and proposed
    rev); ``failed`` with nix's ``error`` (the config cannot build); ``cancelled`` when the
    approval was resolved first."""

    status: ReviewEvalStatus = "pending"
    error: str | None = None
    changes: list[RuntimeChange] | None = None
    evaluated_at: str | None = None


@attrs.frozen(kw_only=True)
class Approval:
    """An approval row (reference §2.3); field order is the host.sock wire order."""

    id: int
    agent: str
    kind: ApprovalKind
    commit_ref: str
    fetched_sha: str | None = None
    requested_at: str
    status: ApprovalStatus
    resolved_at: str | None = None
    note: str | None = None
    description: str | None = None
    diff: str | None = None
    """Only in host.sock ``pending`` answers, for a pending apply_commit: ``git diff main..proposal/<id>``,
    each file's patch capped (see ``files``), computed once when the request was made."""
    files: list[ReviewFile] | None = None
    """apply_commit: every changed file (never capped), in ``pending`` answers."""
    commit_message: str | None = None
    """apply_commit: the messages of the commits main..proposal (``commit <sha>`` then the body)."""
    agent_nix: str | None = None
    """spawn: the ``agent.nix`` the spawn will deploy (and the only one it deploys)."""
    requester: str | None = None
    """Who asked: ``manager`` or ``operator`` (the pending quota is per requester)."""
    resolved_by: str | None = None
    """Who approved or denied it, from the audit trail (``operator via host_sock uid 1000 alice``)."""
    evaluation: ReviewEval | None = None
    """apply_commit, spawn, update_meta_inputs: whether the proposal evaluates (nix's error if
    not) and what it changes at runtime, computed in the background after the request."""


JobKind = Literal[
    "spawn",
    "start",
    "stop",
    "restart",
    "kill",
    "destroy",
    "purge",
    "set_paused",
    "rebuild",
    "apply_commit",
    "deny",
    "init_config",
    "meta_update",
    "schedule_prompt",
    "cancel_approval",
]
JOB_KINDS: tuple[JobKind, ...] = typing.get_args(JobKind)
"""Every job kind; what each one is (its service, transient, build class…) is its row in
:data:`hivecore.jobkinds.REGISTRY`."""
JobSource = Literal[
    "host_sock", "dashboard", "manager", "auto_update", "meta_update", "crash_recover", "internal", "swarm"
]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@attrs.frozen(kw_only=True)
class Job:
    """One entry of the job lane (``rebuild_queue``): what ran, for whom, from where, and how it ended."""

    id: int
    kind: JobKind
    agent: str | None = None
    source: JobSource = "internal"
    state: JobState = "queued"
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    parent_id: int | None = None


@attrs.frozen(kw_only=True)
class MetaInputView:
    """One input of the meta flake's lock (the dashboard's M3T4 1NPUTS row)."""

    name: str
    """The slash path of its shallowest occurrence: ``hyperhive``, ``agent-coder``, ``hyperhive/x``."""
    rev: str
    """The first 12 characters of the locked rev."""
    last_modified: int | None = None
    url: str | None = None
    """``original.url`` (or the original's type and path when it has no url)."""


@attrs.frozen(kw_only=True)
class Question:
    """A question (reference §10.1 ``operator_questions``): to the operator (``target`` None) or to a
    peer agent (``target``: its name; ``hm1nd`` is the manager). Times are Unix seconds; an open
    question has no ``answered_at``. A TTL expiry answers ``[expired]``, a cancel ``[cancelled]``
    (with ``cancelled`` set); ``answerer`` is ``operator``, the asked agent, or None (expiry, cancel)."""

    id: int
    asker: str
    question: str
    options: list[str] = attrs.field(factory=list)
    multi: bool = False
    asked_at: int
    deadline_at: int | None = None
    target: str | None = None
    answered_at: int | None = None
    answer: str | None = None
    cancelled: bool = False
    answerer: str | None = None
