"""The verb table's server half: per row (by :attr:`~hivecore.verbs.spec.Verb.key`) the request record,
the façade call and the answer on each surface. Every surface runs a verb the same way:

1. decode the request into the row's record (a socket line through the converter; a dashboard form
   through :attr:`~hivecore.verbs.spec.Route.fields` and the converter);
2. :func:`run`: the record's checks (:func:`~hivecore.wire.request.checked`, once), then the call;
3. answer: :attr:`Binding.host` / :attr:`Binding.mcp` / :attr:`Binding.done`; an exception becomes
   :func:`hivecore.errors.answer_for` (wire error line, HTTP status, hivectl exit code).

A call gets a *context* from its surface: ``ctx.facade`` (the coordinator; on an agent socket the
views) and ``ctx.caller`` (:class:`Caller`: principal and job source, decided by the surface), plus
what a surface alone has (host.sock's ``urls``; an agent socket's broker and identity). Adding a verb
is one row in :mod:`hivecore.verbs.spec`, one :class:`Binding` here and its service method.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

import attrs
import trio

from hivecore import loose_ends
from hivecore.audit import Actor, acting_as, collecting_jobs, current_actor
from hivecore.errors import HiveError, NotAvailable, Refused, UnknownAgent, answer_for
from hivecore.models import JobSource
from hivecore.verbs import spec
from hivecore.wire import agent as wa
from hivecore.wire import host as wh
from hivecore.wire import manager as wm
from hivecore.wire import questions as wq
from hivecore.wire.converter import configure_tagged
from hivecore.wire.request import Request, UnknownRequest, checked, structure

log = logging.getLogger(__name__)

SCOPE_CONCURRENCY = 16
EMPTY_SCOPE = "scope selects nothing; name agents or set agents=true"


@attrs.frozen
class Caller:
    """Who is asking (decided by the surface, never by the request) and how the lane records it."""

    principal: spec.Principal
    source: JobSource
    wait_for_builds: bool = True
    """False: a verb that starts a long build (meta_update) answers once the job is accepted."""

    def kw(self) -> dict[str, Any]:
        """The façade keyword arguments beyond the request's fields (none for host.sock, the default)."""
        return {} if self.source == "host_sock" else {"source": self.source}


OPERATOR_SOCK = Caller("operator", "host_sock")
DASHBOARD = Caller("operator", "dashboard", wait_for_builds=False)
MANAGER = Caller("manager", "manager")


@attrs.frozen
class Context:
    """The plainest call context: a façade and a caller (the dashboard's; tests')."""

    facade: Any
    caller: Caller
    audit: Any = None
    """The :class:`~hivecore.services.audit.AuditLog` recording state-changing verbs (``None``: none)."""


Call = Callable[[Any, Any], Awaitable[Any]]


def _ok(ctx: Any, value: object) -> wh.HostResponse:
    return wh.OK


def _mcp_ok(value: object) -> wa.McpResponse:
    return wa.OK


def _approval_answer(value: Any) -> wa.McpResponse:
    return wa.McpResponse(ok=True, approval_id=value.id)


@attrs.frozen
class Binding:
    request: type[Request]
    call: Call | None = None
    """``None``: a stream row its server answers itself (:attr:`spec.Verb.stream`)."""
    host: Callable[[Any, Any], wh.HostResponse | bytes] = _ok
    """host.sock's answer to the call's value (with the socket, for its cached lines and urls)."""
    mcp: Callable[[Any], wa.McpResponse] = _mcp_ok
    done: Callable[[Any, Any], str] | None = None
    """The dashboard's ``message`` for (request, value)."""


async def run(key: str, ctx: Any, request: Request, *, who: Actor | None = None) -> Any:
    """Check ``request`` (its record's field checks) and make row ``key``'s call; its value."""
    return (await run_checked(key, ctx, request, who=who))[1]


