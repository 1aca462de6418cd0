"""host.sock wire records (reference §8): requests, the ``HostResponse`` envelope, status rows, urls.

Everything here is sans-IO: :func:`parse_request` turns one request line (bytes) into a request
record or a :class:`RequestError` whose ``message`` is the ``error`` text the client sees;
:func:`encode_response` / :func:`encode_request` produce the exact bytes of one line. The shapes are a
promise to the original's clients (hivectl, desktop sidebars):

* requests are tagged by ``cmd`` (snake_case); unknown keys are ignored, optional fields default;
* every answer carries ``version`` and ``ok``; ``error`` only when ``ok`` is false; the result
  fields (``agents``, ``approvals``, ``agent_statuses``, ``urls``) only when they apply.
"""

from __future__ import annotations

import json

import attrs

from hivecore import reminders, swarm_ops
from hivecore import schedules as sched
from hivecore.audit import MAX_READ as MAX_AUDIT_ROWS
from hivecore.audit import AuditRow
from hivecore.errors import BadInput
from hivecore.models import Approval, ContainerView, Question
from hivecore.reminders import Reminder
from hivecore.schedules import Schedule
from hivecore.sockets.framing import MAX_LINE as MAX_LINE
from hivecore.swarm import SwarmStatus
from hivecore.verbs import checks, spec
from hivecore.verbs.checks import check
from hivecore.wire.converter import converter
from hivecore.wire.lines import HOST_SOCK_VERSION as HOST_SOCK_VERSION
from hivecore.wire.lines import json_line, request_line
from hivecore.wire.request import Request, parse_line
from hivecore.wire.request import RequestError as RequestError

DEFAULT_LOG_LINES = 50
MAX_LOG_LINES = 500

# --- requests --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LifecycleScope:
    """What a ``start``/``stop`` applies to. Unlike the original, an empty scope selects nothing."""

    agent_names: list[str] = attrs.field(factory=list)
    agents: bool = False
    """Every agent the hive manages (the manager included)."""
    ci: bool = False
    forge: bool = False
    gateway: bool = False
    matrix: bool = False

    def services(self) -> list[str]:
        """The non-agent services selected (none of them run under hivecore)."""
        return [s for s in ("ci", "forge", "gateway", "matrix") if getattr(self, s)]


HostRequest = Request
"""Every host.sock request record (the base all request records share)."""


@attrs.frozen(kw_only=True)
class ListRequest(HostRequest):
    CMD = "list"


@attrs.frozen(kw_only=True)
class AgentStatusRequest(HostRequest):
    """Every agent's row; with ``names``, only theirs (each must be an agent of this hive)."""

    CMD = "agent_status"
    names: list[str] = attrs.field(factory=list, metadata=check(checks.agent_names))


@attrs.frozen(kw_only=True)
class SubscribeAgentStatusRequest(HostRequest):
    CMD = "subscribe_agent_status"


@attrs.frozen(kw_only=True)
class StartRequest(HostRequest):
    CMD = "start"
    scope: LifecycleScope = attrs.field(factory=LifecycleScope)


@attrs.frozen(kw_only=True)
class StopRequest(HostRequest):
    CMD = "stop"
    scope: LifecycleScope = attrs.field(factory=LifecycleScope)
    graceful: bool = True
    """True: SIGTERM, then SIGKILL after the stop timeout; false: SIGKILL now. Absent means true."""


@attrs.frozen(kw_only=True)
class RestartRequest(HostRequest):
    CMD = "restart"
    name: str = attrs.field(metadata=check(checks.agent_name))


# --- alarms (actors/alarms.py) ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AlarmsRequest(HostRequest):
    """The raised alarms (crit first, then oldest first)."""

    CMD = "alarms"


@attrs.frozen(kw_only=True)
class AlarmRow:
    """One raised alarm (:class:`hivecore.alarms.Alarm`): ``since`` in Unix seconds."""

    key: str
    kind: str
    level: str
    message: str
    agent: str | None = None
    since: float = 0.0


