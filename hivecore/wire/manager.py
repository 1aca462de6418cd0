"""Manager socket wire records (``<runtime-dir>/manager/mcp.sock``; reference §9.1).

The manager speaks every agent verb except ``status``/``set_status`` plus the lifecycle and
``request_*`` verbs below; answers are :class:`~hivecore.wire.agent.McpResponse` lines.
"""

from __future__ import annotations

import attrs

from hivecore import schedules
from hivecore.verbs import checks
from hivecore.verbs.checks import check
from hivecore.wire.agent import (
    AckTurnRequest,
    CountPendingRemindersRequest,
    GetLooseEndsRequest,
    GetOpenThreadsRequest,
    McpRequest,
    RecvRequest,
    RemindRequest,
    ReportTurnRequest,
    RequestError,
    SendRequest,
    UnknownRequest,
    WhoamiRequest,
    parse,
)
from hivecore.wire.converter import configure_tagged
from hivecore.wire.host import DEFAULT_LOG_LINES as DEFAULT_LOG_LINES
from hivecore.wire.host import MAX_LOG_LINES as MAX_LOG_LINES
from hivecore.wire.host import GetLogsRequest as GetLogsRequest
from hivecore.wire.host import KillRequest as KillRequest
from hivecore.wire.host import RequestSpawnRequest as RequestSpawnRequest
from hivecore.wire.questions import AnswerRequest, AskOperatorRequest, AskRequest


@attrs.frozen(kw_only=True)
class RequestInitConfigRequest(McpRequest):
    CMD = "request_init_config"
    name: str = attrs.field(metadata=check(checks.new_agent))
    description: str | None = attrs.field(default=None, metadata=check(checks.text("description")))


@attrs.frozen(kw_only=True)
class RequestApplyCommitRequest(McpRequest):
    CMD = "request_apply_commit"
    agent: str = attrs.field(metadata=check(checks.agent_name))
    commit_ref: str
    description: str | None = attrs.field(default=None, metadata=check(checks.text("description")))


@attrs.frozen(kw_only=True)
class RequestUpdateMetaInputsRequest(McpRequest):
    CMD = "request_update_meta_inputs"
    inputs: list[str] | None = attrs.field(default=None, metadata=check(checks.optional_meta_inputs))
    description: str | None = attrs.field(default=None, metadata=check(checks.text("description")))


@attrs.frozen(kw_only=True)
class CancelApprovalRequest(McpRequest):
    CMD = "cancel_approval"
    id: int = attrs.field(metadata=check(checks.approval_id))


@attrs.frozen(kw_only=True)
class StartRequest(McpRequest):
    CMD = "start"
    name: str = attrs.field(metadata=check(checks.not_manager("start")))


@attrs.frozen(kw_only=True)
class RestartRequest(McpRequest):
    CMD = "restart"
    name: str = attrs.field(metadata=check(checks.not_manager("restart")))


@attrs.frozen(kw_only=True)
class UpdateRequest(McpRequest):
    CMD = "update"
    name: str = attrs.field(metadata=check(checks.not_manager("update")))


@attrs.frozen(kw_only=True)
class RequestSchedulePromptRequest(McpRequest):
    """Ask the operator to approve a scheduled prompt (as host.sock's ``schedule``)."""

    CMD = "request_schedule_prompt"
    to: list[str] = attrs.field(metadata=check(schedules.targets))
    body: str = attrs.field(metadata=check(schedules.body))
    every: str | None = attrs.field(default=None, metadata=check(schedules.optional_duration))
    at: str | None = attrs.field(default=None, metadata=check(schedules.optional_when))
    description: str | None = attrs.field(default=None, metadata=check(schedules.description))


ManagerRequest = (
    SendRequest
    | RecvRequest
    | AckTurnRequest
    | RequestSpawnRequest
    | RequestInitConfigRequest
    | RequestApplyCommitRequest
    | RequestUpdateMetaInputsRequest
    | CancelApprovalRequest
    | KillRequest
    | StartRequest
    | RestartRequest
    | UpdateRequest
    | GetLogsRequest
    | WhoamiRequest
    | ReportTurnRequest
    | AskOperatorRequest
    | AskRequest
    | AnswerRequest
    | RemindRequest
    | CountPendingRemindersRequest
    | RequestSchedulePromptRequest
    | GetLooseEndsRequest
    | GetOpenThreadsRequest
)
MANAGER_COMMANDS: tuple[str, ...] = tuple(cl.CMD for cl in ManagerRequest.__args__)
_WireManagerRequest = ManagerRequest | UnknownRequest
configure_tagged(_WireManagerRequest, tag_attr="CMD", tag_name="cmd", default=UnknownRequest)


def parse_manager_request(line: bytes) -> McpRequest | RequestError:
    return parse(line, _WireManagerRequest, MANAGER_COMMANDS)