async def run_checked(key: str, ctx: Any, request: Request, *, who: Actor | None = None) -> tuple[Any, Any]:
    """:func:`run`, also returning the checked (normalised) request.

    The audit hook, once for every surface: a row that is not ``read_only`` is appended to the audit
    trail (``ctx.audit``, an :class:`~hivecore.services.audit.AuditLog`; none: not recorded) with
    ``who`` (the surface's :class:`~hivecore.audit.Actor`; ``None``: the caller's principal and
    surface alone), its arguments (secrets redacted), outcome and the jobs it produced — refused,
    failed and abandoned (cancelled) calls included."""
    call = BINDINGS[key].call
    row = spec.BY_KEY[key]
    if call is None:
        raise NotAvailable(f"{row.cmd} is answered by its server, not here")
    audit = getattr(ctx, "audit", None)
    actor = (
        who
        if who is not None
        else Actor(ctx.caller.principal, _VIA.get(ctx.caller.source, ctx.caller.source))
    )
    if audit is None or row.read_only:
        if ctx.caller.principal not in row.principals:  # a surface serves only its rows; the backstop
            raise Refused(f"{row.cmd} is not for the {ctx.caller.principal}")
        request = checked(request)
        with acting_as(actor):
            return request, await call(ctx, request)
    value: Any = None
    with collecting_jobs() as jobs, acting_as(actor):
        try:
            if ctx.caller.principal not in row.principals:
                raise Refused(f"{row.cmd} is not for the {ctx.caller.principal}")
            request = checked(request)
            value = await call(ctx, request)
        except BaseException as exc:
            if isinstance(exc, Exception | trio.Cancelled):
                await audit.verb(actor, row.cmd, request, None, exc, jobs)
            raise
    await audit.verb(actor, row.cmd, request, value, None, jobs)
    return request, value


_VIA = {
    "host_sock": "host_sock",
    "dashboard": "dashboard",
    "manager": "manager_sock",
    "internal": "agent_sock",
}
"""A caller's job source → the surface it came through (when the surface gave no :class:`Actor`)."""


async def call(key: str, ctx: Any, fields: Mapping[str, Any]) -> Any:
    """Row ``key`` with ``fields`` as JSON would carry them: decoded into its record (a bad shape
    is :class:`~hivecore.errors.BadInput`), checked, called; its value."""
    return await run(key, ctx, structure(dict(fields), BINDINGS[key].request))


def error_line(exc: BaseException, what: str, where: str) -> str:
    """The ``error`` text for ``exc`` (logged with its traceback when it is a bug)."""
    answer = answer_for(exc, what)
    if answer.internal:
        log.error("%s: %s failed", where, what, exc_info=exc)
    return answer.line


# --- scopes (host.sock's start/stop; the dashboard's one-agent start/stop) ------------------------


async def resolve_scope(facade: Any, scope: wh.LifecycleScope) -> list[str]:
    """The agent names ``scope`` selects, validated against one ``agent_names()`` snapshot.

    Refuses empty scopes, services, and any name that is not an agent (with the façade's own
    message: ``require_agent`` is asked only about a name missing from the snapshot). A scope is
    de-duplicated (first appearance wins), so naming one agent thousands of times costs one lookup.
    """
    services = scope.services()
    if services:
        raise Refused(
            f"scope selects {', '.join(services)}: this hive runs no such service; "
            "only agents (agent_names / agents=true) can be started or stopped"
        )
    if not scope.agents and not scope.agent_names:
        raise Refused(EMPTY_SCOPE)
    known = await facade.agent_names()
    selected = dict.fromkeys(known) if scope.agents else {}
    present = set(known)
    for name in dict.fromkeys(scope.agent_names):
        if name not in present:
            name = await facade.require_agent(name)  # raises the precise refusal
        selected.setdefault(name)
    return list(selected)