@attrs.frozen(kw_only=True)
class ReleaseRequest(HostRequest):
    """Lift an agent's crash-loop hold (it may be started again)."""

    CMD = "release"
    name: str = attrs.field(metadata=check(checks.agent_name))


@attrs.frozen(kw_only=True)
class RebuildRequest(HostRequest):
    CMD = "rebuild"
    name: str = attrs.field(metadata=check(checks.agent_name))


@attrs.frozen(kw_only=True)
class KillRequest(HostRequest):
    """Shared by host.sock and the manager socket: nobody kills the manager."""

    CMD = "kill"
    name: str = attrs.field(metadata=check(checks.not_manager("kill"), "the agent's name"))


@attrs.frozen(kw_only=True)
class DestroyRequest(HostRequest):
    CMD = "destroy"
    name: str = attrs.field(metadata=check(checks.not_manager("destroy")))
    purge: bool = False


@attrs.frozen(kw_only=True)
class SpawnRequest(HostRequest):
    CMD = "spawn"
    name: str = attrs.field(metadata=check(checks.new_agent))


@attrs.frozen(kw_only=True)
class RequestSpawnRequest(HostRequest):
    """Shared by host.sock, the dashboard and the manager socket."""

    CMD = "request_spawn"
    name: str = attrs.field(
        metadata=check(
            checks.new_agent, "the new agent's name: a lowercase letter, then up to 8 of a-z 0-9 -"
        )
    )
    description: str | None = attrs.field(
        default=None,
        metadata=check(
            checks.text("description"), "what this is for and why, shown to the operator with the request"
        ),
    )


@attrs.frozen(kw_only=True)
class PurgeTombstoneRequest(HostRequest):
    """Delete a destroyed agent's kept state (refused while the agent exists)."""

    CMD = "purge_tombstone"
    name: str = attrs.field(metadata=check(checks.not_manager("purge")))


@attrs.frozen(kw_only=True)
class PendingRequest(HostRequest):
    """Every approval, oldest first (the original's answer); ``only_pending``: the pending ones."""

    CMD = "pending"
    only_pending: bool = False


@attrs.frozen(kw_only=True)
class ApprovalRequest(HostRequest):
    """One approval with its stored review (whatever its status): ``approvals`` holds that one row."""

    CMD = "approval"
    id: int = attrs.field(metadata=check(checks.approval_id))


@attrs.frozen(kw_only=True)
class GetLogsRequest(HostRequest):
    """The last ``lines`` lines of an agent's log; with ``offset`` (a byte offset a previous answer
    gave as ``log_offset``), the complete lines written since instead. Shared by host.sock and the
    manager socket."""

    CMD = "get_logs"
    name: str = attrs.field(metadata=check(checks.agent_name, "the agent's name"))
    lines: int = attrs.field(
        default=DEFAULT_LOG_LINES,
        metadata=check(checks.log_lines(MAX_LOG_LINES), f"how many of the last lines (1 to {MAX_LOG_LINES})"),
    )
    offset: int | None = attrs.field(
        default=None,
        metadata=check(checks.log_offset, "a log_offset a previous answer gave: the lines written since"),
    )


@attrs.frozen(kw_only=True)
class OpSendRequest(HostRequest):
    """A message from the operator to an agent, ``manager``/``@manager`` or ``*``; the broker checks
    the recipient and the body (host.sock and the dashboard's ``/op-send``)."""

    CMD = "op_send"
    to: str = attrs.field(metadata=check(checks.recipient))
    body: str


@attrs.frozen(kw_only=True)
class OperatorInboxRequest(HostRequest):
    """The operator's newest messages, oldest first; reading them acks them (the broker's quota)."""

    CMD = "operator_inbox"
    limit: int = attrs.field(default=50, metadata=check(checks.inbox_limit))


@attrs.frozen(kw_only=True)
class ApproveRequest(HostRequest):
    CMD = "approve"
    id: int = attrs.field(metadata=check(checks.approval_id))


