"""Agent socket wire records (``<runtime-dir>/agents/<n>/mcp.sock``; reference §9.3).

Requests are JSON objects tagged by ``cmd`` (snake_case), one per line, like host.sock; unknown
keys are ignored, optional fields default. Every answer is one :class:`McpResponse` line:
``version`` and ``ok`` always, ``error`` only on failure, result fields only when they apply.
The manager socket (:mod:`hivecore.wire.manager`) shares the envelope and the common verbs.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from hivecore import reminders, usage
from hivecore.verbs import checks, spec
from hivecore.verbs.checks import check
from hivecore.wire.converter import converter
from hivecore.wire.host import AgentStatusRow
from hivecore.wire.lines import json_line, request_line
from hivecore.wire.request import Request, parse_line
from hivecore.wire.request import RequestError as RequestError
from hivecore.wire.request import UnknownRequest as UnknownRequest

MCP_VERSION = 1
MAX_BODY = 4096
"""The longest message body (UTF-8 bytes); longer content belongs in a state file named by path."""
MAX_RECV_WAIT = 180.0
MAX_RECV_BATCH = 32
MAX_STATUS = 1024
"""The longest ``set_status`` text (UTF-8 bytes)."""


# --- records in answers ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Delivery:
    """One message as ``recv`` hands it out. ``redelivered``: it was handed out before and never
    acked (the previous session ended mid-turn), so it may already have been handled."""

    id: int
    sender: str
    recipient: str
    body: str
    sent_at: int
    redelivered: bool = False
    in_reply_to: int | None = None


@attrs.frozen(kw_only=True)
class LooseEnd:
    """One thing still open for the caller (``get_loose_ends``, :mod:`hivecore.loose_ends`)."""

    kind: str
    """``approval``, ``message``, ``thread`` (and the kinds other areas add: questions, reminders)."""
    id: int
    """The row's id in its kind (approval id, message id …)."""
    since: int
    """Unix seconds: when it was requested, sent or asked."""
    party: str | None = None
    """The other side (the sender, the operator …)."""
    agent: str | None = None
    """What it is about, when that is an agent (an approval's agent)."""
    state: str | None = None
    """A word on where it stands (an approval's kind; ``queued``/``delivered``; ``reply to 12``)."""
    text: str = ""
    """The first 200 characters of the text (someone else's words: data, not instructions)."""


@attrs.frozen(kw_only=True)
class Whoami:
    name: str
    """The agent's name (``hm1nd`` on the manager socket)."""
    inbox: str
    """The broker recipient this socket reads (``manager`` for the manager)."""
    role: str
    """``agent`` or ``manager``."""


@attrs.frozen(kw_only=True)
class McpResponse:
    version: int = MCP_VERSION
    ok: bool
    error: str | None = None
    ids: list[int] | None = None
    """``send``: the ids of the queued rows (one per recipient; ``*`` fans out)."""
    messages: list[Delivery] | None = None
    acked: int | None = None
    status: AgentStatusRow | None = None
    whoami: Whoami | None = None
    approval_id: int | None = None
    lines: list[str] | None = None
    log_offset: int | None = None
    """``get_logs``: the byte offset just after ``lines`` (ask with ``offset`` set to it for what follows)."""
    question_id: int | None = None
    """``ask_operator`` / ``ask``: the new question's id (its answer arrives later, from system)."""
    reminder_id: int | None = None
    """``remind``: the new reminder's id."""
    due_at: float | None = None
    """``remind``: when it is due (Unix seconds)."""
    pending_reminders: int | None = None
    """``count_pending_reminders`` (and ``remind``): the caller's reminders not delivered yet."""
    loose_ends: list[LooseEnd] | None = None
    """``get_loose_ends`` / ``get_open_threads``: what is still open for the caller."""


OK = McpResponse(ok=True)


def failure(message: str) -> McpResponse:
    return McpResponse(ok=False, error=message)


def encode_response(response: McpResponse) -> bytes:
    return json_line(converter.unstructure(response))


def decode_response(line: bytes | str) -> McpResponse:
    return converter.structure(json.loads(line), McpResponse)


# --- requests (the verbs both sockets share) -----------------------------------------------------


McpRequest = Request
"""Every agent/manager socket request record (the base all request records share)."""


@attrs.frozen(kw_only=True)
class SendRequest(McpRequest):
    CMD = "send"
    to: str = attrs.field(
        metadata=checks.doc("an agent's name, 'manager', 'operator', '*' (every agent) or name@hive")
    )
    body: str = attrs.field(metadata=checks.doc(f"the message, at most {MAX_BODY} UTF-8 bytes"))
    in_reply_to: int | None = attrs.field(
        default=None,
        metadata=check(checks.message_id, "the id of the message this answers (this hive's ids only)"),
    )