async def apply_scope(verb: str, names: list[str], fn: Callable[[str], Awaitable[None]]) -> None:
    """Run ``fn`` on every name (at most :data:`SCOPE_CONCURRENCY` at once). One name: its own
    error is raised. Several: the others still happen; every failure is listed in one
    :class:`Refused`."""
    if len(names) == 1:
        await fn(names[0])
        return
    failures: dict[str, str] = {}
    limiter = trio.CapacityLimiter(SCOPE_CONCURRENCY)

    async def one(name: str) -> None:
        async with limiter:
            try:
                await fn(name)
            except Exception as exc:
                failures[name] = error_line(exc, f"{verb} {name}", "verbs")

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name, name=f"{verb} {name}")
    if failures:
        listed = "; ".join(f"{n}: {failures[n]}" for n in names if n in failures)
        raise Refused(f"{verb} failed for {len(failures)} of {len(names)} agents: {listed}")


async def _start(ctx: Any, r: wh.StartRequest) -> tuple[list[str], list[str]]:
    """Start the scope's agents; ``(started, already running)`` (those were left as they were)."""
    kw = ctx.caller.kw()
    names = await resolve_scope(ctx.facade, r.scope)
    already: list[str] = []

    async def start(name: str) -> None:
        if await ctx.facade.start(name, **kw) == "already running":
            already.append(name)

    await apply_scope("start", names, start)
    return [n for n in names if n not in already], [n for n in names if n in already]


def _start_text(started: list[str], already: list[str]) -> str:
    said = [f"{', '.join(started)} started"] if started else []
    return "; ".join([*said, f"{', '.join(already)} already running"])


def _started(r: wh.StartRequest, value: tuple[list[str], list[str]]) -> str:
    started, already = value
    return _start_text(started, already) if already else f"{_scope_names(r)} started"


def _start_answer(ctx: Any, value: tuple[list[str], list[str]]) -> wh.HostResponse:
    started, already = value
    if not already:
        return wh.OK
    return wh.HostResponse(ok=True, message=_start_text(started, already))


async def _stop(ctx: Any, r: wh.StopRequest) -> None:
    kw = ctx.caller.kw()
    if not r.graceful:
        kw["graceful"] = False

    async def stop(name: str) -> None:
        await ctx.facade.stop(name, **kw)

    await apply_scope("stop", await resolve_scope(ctx.facade, r.scope), stop)


def _scope_names(r: Any) -> str:
    return ", ".join(r.scope.agent_names) or "every agent"


async def _alarms(facade: Any) -> list[wh.AlarmRow]:
    return [
        wh.AlarmRow(key=a.key, kind=a.kind, level=a.level, message=a.message, agent=a.agent, since=a.since)
        for a in facade.alarms()
    ]


def _named(method: str) -> Call:
    """A call of ``facade.<method>(request.name)``."""

    async def call(ctx: Any, r: Any) -> Any:
        return await getattr(ctx.facade, method)(r.name, **ctx.caller.kw())

    return call


async def _meta_update(ctx: Any, r: wh.MetaUpdateRequest) -> Any:
    kw = ctx.caller.kw()
    if not ctx.caller.wait_for_builds:
        kw["wait"] = False
    return await ctx.facade.meta_update(r.inputs, **kw)


def _dashboard_meta_update(r: wh.MetaUpdateRequest, job: Any) -> str:
    return f"meta update started (job {job.id}): " + ", ".join(r.inputs)


async def _status(ctx: Any, r: wa.StatusRequest) -> Any:
    return await ctx.status_row()


async def _set_status(ctx: Any, r: wa.SetStatusRequest) -> Any:
    return await ctx.set_status(r.text)


async def _send(ctx: Any, r: wa.SendRequest) -> list[int]:
    ids: list[int] = await ctx.broker.send(ctx.sender, r.to, r.body, in_reply_to=r.in_reply_to)
    return ids


def _sent(r: wh.OpSendRequest, ids: list[int]) -> str:
    return f"sent to {r.to} ({len(ids)} message{'s' if len(ids) != 1 else ''})"


