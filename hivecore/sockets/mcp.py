"""The manager socket and the per-agent sockets (reference §1.3, §9; wire records in
:mod:`hivecore.wire.agent` and :mod:`hivecore.wire.manager`; operator docs in ``docs/sockets.md``).

Identity is the socket: ``<runtime-dir>/manager/mcp.sock`` is the manager (inbox ``manager``, sender
``manager``); ``<runtime-dir>/agents/<n>/mcp.sock`` is agent ``n`` (inbox and sender ``n``). A request
carries no name of its own: an agent can never send as someone else, read another inbox, or reach a
verb its socket does not list (approve, deny and operator verbs exist on no agent socket at all).
The verbs are the verb table's ``manager_sock`` / ``agent_sock`` rows (:mod:`hivecore.verbs`);
``recv`` and ``ack_turn`` are answered here because they hold the connection's lease.

Connections stay open for many requests (``many_requests``). An agent socket holds at most
:data:`AGENT_MAX_CONNECTIONS` open at once, the manager's :data:`MANAGER_MAX_CONNECTIONS`; past
that, or when the daemon's descriptors are down to the operator's reserve (:mod:`hivecore.fdlimit`),
a new connection gets one error line and is closed. The first :data:`LONG_IDLE_SLOTS` connections
may idle :data:`MCP_IDLE_TIMEOUT`; later ones :data:`EXTRA_IDLE_TIMEOUT`. Each connection holds
one broker lease (:meth:`~hivecore.services.broker.Broker.open_lease`), opened on its first
``recv``/``ack_turn`` and closed when the connection ends: that is what "the harness restarted"
means to the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from hivecore import agent_users, audit, loose_ends
from hivecore.atomic import write_text_no_follow
from hivecore.config import Config
from hivecore.container_view import STATUS_FILE
from hivecore.errors import NotAvailable, Refused, UnknownAgent, answer_for
from hivecore.models import ContainerView, JobSource
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, validate_name
from hivecore.proc import Credentials
from hivecore.services.broker import Broker
from hivecore.services.questions import Questions
from hivecore.services.usage import Usage
from hivecore.sockets.server import SEND_TIMEOUT, Connection, JsonLinesServer
from hivecore.usage import Turn
from hivecore.verbs import bind
from hivecore.verbs.spec import Surface
from hivecore.wire.agent import (
    AckTurnRequest,
    LooseEnd,
    McpRequest,
    McpResponse,
    RecvRequest,
    RequestError,
    Whoami,
    encode_response,
    failure,
    parse_agent_request,
)
from hivecore.wire.host import AgentStatusRow
from hivecore.wire.manager import parse_manager_request

log = logging.getLogger(__name__)

MCP_IDLE_TIMEOUT = 600.0
"""A harness keeps its connection between turns; a turn may take minutes before its ``ack_turn``."""
EXTRA_IDLE_TIMEOUT = 60.0
"""Idle limit of a connection opened while :data:`LONG_IDLE_SLOTS` others are open (probes)."""
LONG_IDLE_SLOTS = 2
"""Connections that keep :data:`MCP_IDLE_TIMEOUT`: the harness and its MCP server."""
AGENT_MAX_CONNECTIONS = 8
"""Open connections one agent socket accepts: the harness, its MCP server and a few probes."""
MANAGER_MAX_CONNECTIONS = 16
"""Open connections the manager socket accepts."""


class AgentFacade(Protocol):
    """What an agent socket may ask of the daemon (the views actor satisfies it): its own row."""

    def rows(self) -> Mapping[str, ContainerView]: ...
    async def rescan(self, names: Collection[str] | None = ...) -> Mapping[str, ContainerView]: ...


class ManagerFacade(Protocol):
    """What the manager socket may ask of the daemon (the coordinator satisfies it)."""

    def views(self) -> Mapping[str, ContainerView]: ...
    async def start(self, name: object, *, source: JobSource = ...) -> str: ...
    async def kill(self, name: object, *, source: JobSource = ...) -> None: ...
    async def restart(self, name: object, *, source: JobSource = ...) -> None: ...
    async def rebuild(self, name: object, *, source: JobSource = ...) -> None: ...
    async def agent_log_from(
        self, name: str, lines: int, offset: int | None = ...
    ) -> tuple[list[str], int]: ...


class _LeasedServer(JsonLinesServer):
    """A :class:`JsonLinesServer` that gives every connection its own broker lease, closed with it."""

    def __init__(self, broker: Broker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broker = broker
        self._leases: dict[int, int] = {}

    def lease(self, conn: Connection) -> int:
        key = id(conn.stream)  # the stream lives as long as the connection (popped in its finally)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = self.broker.open_lease()
        return lease

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            await super().handle_connection(stream)
        finally:
            lease = self._leases.pop(id(stream), None)
            if lease is not None:
                self.broker.close_lease(lease)


class McpSocket:
    """One identity's socket, serving the verb table's rows for ``surface``."""

    facade: Any
    caller: bind.Caller

    def __init__(
        self,
        label: str,
        path: Path,
        broker: Broker,
        whoami: Whoami,
        *,
        surface: Surface,
        parse: Callable[[bytes], McpRequest | RequestError],
        group: str | None = None,
        idle_timeout: float = MCP_IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        max_connections: int = AGENT_MAX_CONNECTIONS,
        extra_idle_timeout: float = EXTRA_IDLE_TIMEOUT,
        owner: Callable[[], Credentials | None] | None = None,
        usage: Usage | None = None,
        questions: Questions | None = None,
        reminders: Any = None,
        audit_log: Any = None,
    ) -> None:
        self.label = label
        self.surface = surface
        self.audit = audit_log
        """The :class:`~hivecore.services.audit.AuditLog` (``None``: verbs are not audited)."""
        self.usage = usage
        self.questions = questions
        """The questions service (``ask_operator``, ``ask``, ``answer``)."""
        self.reminders = reminders
        """The reminder scheduler (:class:`actors.reminder_scheduler.ReminderScheduler`), if any."""
        self._owner = owner
        self.path = path
        self.broker = broker
        self.me = whoami
        self.sender = whoami.inbox
        self._parse = parse
        self.server = _LeasedServer(
            broker,
            label,
            path,
            self.handle_line,
            error_line=lambda message: encode_response(failure(message)),
            group=group,
            many_requests=True,
            idle_timeout=idle_timeout,
            send_timeout=send_timeout,
            max_connections=max_connections,
            fd_reserve=True,
            extra_idle_timeout=extra_idle_timeout,
            long_idle_slots=LONG_IDLE_SLOTS,
        )
        self.verbs: dict[type[McpRequest], str] = bind.records(surface)
        """Request record → verb-table key, for every row of this socket's surface."""
        self.bad_requests = 0
        self.internal_errors = 0

    async def report_turn(self, turn: Turn) -> None:
        """Record one turn of this socket's agent (``report_turn``)."""
        if self.usage is None:
            raise NotAvailable("report_turn: this daemon records no usage")
        await self.usage.report(self.me.name, turn)

    async def loose_ends(self, parts: tuple[str, ...] | None) -> list[LooseEnd]:
        """What is still open for this socket's identity (:mod:`hivecore.loose_ends`)."""
        requester = MANAGER_AGENT if self.me.role == "manager" else self.me.name
        party = loose_ends.Party(name=self.me.name, inbox=self.me.inbox, requester=requester)
        return await self.broker.loose_ends(party, parts)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; with an ``owner``, the socket is that uid's alone (mode 0600)."""
        if self._owner is not None:
            who = await trio.to_thread.run_sync(self._owner)
            self.server.owner = who.uid if who is not None else None
        await self.server.run(task_status=task_status)

    async def handle_line(self, conn: Connection, line: bytes) -> None:
        request = self._parse(line)
        if isinstance(request, RequestError):
            self.bad_requests += 1
            await conn.send(encode_response(failure(request.message)))
            return
        if isinstance(request, RecvRequest):
            await self._recv(conn, request)
            return
        try:
            if isinstance(request, AckTurnRequest):
                answer = McpResponse(
                    ok=True, acked=await self.broker.ack_turn(self.me.inbox, lease=self.server.lease(conn))
                )
            else:
                key = self.verbs.get(type(request))
                if key is None or bind.BINDINGS[key].call is None:
                    raise NotAvailable(f"{request.CMD} is not handled on this socket")
                who = audit.socket_actor(
                    self.caller.principal,
                    self.surface,
                    getattr(conn.stream, "socket", None),
                    agent=self.me.name,
                )
                answer = bind.BINDINGS[key].mcp(await bind.run(key, self, request, who=who))
        except Exception as exc:
            answer = failure(self._error_message(exc, request.CMD))
        await conn.send(encode_response(answer))

    def _error_message(self, exc: Exception, what: str) -> str:
        answer = answer_for(exc, what)
        if answer.internal:
            self.internal_errors += 1
            log.error("%s: %s failed", self.label, what, exc_info=exc)
        return answer.line

    async def _recv(self, conn: Connection, request: RecvRequest) -> None:
        lease = self.server.lease(conn)
        try:
            got = await self.broker.recv(
                self.me.inbox, lease=lease, wait_seconds=request.wait_seconds, max=request.max
            )
        except Exception as exc:
            await conn.send(encode_response(failure(self._error_message(exc, request.CMD))))
            return
        delivered = False
        try:
            delivered = await conn.send(encode_response(McpResponse(ok=True, messages=got)))
        finally:
            if got and not delivered:
                # the client never got them: put them back (shielded: we may be cancelled here)
                with trio.CancelScope(shield=True):
                    await self.broker.release(lease, got)


