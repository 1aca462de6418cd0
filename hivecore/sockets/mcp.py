"""The manager socket and the per-agent sockets (reference §1.3, §9; wire records in
:mod:`hivecore.wire.agent` and :mod:`hivecore.wire.manager`; operator docs in ``docs/sockets.md``).

Identity is the socket: ``<runtime-dir>/manager/mcp.sock`` is the manager (inbox ``manager``, sender
``manager``); ``<runtime-dir>/agents/<n>/mcp.sock`` is agent ``n`` (inbox and sender ``n``). A request
carries no name of its own: an agent can never send as someone else, read another inbox, or reach a
verb its socket does not list (approve, deny and operator verbs exist on no agent socket at all).

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
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from hivecore import agent_users
from hivecore.config import Config
from hivecore.container_view import STATUS_FILE
from hivecore.errors import HiveError, NotAvailable, Refused, UnknownAgent
from hivecore.models import ContainerView, JobSource
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, is_manager, validate_name
from hivecore.proc import Credentials
from hivecore.services.broker import Broker
from hivecore.sockets.server import SEND_TIMEOUT, Connection, JsonLinesServer, unwrap
from hivecore.wire.agent import (
    MAX_STATUS,
    OK,
    AckTurnRequest,
    McpRequest,
    McpResponse,
    RecvRequest,
    RequestError,
    SendRequest,
    SetStatusRequest,
    StatusRequest,
    Whoami,
    WhoamiRequest,
    encode_response,
    failure,
    parse_agent_request,
)
from hivecore.wire.host import AgentStatusRow
from hivecore.wire.manager import (
    MAX_LOG_LINES,
    GetLogsRequest,
    KillRequest,
    RequestApplyCommitRequest,
    RequestInitConfigRequest,
    RequestSpawnRequest,
    RequestUpdateMetaInputsRequest,
    RestartRequest,
    StartRequest,
    UpdateRequest,
    parse_manager_request,
)

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
LOG_TAIL_BYTES = 256 * 1024
MAX_LOG_LINE = 2000

Verb = Callable[[Any], Awaitable[McpResponse]]


class AgentFacade(Protocol):
    """What an agent socket may ask of the daemon (the views actor satisfies it): its own row."""

    def rows(self) -> Mapping[str, ContainerView]: ...
    async def rescan(self, names: Collection[str] | None = ...) -> Mapping[str, ContainerView]: ...


class ManagerFacade(Protocol):
    """What the manager socket may ask of the daemon (the coordinator satisfies it). The approval
    verbs (``request_spawn``, ``request_init_config``, ``request_apply_commit``) are looked up at
    call time: a façade without them answers NotAvailable."""

    def views(self) -> Mapping[str, ContainerView]: ...
    async def start(self, name: object, *, source: JobSource = ...) -> None: ...
    async def kill(self, name: object, *, source: JobSource = ...) -> None: ...
    async def restart(self, name: object, *, source: JobSource = ...) -> None: ...
    async def rebuild(self, name: object, *, source: JobSource = ...) -> None: ...


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
    """One identity's socket: the common verbs (send, recv, ack_turn, whoami) plus ``extra`` verbs."""

    def __init__(
        self,
        label: str,
        path: Path,
        broker: Broker,
        whoami: Whoami,
        *,
        parse: Callable[[bytes], McpRequest | RequestError],
        group: str | None = None,
        idle_timeout: float = MCP_IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        max_connections: int = AGENT_MAX_CONNECTIONS,
        extra_idle_timeout: float = EXTRA_IDLE_TIMEOUT,
        owner: Callable[[], Credentials | None] | None = None,
    ) -> None:
        self.label = label
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
        self.verbs: dict[type[McpRequest], Verb] = {
            SendRequest: self._send,
            WhoamiRequest: self._whoami,
        }
        self.bad_requests = 0
        self.internal_errors = 0

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
                verb = self.verbs.get(type(request))
                if verb is None:
                    raise NotAvailable(f"{request.CMD} is not handled on this socket")
                answer = await verb(request)
        except Exception as exc:
            answer = failure(self._error_message(exc, request.CMD))
        await conn.send(encode_response(answer))

    def _error_message(self, exc: Exception, what: str) -> str:
        inner = unwrap(exc)
        if isinstance(inner, HiveError):
            return str(inner)
        self.internal_errors += 1
        log.error("%s: %s failed", self.label, what, exc_info=exc)
        return f"internal error during {what}: {type(inner).__name__}: {inner}"

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

    async def _send(self, request: SendRequest) -> McpResponse:
        ids = await self.broker.send(self.sender, request.to, request.body, in_reply_to=request.in_reply_to)
        return McpResponse(ok=True, ids=ids)

    async def _whoami(self, request: WhoamiRequest) -> McpResponse:
        return McpResponse(ok=True, whoami=self.me)


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
            parse=parse_agent_request,
            **{"owner": _owner(config, name), **kwargs},
        )
        self.config = config
        self.facade = facade
        self.verbs[StatusRequest] = self._status
        self.verbs[SetStatusRequest] = self._set_status

    async def _status(self, request: StatusRequest) -> McpResponse:
        row = self.facade.rows().get(self.name)
        if row is None:
            raise UnknownAgent(self.name)
        return McpResponse(ok=True, status=AgentStatusRow.from_view(row))

    async def _set_status(self, request: SetStatusRequest) -> McpResponse:
        text = request.text
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_STATUS:
            raise Refused(f"status text is {size} bytes; the limit is {MAX_STATUS}")
        state = self.config.paths.agent_state(self.name)
        await trio.to_thread.run_sync(write_no_follow, state, STATUS_FILE, text.strip() + "\n")
        await self.facade.rescan([self.name])
        row = self.facade.rows().get(self.name)
        return McpResponse(ok=True, status=AgentStatusRow.from_view(row) if row is not None else None)