# --- the bindings ------------------------------------------------------------------------------------


async def _agent_status(ctx: Any, r: wh.AgentStatusRequest) -> Any:
    """Every row (``None``: host.sock answers with its cached line), or the named agents' rows."""
    if not r.names:
        return None
    views = ctx.facade.views()
    for name in r.names:
        if name not in views:
            raise UnknownAgent(name)
    return [views[name] for name in r.names]


def _agent_status_answer(ctx: Any, rows: Any) -> wh.HostResponse | bytes:
    if rows is None:
        line: bytes = ctx.agent_status_line()
        return line
    return wh.HostResponse(ok=True, agent_statuses=[wh.AgentStatusRow.from_view(v) for v in rows])


async def _urls(ctx: Any, r: Any) -> Any:
    return ctx.urls()


async def _whoami(ctx: Any, r: Any) -> Any:
    return ctx.me


# --- questions (hivecore/services/questions.py) --------------------------------------------------


def _questions(ctx: Any) -> Any:
    """The questions service of an agent or manager socket."""
    if getattr(ctx, "questions", None) is None:
        raise NotAvailable("this daemon has no questions service")
    return ctx.questions


async def _ask_operator(ctx: Any, r: wq.AskOperatorRequest) -> Any:
    return await _questions(ctx).ask(ctx.me.name, r.question, r.options, r.multi, r.ttl_seconds)


async def _ask(ctx: Any, r: wq.AskRequest) -> Any:
    return await _questions(ctx).ask(ctx.me.name, r.question, r.options, r.multi, r.ttl_seconds, to=r.to)


async def _answer(ctx: Any, r: wq.AnswerRequest) -> Any:
    return await _questions(ctx).answer(r.id, r.answer, by=ctx.me.name)


def _question_answer(q: Any) -> wa.McpResponse:
    return wa.McpResponse(ok=True, question_id=q.id)


QUESTION_BINDINGS: Mapping[str, Binding] = {
    "ask_operator": Binding(wq.AskOperatorRequest, _ask_operator, mcp=_question_answer),
    "ask": Binding(wq.AskRequest, _ask, mcp=_question_answer),
    "answer": Binding(wq.AnswerRequest, _answer),
    "questions": Binding(
        wq.QuestionsRequest,
        lambda ctx, r: ctx.facade.open_questions(),
        host=lambda ctx, rows: wh.HostResponse(ok=True, questions=rows),
    ),
    "answer_question": Binding(
        wq.AnswerRequest,
        lambda ctx, r: ctx.facade.answer_question(r.id, r.answer),
        done=lambda r, _: f"question {r.id} answered",
    ),
    "cancel_question": Binding(
        wq.CancelQuestionRequest,
        lambda ctx, r: ctx.facade.cancel_question(r.id),
        done=lambda r, _: f"question {r.id} cancelled",
    ),
}


async def _audit(ctx: Any, r: wh.AuditRequest) -> Any:
    """The rows asked for, or (``verify``) the chain's check: refused naming the first bad row."""
    if ctx.audit is None:
        raise NotAvailable("this daemon keeps no audit trail")
    if not r.verify:
        return await ctx.audit.read(since=r.since, agent=r.agent, before=r.before, limit=r.limit)
    found = await ctx.audit.verify()
    if not found.ok:
        raise Refused(
            f"audit trail: row {found.bad_seq} does not match: {found.reason} "
            f"({found.rows - 1} rows before it verified)"
        )
    start = f" from the retention checkpoint at row {found.checkpoint_seq}" if found.checkpoint_seq else ""
    return f"audit trail verified: {found.rows} rows{start}; last hash {found.last_hash or '-'}"


def _audit_answer(ctx: Any, value: Any) -> wh.HostResponse:
    if isinstance(value, str):
        return wh.HostResponse(ok=True, message=value)
    return wh.HostResponse(ok=True, audit=value)