def _owner(config: Config, name: str) -> Callable[[], Credentials | None] | None:
    """Under the process runtime the socket belongs to the agent's uid (a root daemon; see
    :mod:`hivecore.agent_users`); nixos containers reach theirs through a bind mount as their root."""
    if config.runtime != "process":
        return None
    paths = config.paths
    return lambda: agent_users.credentials(paths, name)


class AgentSocket(McpSocket):
    """``<runtime-dir>/agents/<name>/mcp.sock``: send, recv, ack_turn, status, set_status, whoami."""

    def __init__(self, config: Config, name: str, broker: Broker, facade: AgentFacade, **kwargs: Any) -> None:
        self.name = validate_name(name)
        super().__init__(
            f"agents/{name}/mcp.sock",
            config.agent_socket_path(name),
            broker,
            Whoami(name=name, inbox=name, role="agent"),
            surface="agent_sock",
            parse=parse_agent_request,
            **{"owner": _owner(config, name), **kwargs},
        )
        self.config = config
        self.facade = facade
        self.caller = bind.Caller("agent", "internal")

    async def status_row(self) -> AgentStatusRow:
        """This agent's own row (the ``status`` verb)."""
        await trio.lowlevel.checkpoint()
        row = self.facade.rows().get(self.name)
        if row is None:
            raise UnknownAgent(self.name)
        return AgentStatusRow.from_view(row)

    async def set_status(self, text: str) -> AgentStatusRow | None:
        """Write this agent's status file (checked text), rescan it, its new row (``set_status``)."""
        state = self.config.paths.agent_state(self.name)
        await trio.to_thread.run_sync(write_no_follow, state, STATUS_FILE, text.strip() + "\n")
        await self.facade.rescan([self.name])
        row = self.facade.rows().get(self.name)
        return AgentStatusRow.from_view(row) if row is not None else None


class ManagerSocket(McpSocket):
    """``<runtime-dir>/manager/mcp.sock``: the common verbs, lifecycle and approval requests, logs."""

    def __init__(self, config: Config, broker: Broker, facade: ManagerFacade, **kwargs: Any) -> None:
        kwargs.setdefault("max_connections", MANAGER_MAX_CONNECTIONS)
        super().__init__(
            "manager/mcp.sock",
            config.manager_socket_path,
            broker,
            Whoami(name=MANAGER_NAME, inbox=MANAGER_AGENT, role="manager"),
            surface="manager_sock",
            parse=parse_manager_request,
            **{"owner": _owner(config, MANAGER_NAME), **kwargs},
        )
        self.config = config
        self.facade = facade
        self.caller = bind.MANAGER


# --- file helpers that never follow symlinks (the agent owns its state dir) --------------------------


def write_no_follow(directory: Path, name: str, text: str) -> None:
    """:func:`hivecore.atomic.write_text_no_follow`, its failure as :class:`Refused` naming the path."""
    try:
        write_text_no_follow(directory, name, text)
    except OSError as exc:
        raise Refused(f"cannot write {directory / name}: {exc.strerror or exc}") from None