@attrs.frozen(kw_only=True)
class DenyRequest(HostRequest):
    CMD = "deny"
    id: int = attrs.field(metadata=check(checks.approval_id))
    note: str | None = attrs.field(default=None, metadata=check(checks.text("note")))


@attrs.frozen(kw_only=True)
class SetPausedRequest(HostRequest):
    CMD = "set_paused"
    name: str = attrs.field(metadata=check(checks.agent_name))
    paused: bool


@attrs.frozen(kw_only=True)
class UrlsRequest(HostRequest):
    CMD = "urls"


@attrs.frozen(kw_only=True)
class MetaUpdateRequest(HostRequest):
    """Update these meta flake inputs (one lock update), then rebuild the agents they affect."""

    CMD = "meta_update"
    inputs: list[str] = attrs.field(metadata=check(checks.meta_inputs))


@attrs.frozen(kw_only=True)
class LoginRequest(HostRequest):
    """Log an agent in: ``secret`` is an Anthropic API key or a ``claude setup-token`` token
    (:mod:`hivecore.credentials`); never echoed, logged or shown."""

    CMD = "login"
    name: str = attrs.field(metadata=check(checks.agent_name))
    secret: str = attrs.field(repr=False, metadata=check(checks.secret))


@attrs.frozen(kw_only=True)
class LogoutRequest(HostRequest):
    CMD = "logout"
    name: str = attrs.field(metadata=check(checks.agent_name))


@attrs.frozen(kw_only=True)
class AgentEnvRequest(HostRequest):
    """Set (``set``) and remove (``unset``) an agent's own environment values (:mod:`hivecore.agent_env`);
    both empty: just list its keys. The answer lists key names and where each comes from, never values."""

    CMD = "agent_env"
    name: str = attrs.field(metadata=check(checks.agent_name))
    set: dict[str, str] = attrs.field(factory=dict, repr=False, metadata=check(checks.env_assignments))
    unset: list[str] = attrs.field(factory=list, metadata=check(checks.env_keys))


@attrs.frozen(kw_only=True)
class UsageRequest(HostRequest):
    """Turns, tokens and cost per agent (today and in total); ``name``: only that agent."""

    CMD = "usage"
    name: str | None = attrs.field(default=None, metadata=check(checks.optional_agent_name))


# --- reminders (actors/reminder_scheduler.py) ---


@attrs.frozen(kw_only=True)
class RemindersRequest(HostRequest):
    """Pending reminders, earliest due first (``name``: that agent's only; ``done``: also the sent
    and failed ones still kept)."""

    CMD = "reminders"
    name: str | None = attrs.field(default=None, metadata=check(checks.optional_agent_name))
    done: bool = False


@attrs.frozen(kw_only=True)
class CancelReminderRequest(HostRequest):
    CMD = "cancel_reminder"
    id: int = attrs.field(metadata=check(reminders.reminder_id))


# --- viewers (issue 18 item 6): read-only, the operator's ---


@attrs.frozen(kw_only=True)
class AgentConfigRequest(HostRequest):
    """The ``agent.nix`` of an agent's applied ``main`` (what was approved; read from the
    daemon-owned applied repo, never the manager's proposed one)."""

    CMD = "agent_config"
    name: str = attrs.field(metadata=check(checks.agent_name))


@attrs.frozen(kw_only=True)
class StateFileRequest(HostRequest):
    """One regular file of an agent's state dir (at most 1 MiB; no link followed): ``path`` relative
    to the state dir, or absolute inside it."""

    CMD = "state_file"
    name: str = attrs.field(metadata=check(checks.agent_name))
    path: str


# --- scheduled prompts (actors/prompt_scheduler.py) ---


@attrs.frozen(kw_only=True)
class SchedulesRequest(HostRequest):
    """Active and requested schedules (``done``: also the finished and cancelled ones)."""

    CMD = "schedules"
    done: bool = False