BINDINGS: Mapping[str, Binding] = {
    **QUESTION_BINDINGS,
    "list": Binding(
        wh.ListRequest,
        lambda ctx, r: ctx.facade.agent_names(),
        host=lambda ctx, names: wh.HostResponse(ok=True, agents=names),
    ),
    "agent_status": Binding(wh.AgentStatusRequest, _agent_status, host=_agent_status_answer),
    "subscribe_agent_status": Binding(wh.SubscribeAgentStatusRequest),
    "pending": Binding(
        wh.PendingRequest,
        lambda ctx, r: ctx.facade.pending(only_pending=True) if r.only_pending else ctx.facade.pending(),
        host=lambda ctx, rows: wh.HostResponse(ok=True, approvals=rows),
    ),
    "approval": Binding(
        wh.ApprovalRequest,
        lambda ctx, r: ctx.facade.approval(r.id),
        host=lambda ctx, row: wh.HostResponse(ok=True, approvals=[row]),
    ),
    "urls": Binding(wh.UrlsRequest, _urls, host=lambda ctx, urls: wh.HostResponse(ok=True, urls=urls)),
    "operator_inbox": Binding(
        wh.OperatorInboxRequest,
        lambda ctx, r: ctx.facade.operator_inbox(r.limit),
        host=lambda ctx, rows: wh.HostResponse(
            ok=True,
            messages=[
                wh.InboxMessage(id=m.id, sender=m.sender, body=m.body, sent_at=m.sent_at) for m in rows
            ],
        ),
    ),
    "start": Binding(wh.StartRequest, _start, host=_start_answer, done=_started),
    "stop": Binding(wh.StopRequest, _stop, done=lambda r, _: f"{_scope_names(r)} stopped"),
    "restart": Binding(wh.RestartRequest, _named("restart"), done=lambda r, _: f"{r.name} restarted"),
    "rebuild": Binding(wh.RebuildRequest, _named("rebuild"), done=lambda r, _: f"{r.name} rebuilt"),
    "kill": Binding(wh.KillRequest, _named("kill"), done=lambda r, _: f"{r.name} killed"),
    "destroy": Binding(
        wh.DestroyRequest,
        lambda ctx, r: ctx.facade.destroy(r.name, purge=r.purge, **ctx.caller.kw()),
        done=lambda r, _: f"{r.name} destroyed" + (" and purged" if r.purge else "; its state is kept"),
    ),
    "spawn": Binding(wh.SpawnRequest, _named("spawn")),
    # alarms (actors/alarms.py)
    "alarms": Binding(
        wh.AlarmsRequest,
        lambda ctx, r: _alarms(ctx.facade),
        host=lambda ctx, rows: wh.HostResponse(ok=True, alarms=rows),
    ),
    "release": Binding(
        wh.ReleaseRequest,
        _named("release"),
        done=lambda r, _: f"{r.name} released; start it when you are ready",
    ),
    "purge_tombstone": Binding(
        wh.PurgeTombstoneRequest,
        _named("purge_tombstone"),
        done=lambda r, _: f"kept state of {r.name} purged",
    ),
    "login": Binding(
        wh.LoginRequest,
        lambda ctx, r: ctx.facade.login(r.name, r.secret),
        host=lambda ctx, state: wh.HostResponse(ok=True, login=state),
        done=lambda r, state: f"{r.name} logged in",
    ),
    "logout": Binding(
        wh.LogoutRequest,
        lambda ctx, r: ctx.facade.logout(r.name),
        host=lambda ctx, state: wh.HostResponse(ok=True, login=state),
        done=lambda r, state: (
            f"{r.name} logged out"
            + (f"; still logged in by {', '.join(state.via)}" if state.logged_in else "")
        ),
    ),
    "agent_env": Binding(
        wh.AgentEnvRequest,
        lambda ctx, r: ctx.facade.agent_env(r.name, r.set, r.unset),
        host=lambda ctx, keys: wh.HostResponse(ok=True, env_keys=keys),
    ),
    "usage": Binding(
        wh.UsageRequest,
        lambda ctx, r: ctx.facade.usage(r.name),
        host=lambda ctx, rows: wh.HostResponse(ok=True, usage=rows),
    ),
    "report_turn": Binding(wa.ReportTurnRequest, lambda ctx, r: ctx.report_turn(r.turn())),
    "set_paused": Binding(
        wh.SetPausedRequest, lambda ctx, r: ctx.facade.set_paused(r.name, r.paused, **ctx.caller.kw())
    ),
    "meta_update": Binding(
        wh.MetaUpdateRequest,
        _meta_update,
        done=_dashboard_meta_update,
    ),
    "request_spawn": Binding(
        wh.RequestSpawnRequest,
        lambda ctx, r: ctx.facade.request_spawn(r.name, r.description, **ctx.caller.kw()),
        host=lambda ctx, a: wh.HostResponse(ok=True, approval_id=a.id),
        mcp=_approval_answer,
        done=lambda r, a: f"spawn of {r.name} requested (approval {a.id})",
    ),
    "approve": Binding(
        wh.ApproveRequest,
        lambda ctx, r: ctx.facade.approve(r.id, **ctx.caller.kw()),
        done=lambda r, _: f"approval {r.id} approved",
    ),
    "deny": Binding(
        wh.DenyRequest,
        lambda ctx, r: ctx.facade.deny(r.id, r.note, **ctx.caller.kw()),
        done=lambda r, _: f"approval {r.id} denied",
    ),
    "request_init_config": Binding(
        wm.RequestInitConfigRequest,
        lambda ctx, r: ctx.facade.request_init_config(r.name, r.description, **ctx.caller.kw()),
        mcp=_approval_answer,
    ),
    "request_apply_commit": Binding(
        wm.RequestApplyCommitRequest,
        lambda ctx, r: ctx.facade.request_apply_commit(
            r.agent, r.commit_ref, r.description, **ctx.caller.kw()
        ),
        mcp=_approval_answer,
    ),
    "request_update_meta_inputs": Binding(
        wm.RequestUpdateMetaInputsRequest,
        lambda ctx, r: ctx.facade.request_update_meta_inputs(r.inputs, r.description, **ctx.caller.kw()),
        mcp=_approval_answer,
    ),
    "cancel_approval": Binding(
        wm.CancelApprovalRequest,
        lambda ctx, r: ctx.facade.cancel_approval(r.id, **ctx.caller.kw()),
    ),
    "op_send": Binding(
        wh.OpSendRequest,
        lambda ctx, r: ctx.facade.op_send(r.to, r.body),
        host=lambda ctx, ids: wh.HostResponse(ok=True, ids=ids),
        done=_sent,
    ),
    "send": Binding(wa.SendRequest, _send, mcp=lambda ids: wa.McpResponse(ok=True, ids=ids)),
    "recv": Binding(wa.RecvRequest),
    "ack_turn": Binding(wa.AckTurnRequest),
    "whoami": Binding(wa.WhoamiRequest, _whoami, mcp=lambda me: wa.McpResponse(ok=True, whoami=me)),
    "status": Binding(wa.StatusRequest, _status, mcp=lambda row: wa.McpResponse(ok=True, status=row)),
    "set_status": Binding(
        wa.SetStatusRequest, _set_status, mcp=lambda row: wa.McpResponse(ok=True, status=row)
    ),
    "manager_start": Binding(wm.StartRequest, _named("start")),
    "manager_restart": Binding(wm.RestartRequest, _named("restart")),
    "update": Binding(wm.UpdateRequest, _named("rebuild")),
    "get_logs": Binding(
        wh.GetLogsRequest,
        lambda ctx, r: ctx.facade.agent_log_from(r.name, r.lines, r.offset),
        host=lambda ctx, log: wh.HostResponse(ok=True, lines=log[0], log_offset=log[1]),
        mcp=lambda log: wa.McpResponse(ok=True, lines=log[0], log_offset=log[1]),
    ),
    # --- audit (issue 19) ---
    "audit": Binding(wh.AuditRequest, _audit, host=_audit_answer),
    # --- viewers (issue 18 item 6) ---
    "agent_config": Binding(
        wh.AgentConfigRequest,
        lambda ctx, r: ctx.facade.agent_config(r.name),
        host=lambda ctx, config: wh.HostResponse(ok=True, agent_config=config),
    ),
    "state_file": Binding(
        wh.StateFileRequest,
        lambda ctx, r: ctx.facade.state_file(r.name, r.path),
        host=lambda ctx, found: wh.HostResponse(ok=True, state_file=found),
    ),
    # --- loose ends (issue 18 item 4) ---
    "get_loose_ends": Binding(
        wa.GetLooseEndsRequest,
        lambda ctx, r: ctx.loose_ends(None),
        mcp=lambda rows: wa.McpResponse(ok=True, loose_ends=rows),
    ),
    "get_open_threads": Binding(
        wa.GetOpenThreadsRequest,
        lambda ctx, r: ctx.loose_ends(loose_ends.THREAD_PARTS),
        mcp=lambda rows: wa.McpResponse(ok=True, loose_ends=rows),
    ),
}


