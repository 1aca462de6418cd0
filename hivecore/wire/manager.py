"""Manager socket wire records (``<runtime-dir>/manager/mcp.sock``; reference §9.1).

The manager speaks every agent verb except ``status``/``set_status`` plus the lifecycle and
``request_*`` verbs below; answers are :class:`~hivecore.wire.agent.McpResponse` lines.
"""

from __future__ import annotations

import attrs

from hivecore import schedules
from hivecore.verbs import checks, spec
from hivecore.verbs.checks import check
from hivecore.wire.agent import (
    McpRequest,
    RequestError,
    parse,
)
from hivecore.wire.host import DEFAULT_LOG_LINES as DEFAULT_LOG_LINES
from hivecore.wire.host import MAX_LOG_LINES as MAX_LOG_LINES
from hivecore.wire.host import GetLogsRequest as GetLogsRequest
from hivecore.wire.host import KillRequest as KillRequest
from hivecore.wire.host import RequestSpawnRequest as RequestSpawnRequest


@attrs.frozen(kw_only=True)
class RequestInitConfigRequest(McpRequest):
    CMD = "request_init_config"
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
class RequestApplyCommitRequest(McpRequest):
    CMD = "request_apply_commit"
    agent: str = attrs.field(
        metadata=check(checks.agent_name, "the agent whose config repo holds the commit")
    )
    commit_ref: str = attrs.field(
        metadata=checks.doc(
            "the commit to apply: a full or abbreviated hash, or a ref, in agents/<agent>/config"
        )
    )
    description: str | None = attrs.field(
        default=None,
        metadata=check(
            checks.text("description"), "what this is for and why, shown to the operator with the request"
        ),
    )


@attrs.frozen(kw_only=True)
class RequestUpdateMetaInputsRequest(McpRequest):
    CMD = "request_update_meta_inputs"
    inputs: list[str] | None = attrs.field(
        default=None,
        metadata=check(
            checks.optional_meta_inputs, "the meta flake's input names to update; none: every input"
        ),
    )
    description: str | None = attrs.field(
        default=None,
        metadata=check(
            checks.text("description"), "what this is for and why, shown to the operator with the request"
        ),
    )


@attrs.frozen(kw_only=True)
class CancelApprovalRequest(McpRequest):
    CMD = "cancel_approval"
    id: int = attrs.field(metadata=check(checks.approval_id, "the id of a pending approval you requested"))


@attrs.frozen(kw_only=True)
class StartRequest(McpRequest):
    CMD = "start"
    name: str = attrs.field(metadata=check(checks.not_manager("start"), "the agent's name"))


@attrs.frozen(kw_only=True)
class RestartRequest(McpRequest):
    CMD = "restart"
    name: str = attrs.field(metadata=check(checks.not_manager("restart"), "the agent's name"))


@attrs.frozen(kw_only=True)
class UpdateRequest(McpRequest):
    CMD = "update"
    name: str = attrs.field(metadata=check(checks.not_manager("update"), "the agent's name"))


@attrs.frozen(kw_only=True)
class RequestSchedulePromptRequest(McpRequest):
    """Ask the operator to approve a scheduled prompt (as host.sock's ``schedule``)."""

    CMD = "request_schedule_prompt"
    to: list[str] = attrs.field(
        metadata=check(
            schedules.targets, f"the agents to prompt (names, or 'manager'; 1 to {schedules.MAX_TARGETS})"
        )
    )
    body: str = attrs.field(
        metadata=check(
            schedules.body, f"the prompt, at most {schedules.MAX_BODY} bytes (sent as the operator's message)"
        )
    )
    every: str | None = attrs.field(
        default=None,
        metadata=check(
            schedules.optional_duration, "send it every this long: 90s, 30m, 1h30m, 2d (give this or at)"
        ),
    )
    at: str | None = attrs.field(
        default=None,
        metadata=check(
            schedules.optional_when,
            "send it once, at this time: Unix seconds or ISO 8601, UTC if no offset (give this or every)",
        ),
    )
    description: str | None = attrs.field(
        default=None,
        metadata=check(
            schedules.description, "what this is for and why, shown to the operator with the request"
        ),
    )


MANAGER_COMMANDS: tuple[str, ...] = spec.cmds("manager_sock")
"""Every verb the manager socket answers, from the verb table (its records:
:func:`hivecore.verbs.bind.request_union`)."""


def parse_manager_request(line: bytes) -> McpRequest | RequestError:
    from hivecore.verbs import bind  # the table's server half imports this module

    return parse(line, bind.request_union("manager_sock"), MANAGER_COMMANDS)