@attrs.frozen(kw_only=True)
class ScheduleRequest(HostRequest):
    """Send ``body`` to the ``to`` agents every ``every`` (``90s``, ``1h30m``) or once at ``at``
    (Unix seconds or ISO 8601): exactly one of them."""

    CMD = "schedule"
    to: list[str] = attrs.field(metadata=check(sched.targets))
    body: str = attrs.field(metadata=check(sched.body))
    every: str | None = attrs.field(default=None, metadata=check(sched.optional_duration))
    at: str | None = attrs.field(default=None, metadata=check(sched.optional_when))
    description: str | None = attrs.field(default=None, metadata=check(sched.description))


@attrs.frozen(kw_only=True)
class UnscheduleRequest(HostRequest):
    """Cancel schedule ``id`` (every target), or only ``target``."""

    CMD = "unschedule"
    id: int = attrs.field(metadata=check(sched.schedule_id))
    target: str | None = attrs.field(default=None, metadata=check(checks.optional_agent_name))


@attrs.frozen(kw_only=True)
class SwarmStatusRequest(HostRequest):
    """This hive's swarm link and every hive it sees, with their agents (docs/swarm.md)."""

    CMD = "swarm_status"


# --- operator reach (issue 20 item 4: hivecore/swarm_ops.py) -----------------------------------------


@attrs.frozen(kw_only=True)
class SwarmOpRequest(HostRequest):
    """Run ``op`` on another hive's agent (``target`` ``NAME@HIVE``) or approval (``ID@HIVE``):
    one NATS request to that hive, which must list this one in ``--swarm-operator-hives``."""

    CMD = "swarm_op"
    op: str = attrs.field(metadata=swarm_ops.OP)
    target: str = attrs.field(metadata=swarm_ops.TARGET)
    graceful: bool = True
    """``stop``: SIGTERM first (false: SIGKILL now)."""
    note: str | None = attrs.field(default=None, metadata=swarm_ops.NOTE)
    """``deny``: why (shown to the far hive's manager)."""
    timeout: float | None = attrs.field(default=None, metadata=swarm_ops.TIMEOUT)
    """Seconds to wait for the far hive (default 60; a rebuild 280)."""


# --- audit (issue 19: hivecore/audit.py) ----------------------------------------------------------


def _since(value: float | None) -> float | None:
    if value is not None and not (0 <= value < 1e11):
        raise BadInput(f"since is epoch seconds (0 to 1e11), got {value!r}")
    return value


def _audit_limit(value: int) -> int:
    if value < 1:
        raise BadInput("limit must be at least 1")
    return min(value, MAX_AUDIT_ROWS)


def _before(value: int | None) -> int | None:
    if value is not None and not 1 <= value < 2**62:
        raise BadInput(f"before is a row's seq (a positive number), got {value}")
    return value


@attrs.frozen(kw_only=True)
class AuditRequest(HostRequest):
    """The audit trail's newest ``limit`` rows (oldest first), or with ``verify`` the chain's check."""

    CMD = "audit"
    since: float | None = attrs.field(default=None, metadata=check(_since))
    agent: str | None = attrs.field(default=None, metadata=check(checks.optional_agent_name))
    before: int | None = attrs.field(default=None, metadata=check(_before))
    limit: int = attrs.field(default=200, metadata=check(_audit_limit))
    verify: bool = False


COMMANDS: tuple[str, ...] = spec.cmds("host_sock")
"""Every verb host.sock answers, from the verb table (its records:
:func:`hivecore.verbs.bind.request_union`)."""