# --- reminders (issue 18 item 2) -----------------------------------------------------------------


def _scheduler(ctx: Any) -> Any:
    scheduler = getattr(ctx, "reminders", None)
    if scheduler is None:
        raise NotAvailable("this daemon runs no reminder scheduler")
    return scheduler


async def _remind(ctx: Any, r: wa.RemindRequest) -> Any:
    return await _scheduler(ctx).remind(ctx.me.name, r.message, r.delay_seconds, r.at, r.file_path)


async def _count_reminders(ctx: Any, r: wa.CountPendingRemindersRequest) -> int:
    count: int = await _scheduler(ctx).count_pending(ctx.me.name)
    return count


REMINDER_BINDINGS: Mapping[str, Binding] = {
    "remind": Binding(
        wa.RemindRequest,
        _remind,
        mcp=lambda row: wa.McpResponse(ok=True, reminder_id=row.id, due_at=row.due_at),
    ),
    "count_pending_reminders": Binding(
        wa.CountPendingRemindersRequest,
        _count_reminders,
        mcp=lambda n: wa.McpResponse(ok=True, pending_reminders=n),
    ),
    "reminders": Binding(
        wh.RemindersRequest,
        lambda ctx, r: ctx.facade.reminders(r.name, done=r.done),
        host=lambda ctx, rows: wh.HostResponse(ok=True, reminders=rows),
    ),
    "cancel_reminder": Binding(
        wh.CancelReminderRequest,
        lambda ctx, r: ctx.facade.cancel_reminder(r.id),
        done=lambda r, row: f"reminder {r.id} of {row.agent} cancelled",
    ),
}
BINDINGS = {**BINDINGS, **REMINDER_BINDINGS}