class ManagerSocket(McpSocket):
    """``<runtime-dir>/manager/mcp.sock``: the common verbs, lifecycle and approval requests, logs."""

    def __init__(self, config: Config, broker: Broker, facade: ManagerFacade, **kwargs: Any) -> None:
        kwargs.setdefault("max_connections", MANAGER_MAX_CONNECTIONS)
        super().__init__(
            "manager/mcp.sock",
            config.manager_socket_path,
            broker,
            Whoami(name=MANAGER_NAME, inbox=MANAGER_AGENT, role="manager"),
            parse=parse_manager_request,
            **{"owner": _owner(config, MANAGER_NAME), **kwargs},
        )
        self.config = config
        self.facade = facade
        self.verbs.update(
            {
                KillRequest: self._lifecycle("kill", lambda n: facade.kill(n, source="manager")),
                StartRequest: self._lifecycle("start", lambda n: facade.start(n, source="manager")),
                RestartRequest: self._lifecycle("restart", lambda n: facade.restart(n, source="manager")),
                UpdateRequest: self._lifecycle("update", lambda n: facade.rebuild(n, source="manager")),
                RequestSpawnRequest: self._request_spawn,
                RequestInitConfigRequest: self._request_init_config,
                RequestApplyCommitRequest: self._request_apply_commit,
                RequestUpdateMetaInputsRequest: self._request_update_meta_inputs,
                GetLogsRequest: self._get_logs,
            }
        )

    @staticmethod
    def _lifecycle(verb: str, fn: Callable[[str], Awaitable[None]]) -> Verb:
        async def run(request: Any) -> McpResponse:
            name = validate_name(request.name)
            if is_manager(name):
                raise Refused(f"{verb} refuses the manager itself; ask the operator")
            await fn(name)
            return OK

        return run

    def _approval_verb(self, verb: str) -> Callable[..., Awaitable[object]]:
        fn = getattr(self.facade, verb, None)
        if fn is None:
            raise NotAvailable(f"{verb} is not available yet: this daemon has no approval flow")
        return fn  # type: ignore[no-any-return]

    async def _request_spawn(self, request: RequestSpawnRequest) -> McpResponse:
        fn = self._approval_verb("request_spawn")
        return _approval_answer(await fn(request.name, request.description, source="manager"))

    async def _request_init_config(self, request: RequestInitConfigRequest) -> McpResponse:
        fn = self._approval_verb("request_init_config")
        return _approval_answer(await fn(request.name, source="manager"))

    async def _request_apply_commit(self, request: RequestApplyCommitRequest) -> McpResponse:
        fn = self._approval_verb("request_apply_commit")
        return _approval_answer(
            await fn(request.agent, request.commit_ref, request.description, source="manager")
        )

    async def _request_update_meta_inputs(self, request: RequestUpdateMetaInputsRequest) -> McpResponse:
        raise NotAvailable("request_update_meta_inputs is not available yet: it arrives with the meta flake")

    async def _get_logs(self, request: GetLogsRequest) -> McpResponse:
        name = validate_name(request.name)
        if request.lines < 1:
            raise Refused("lines must be at least 1")
        if self.config.runtime != "process":
            raise NotAvailable(
                "get_logs reads the process runtime's agent.log; journal logs are not available yet"
            )
        if name not in self.facade.views():
            raise UnknownAgent(name)
        log_file = self.config.paths.agent_run(name) / "agent.log"
        lines = await trio.to_thread.run_sync(tail_no_follow, log_file, min(request.lines, MAX_LOG_LINES))
        return McpResponse(ok=True, lines=lines)


def _approval_answer(result: object) -> McpResponse:
    """The façade's answer to a ``request_*``: an approval (with ``id``), an id, or nothing."""
    approval_id = (
        result if isinstance(result, int) and not isinstance(result, bool) else getattr(result, "id", None)
    )
    return McpResponse(ok=True, approval_id=approval_id if isinstance(approval_id, int) else None)


# --- file helpers that never follow symlinks (the agent owns its state dir) --------------------------


def write_no_follow(directory: Path, name: str, text: str) -> None:
    """Atomically replace ``directory/name`` with ``text``; refuses a symlinked ``directory`` and never
    writes through a symlink planted at ``name`` (rename replaces the link itself)."""
    try:
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise Refused(f"cannot write {directory / name}: {exc.strerror or exc}") from None
    tmp = f".{name}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dirfd)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError as exc:
        raise Refused(f"cannot write {directory / name}: {exc.strerror or exc}") from None
    finally:
        os.close(dirfd)


def tail_no_follow(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (at most :data:`LOG_TAIL_BYTES` read, each line capped);
    a symlink is refused, a missing file is an empty log."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - LOG_TAIL_BYTES))
        data = f.read(LOG_TAIL_BYTES)
    text = data.decode("utf-8", "replace").splitlines()
    if size > LOG_TAIL_BYTES and text:
        text = text[1:]  # the first line was cut
    return [line[:MAX_LOG_LINE] for line in text[-lines:]]