# --- responses -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AgentStatusRow:
    """One agent in ``agent_statuses`` (reference §8.5, field order as serialised)."""

    name: str
    running: bool
    failed: bool
    needs_update: bool
    needs_login: bool
    deployed_sha: str | None = None
    pending_reminders: int = 0
    paused: bool = False
    parent: str | None = None
    active_model: str | None = None
    status_text: str | None = None
    status_set_at: str | None = None
    url: str | None = None
    last_turn_at: int | None = None
    """When its last reported turn ended (Unix seconds); this and the next three only once it has
    reported a turn."""
    turns_today: int | None = None
    tokens_today: int | None = None
    cost_today_usd: float | None = None
    stuck: str | None = None
    """Why it looks stuck (a turn past its limit, or mail unread while it does not poll)."""
    waiting_on_operator_since: int | None = None
    """Waiting on the operator: when its oldest open question to the operator was asked (Unix s)."""

    @classmethod
    def from_view(cls, view: ContainerView) -> AgentStatusRow:
        return cls(
            name=view.name,
            running=view.running,
            failed=view.failed,
            needs_update=view.needs_update,
            needs_login=view.needs_login,
            deployed_sha=view.deployed_sha,
            pending_reminders=view.pending_reminders,
            paused=view.paused,
            parent=view.parent,
            active_model=view.active_model,
            status_text=view.status_text,
            status_set_at=view.status_set_at,
            url=view.url,
            last_turn_at=view.last_turn_at,
            turns_today=view.turns_today if view.last_turn_at is not None else None,
            tokens_today=view.tokens_today if view.last_turn_at is not None else None,
            cost_today_usd=view.cost_today_usd if view.last_turn_at is not None else None,
            stuck=view.stuck,
            waiting_on_operator_since=view.waiting_on_operator_since,
        )


@attrs.frozen(kw_only=True)
class Urls:
    """Where the operator finds the hive; a key is omitted when that service does not exist."""

    domain: str | None = None
    home: str | None = None
    forge: str | None = None
    matrix: str | None = None


def make_urls(domain: str | None, dashboard_host: str, dashboard_port: int) -> Urls:
    """With a gateway domain, home is ``https://<domain>/``; without, the dashboard's own address.

    A wildcard bind (``0.0.0.0``/``::``/empty) is shown as ``localhost``: host.sock clients are local.
    forge and matrix stay None until hivecore runs those services.
    """
    if domain:
        return Urls(domain=domain, home=f"https://{domain}/")
    host = dashboard_host if dashboard_host not in ("", "0.0.0.0", "::") else "localhost"
    if ":" in host:
        host = f"[{host}]"
    return Urls(home=f"http://{host}:{dashboard_port}/")


@attrs.frozen(kw_only=True)
class InboxMessage:
    """One message in ``operator_inbox``: ``sent_at`` in Unix seconds; ``body`` as the sender wrote
    it (an agent's text: escape it before a terminal shows it)."""

    id: int
    sender: str
    body: str
    sent_at: int


@attrs.frozen(kw_only=True)
class EnvKey:
    """One environment key an agent gets: ``source`` is ``agent`` (its own, set with ``agent_env``)
    or ``file`` (the daemon's ``--agent-env-file``)."""

    key: str
    source: str


@attrs.frozen(kw_only=True)
class LoginState:
    name: str
    logged_in: bool
    via: list[str]
    """What logs it in: ``login file``, ``claude credentials``, ``env ANTHROPIC_API_KEY`` …"""


@attrs.frozen(kw_only=True)
class UsageRow:
    """An agent's recorded turns (:mod:`hivecore.usage`): today is the UTC day; ``last_turn_at`` in
    Unix seconds (when the last reported turn ended); tokens are input + output + cache."""

    name: str
    turns_today: int = 0
    tokens_today: int = 0
    cost_today_usd: float = 0.0
    turns_total: int = 0
    tokens_total: int = 0
    cost_total_usd: float = 0.0
    last_turn_at: int | None = None
    last_status: str | None = None


@attrs.frozen(kw_only=True)
class AgentConfig:
    """``agent_config``: an agent's applied ``agent.nix`` (the agent's text: escape it)."""

    name: str
    sha: str
    """Applied ``main`` (the commit shown)."""
    deployed_sha: str | None = None
    """What the running agent was built from (differs from ``sha`` while it needs an update)."""
    agent_nix: str | None = None
    """``None``: applied main has no ``agent.nix``."""
    truncated: bool = False
    """Only the first 256 KiB are shown."""