# --- scheduled prompts (issue 18 item 3) -----------------------------------------------------------


def _one_schedule(ctx: Any, row: Any) -> wh.HostResponse:
    return wh.HostResponse(ok=True, schedules=[row])


SCHEDULE_BINDINGS: Mapping[str, Binding] = {
    "schedules": Binding(
        wh.SchedulesRequest,
        lambda ctx, r: ctx.facade.schedules(done=r.done),
        host=lambda ctx, rows: wh.HostResponse(ok=True, schedules=rows),
    ),
    "schedule": Binding(
        wh.ScheduleRequest,
        lambda ctx, r: ctx.facade.schedule(r.to, r.body, r.every, r.at, r.description),
        host=_one_schedule,
        done=lambda r, row: f"schedule {row.id} created",
    ),
    "unschedule": Binding(
        wh.UnscheduleRequest,
        lambda ctx, r: ctx.facade.unschedule(r.id, r.target),
        host=_one_schedule,
        done=lambda r, row: f"schedule {r.id}" + (f": {r.target} cancelled" if r.target else " cancelled"),
    ),
    "request_schedule_prompt": Binding(
        wm.RequestSchedulePromptRequest,
        lambda ctx, r: ctx.facade.request_schedule_prompt(
            r.to, r.body, r.every, r.at, r.description, **ctx.caller.kw()
        ),
        mcp=_approval_answer,
    ),
}
BINDINGS = {**BINDINGS, **SCHEDULE_BINDINGS}