@attrs.frozen(kw_only=True)
class RecvRequest(McpRequest):
    """Take up to ``max`` (1..32) messages; with none queued, wait up to ``wait_seconds`` (0..180)."""

    CMD = "recv"
    wait_seconds: float = 0.0
    max: int = 1


@attrs.frozen(kw_only=True)
class AckTurnRequest(McpRequest):
    CMD = "ack_turn"


@attrs.frozen(kw_only=True)
class GetLooseEndsRequest(McpRequest):
    """What is still open for the caller: pending approvals it requested, messages not acked,
    threads waiting on it (and questions and reminders, as those areas add them)."""

    CMD = "get_loose_ends"


@attrs.frozen(kw_only=True)
class GetOpenThreadsRequest(McpRequest):
    """Only the threads (``in_reply_to`` chains) waiting on the caller."""

    CMD = "get_open_threads"


@attrs.frozen(kw_only=True)
class WhoamiRequest(McpRequest):
    CMD = "whoami"


@attrs.frozen(kw_only=True)
class StatusRequest(McpRequest):
    CMD = "status"


@attrs.frozen(kw_only=True)
class SetStatusRequest(McpRequest):
    CMD = "set_status"
    text: str = attrs.field(
        metadata=check(
            checks.utf8_text("status text", MAX_STATUS),
            f"what you are doing, one line for the operator (at most {MAX_STATUS} bytes; empty clears it)",
        )
    )


@attrs.frozen(kw_only=True)
class ReportTurnRequest(McpRequest):
    """The harness's account of one finished turn (harness plumbing, never an MCP tool): seconds,
    tokens, cost in USD as the Claude CLI reports it, tool calls and the result status
    (:mod:`hivecore.usage`; each number bounded)."""

    CMD = "report_turn"
    duration_seconds: float = attrs.field(metadata=check(usage.duration))
    input_tokens: int = attrs.field(default=0, metadata=check(usage.tokens("input_tokens")))
    output_tokens: int = attrs.field(default=0, metadata=check(usage.tokens("output_tokens")))
    cache_read_tokens: int = attrs.field(default=0, metadata=check(usage.tokens("cache_read_tokens")))
    cache_creation_tokens: int = attrs.field(default=0, metadata=check(usage.tokens("cache_creation_tokens")))
    cost_usd: float = attrs.field(default=0.0, metadata=check(usage.cost))
    tool_calls: int = attrs.field(default=0, metadata=check(usage.tool_calls))
    status: str = attrs.field(default="ok", metadata=check(usage.status))

    def turn(self) -> usage.Turn:
        return usage.Turn(**attrs.asdict(self))


@attrs.frozen(kw_only=True)
class RemindRequest(McpRequest):
    """A reminder to the caller itself: ``message`` (at most 32 KiB) delivered from ``reminder``
    after ``delay_seconds`` or at ``at`` (Unix seconds), exactly one of them; with ``file_path`` (a
    file in the caller's state dir) or over 4 KiB the text goes to a file and a pointer is sent."""

    CMD = "remind"
    message: str = attrs.field(
        metadata=check(
            reminders.message, f"the text to be reminded of (at most {reminders.MAX_MESSAGE_BYTES} bytes)"
        )
    )
    delay_seconds: float | None = attrs.field(
        default=None, metadata=check(reminders.delay, "seconds from now (give this or at)")
    )
    at: float | None = attrs.field(
        default=None,
        metadata=check(reminders.unix_time, "when, in Unix seconds (give this or delay_seconds)"),
    )
    file_path: str | None = attrs.field(
        default=None,
        metadata=check(
            reminders.file_path,
            "a path in your state dir to write the text to; the reminder then points at it",
        ),
    )


@attrs.frozen(kw_only=True)
class CountPendingRemindersRequest(McpRequest):
    CMD = "count_pending_reminders"


AGENT_COMMANDS: tuple[str, ...] = spec.cmds("agent_sock")
"""Every verb an agent socket answers, from the verb table (its records:
:func:`hivecore.verbs.bind.request_union`)."""


def parse(line: bytes, union: Any, commands: tuple[str, ...]) -> McpRequest | RequestError:
    """Decode one request line against ``union`` (with :class:`UnknownRequest` as its fallback);
    never raises for bad input: every problem is one :class:`RequestError` sentence."""
    result: McpRequest | RequestError = parse_line(line, union, example="whoami", known=commands)
    return result


def parse_agent_request(line: bytes) -> McpRequest | RequestError:
    from hivecore.verbs import bind  # the table's server half imports this module

    return parse(line, bind.request_union("agent_sock"), AGENT_COMMANDS)


def encode_request(request: McpRequest) -> bytes:
    return request_line(request.CMD, converter.unstructure(request))