@attrs.frozen(kw_only=True)
class StateFileView:
    """``state_file``: one file of an agent's state dir (the agent's text: escape it)."""

    agent: str
    path: str
    """Relative to the state dir."""
    size: int
    mtime: float
    text: str
    """UTF-8 decoded; an undecodable byte is U+FFFD."""
    binary: bool
    """It held a NUL or invalid UTF-8."""


@attrs.frozen(kw_only=True)
class HostResponse:
    version: int = HOST_SOCK_VERSION
    ok: bool
    error: str | None = None
    agents: list[str] | None = None
    approvals: list[Approval] | None = None
    agent_statuses: list[AgentStatusRow] | None = None
    urls: Urls | None = None
    messages: list[InboxMessage] | None = None
    """``operator_inbox``: the operator's messages, oldest first."""
    approval_id: int | None = None
    """``request_spawn``: the new approval's id."""
    ids: list[int] | None = None
    """``op_send``: the ids of the queued messages (one per recipient; ``*`` fans out)."""
    lines: list[str] | None = None
    """``get_logs``: log lines, oldest first (the agent wrote them: escape them before a terminal)."""
    log_offset: int | None = None
    """``get_logs``: the byte offset just after ``lines``; ask with ``offset`` set to it for what follows."""
    message: str | None = None
    """What happened, when it is not what the verb's name says (``start``: ``coder already running``)."""
    env_keys: list[EnvKey] | None = None
    """``agent_env``: the agent's environment keys (never values)."""
    login: LoginState | None = None
    """``login`` / ``logout``: the agent's login afterwards."""
    usage: list[UsageRow] | None = None
    """``usage``: one row per agent."""
    questions: list[Question] | None = None
    """``questions``: the open questions, oldest first."""
    reminders: list[Reminder] | None = None
    """``reminders``: the reminders, earliest due first."""
    alarms: list[AlarmRow] | None = None
    """``alarms``: the raised alarms, crit first, then oldest first."""
    schedules: list[Schedule] | None = None
    """``schedules`` (and ``schedule``, ``unschedule``: the one row): scheduled prompts."""
    swarm: SwarmStatus | None = None
    """``swarm_status``: the link's state and every hive seen (``state`` ``off``: no ``--swarm``)."""
    audit: list[AuditRow] | None = None
    """``audit``: rows of the audit trail, oldest first (:class:`hivecore.audit.AuditRow`)."""
    agent_config: AgentConfig | None = None
    """``agent_config``: the applied ``agent.nix``."""
    state_file: StateFileView | None = None
    """``state_file``: the file and its content."""


OK = HostResponse(ok=True)


def failure(message: str) -> HostResponse:
    return HostResponse(ok=False, error=message)


# --- encoding / decoding ---------------------------------------------------------------------------


def encode_response(response: HostResponse) -> bytes:
    return json_line(converter.unstructure(response))


def encode_request(request: HostRequest) -> bytes:
    """One request line, ``cmd`` first (as the original's clients write it)."""
    return request_line(request.CMD, converter.unstructure(request))


def decode_response(line: bytes | str) -> HostResponse:
    """Decode an answer line (clients and tests); a missing ``version`` (pre-version daemon) is 0."""
    data = json.loads(line)
    if isinstance(data, dict):
        data.setdefault("version", 0)
    return converter.structure(data, HostResponse)


def parse_request(line: bytes) -> HostRequest | RequestError:
    """Decode one request line (without its newline); never raises for bad input. The records are
    the verb table's host.sock rows (:func:`hivecore.verbs.bind.request_union`)."""
    from hivecore.verbs import bind  # the table's server half imports this module

    union = bind.request_union("host_sock")
    result: HostRequest | RequestError = parse_line(line, union, example="list")
    return result