# --- the swarm (issue 20) ------------------------------------------------------------------------


async def _swarm_status(ctx: Any, r: wh.SwarmStatusRequest) -> Any:
    return ctx.facade.swarm_status()


SWARM_BINDINGS: Mapping[str, Binding] = {
    "swarm_status": Binding(
        wh.SwarmStatusRequest,
        _swarm_status,
        host=lambda ctx, status: wh.HostResponse(ok=True, swarm=status),
    ),
}
BINDINGS = {**BINDINGS, **SWARM_BINDINGS}


# --- operator reach (issue 20 item 4: actors/swarm_ops.py) ----------------------------------------


async def _swarm_op(ctx: Any, r: wh.SwarmOpRequest) -> Any:
    """One request to the far hive, as the operator asking here (the far hive audits them too)."""
    return await ctx.facade.swarm_op(r, current_actor())


SWARM_OP_BINDINGS: Mapping[str, Binding] = {
    "swarm_op": Binding(
        wh.SwarmOpRequest,
        _swarm_op,
        host=lambda ctx, reply: wh.HostResponse(ok=True, message=reply.message),
        done=lambda r, reply: reply.message or f"{spec.SWARM_OP_PAST.get(r.op, r.op)} {r.target}",
    ),
}
BINDINGS = {**BINDINGS, **SWARM_OP_BINDINGS}


def records(surface: spec.Surface) -> dict[type[Request], str]:
    """The request record → row key map of ``surface`` (a server's verb table)."""
    out: dict[type[Request], str] = {}
    for verb in spec.on(surface):
        cl = BINDINGS[verb.key].request
        if verb.cmd != cl.CMD:
            raise ValueError(f"verb {verb.key}: record {cl.__name__} has cmd {cl.CMD!r}, row {verb.cmd!r}")
        out[cl] = verb.key
    return out


@functools.cache
def request_union(surface: spec.Surface) -> Any:
    """The union of the request records ``surface`` decodes, built from the table (its rows' records,
    :func:`records`) with :class:`~hivecore.wire.request.UnknownRequest` as the fallback, registered
    with the one converter as a union tagged by ``cmd``: what the socket's decoder structures a line
    into (:func:`hivecore.wire.host.parse_request` and its manager/agent siblings).

    A runtime value, not a static type: the records are bound to their rows here, in the server
    half, which imports the wire modules, so the wire modules cannot name it at import (a cycle)
    and mypy cannot see a union built from a table. Static types use the records' base classes
    (``HostRequest``, ``McpRequest``)."""
    union: Any = Union[(*records(surface), UnknownRequest)]  # built from a tuple
    configure_tagged(union, tag_attr="CMD", tag_name="cmd", default=UnknownRequest)
    return union


def _check_bindings() -> None:
    missing = sorted(set(spec.BY_KEY) - set(BINDINGS))
    extra = sorted(set(BINDINGS) - set(spec.BY_KEY))
    if missing or extra:
        raise ValueError(f"verb table: rows without a binding {missing}, bindings without a row {extra}")
    for key, verb in spec.BY_KEY.items():
        if verb.stream != (BINDINGS[key].call is None):
            raise ValueError(f"verb {key}: a stream row has no call, and only it")


_check_bindings()

__all__ = ["BINDINGS", "DASHBOARD", "MANAGER", "OPERATOR_SOCK", "Binding", "Caller", "HiveError", "run"]
