"""host.sock: the admin socket (reference §8; wire records in :mod:`hivecore.wire.host`).

One request per connection on the generic :class:`~hivecore.sockets.server.JsonLinesServer`: the
client connects, writes a line, reads the answer, and the server closes. ``subscribe_agent_status``
is the exception: an ack, then one single-row ``agent_statuses`` line per changed agent for as long
as the client stays. Its verbs are the verb table's ``host_sock`` rows (:mod:`hivecore.verbs`):
:attr:`HostSocket.verbs` maps each row's request record to its key, and :meth:`HostSocket.dispatch`
runs the row (checks, façade call, answer). The caller is the operator (``source="host_sock"``).

The socket holds explicit handles only: a :class:`HostFacade` (the coordinator), a
:class:`StatusBus` (the event bus) and a ``urls`` callable; it never reaches through them.

Scoped verbs (``start``/``stop``): an empty scope and the non-agent services (``ci``, ``forge``,
``gateway``, ``matrix``) are refused before anything happens, and so is a scope naming an unknown
agent. A scope is resolved against one ``agent_names()`` snapshot and de-duplicated (first
appearance wins), so a 64 KiB scope naming one agent thousands of times costs one lookup. The verb
is applied to every selected agent (concurrently); if some fail, the others still happen and the
answer is ``ok:false`` with every failure listed in ``error`` (for a single agent, exactly that
agent's message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from hivecore import audit
from hivecore.errors import NotAvailable, answer_for
from hivecore.models import Approval, ContainerView
from hivecore.sockets.server import IDLE_TIMEOUT, SEND_TIMEOUT, Connection, JsonLinesServer
from hivecore.verbs import bind
from hivecore.verbs.bind import EMPTY_SCOPE as EMPTY_SCOPE
from hivecore.verbs.bind import SCOPE_CONCURRENCY as SCOPE_CONCURRENCY
from hivecore.wire.events import ContainerStateChanged
from hivecore.wire.host import (
    OK,
    AgentStatusRow,
    HostRequest,
    HostResponse,
    LifecycleScope,
    RequestError,
    SubscribeAgentStatusRequest,
    Urls,
    encode_response,
    failure,
    make_urls,
    parse_request,
)

log = logging.getLogger(__name__)

DEFAULT_ADMIN_GROUP = "hive-admin"
SUBSCRIBER_BUFFER = 64


class HostFacade(Protocol):
    """What host.sock may ask of the daemon (the coordinator satisfies it); nothing else."""

    async def agent_names(self) -> list[str]: ...
    def views(self) -> Mapping[str, ContainerView]: ...
    async def approvals(self) -> list[Approval]: ...
    async def pending(self, *, only_pending: bool = ...) -> list[Approval]: ...
    async def approval(self, approval_id: int) -> Approval: ...
    async def agent_log_from(
        self, name: str, lines: int, offset: int | None = ...
    ) -> tuple[list[str], int]: ...
    async def op_send(self, to: str, body: str) -> list[int]: ...
    async def require_agent(self, name: str) -> str: ...
    async def start(self, name: str) -> str: ...
    async def stop(self, name: str, *, graceful: bool = ...) -> None: ...
    async def restart(self, name: str) -> None: ...
    async def kill(self, name: str) -> None: ...
    async def destroy(self, name: str, *, purge: bool = ...) -> None: ...
    async def spawn(self, name: str) -> None: ...
    async def set_paused(self, name: str, paused: bool) -> None: ...
    async def purge_tombstone(self, name: str) -> None: ...
    async def rebuild(self, name: str) -> None: ...
    async def request_spawn(self, name: str, description: str | None = ...) -> Approval: ...
    async def approve(self, approval_id: int) -> None: ...
    async def deny(self, approval_id: int, note: str | None = ...) -> None: ...
    async def meta_update(self, inputs: list[str]) -> object: ...


class StatusSubscription(Protocol):
    lagged: bool

    def __enter__(self) -> StatusSubscription: ...
    def __exit__(self, *exc: object) -> None: ...
    async def receive(self) -> object: ...


class StatusBus(Protocol):
    """The event bus as ``subscribe_agent_status`` uses it."""

    def subscribe(
        self, kinds: Iterable[str] | None = ..., *, buffer: int | None = ...
    ) -> StatusSubscription: ...


def live_urls(
    domain: str | None, dashboard_host: str, dashboard_port: int, home: Callable[[], str | None]
) -> Callable[[], Urls]:
    """The ``urls`` answer: with a domain, from it; without, the dashboard's real address once
    ``home()`` knows it (port 0 binds an ephemeral port), else the configured one."""

    def urls() -> Urls:
        urls = make_urls(domain, dashboard_host, dashboard_port)
        if not domain and (address := home()):
            urls = attrs.evolve(urls, home=address if address.endswith("/") else address + "/")
        return urls

    return urls


@attrs.frozen
class HostSocketStatistics:
    connections: int
    requests: int
    bad_requests: int
    idle_timeouts: int
    internal_errors: int
    subscribers: int
    dropped_subscribers: int


class HostSocket:
    """The host.sock server. Construct, then supervise :meth:`run`."""

    def __init__(
        self,
        facade: HostFacade,
        bus: StatusBus,
        path: Path,
        *,
        urls: Callable[[], Urls] = Urls,
        group: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
        audit_log: Any = None,
    ) -> None:
        self.facade = facade
        self.audit = audit_log
        """The :class:`~hivecore.services.audit.AuditLog` (``None``: verbs are not audited)."""
        self.bus = bus
        self.path = path
        self.urls = urls
        self.subscriber_buffer = subscriber_buffer
        self.server = JsonLinesServer(
            "host.sock",
            path,
            self.handle_line,
            error_line=lambda message: encode_response(failure(message)),
            group=group,
            default_group=DEFAULT_ADMIN_GROUP,
            idle_timeout=idle_timeout,
            send_timeout=send_timeout,
        )
        self.caller = bind.OPERATOR_SOCK
        self.verbs: dict[type[HostRequest], str] = bind.records("host_sock")
        """Request record → verb-table key, for every ``host_sock`` row."""
        self._bad_requests = 0
        self._internal_errors = 0
        self._subscribers = 0
        self._dropped_subscribers = 0
        self._status_cache: tuple[tuple[ContainerView, ...], bytes] | None = None

    def statistics(self) -> HostSocketStatistics:
        server = self.server.statistics()
        return HostSocketStatistics(
            connections=server.connections,
            requests=server.requests,
            bad_requests=self._bad_requests + server.oversized_lines,
            idle_timeouts=server.idle_timeouts,
            internal_errors=self._internal_errors + server.internal_errors,
            subscribers=self._subscribers,
            dropped_subscribers=self._dropped_subscribers,
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (see :meth:`JsonLinesServer.run`); ``ListenError`` if it cannot bind."""
        await self.server.run(task_status=task_status)

    # --- one request -----------------------------------------------------------------------------

    async def handle_line(self, conn: Connection, line: bytes) -> None:
        request = parse_request(line)
        if isinstance(request, RequestError):
            self._bad_requests += 1
            await conn.send(encode_response(failure(request.message)))
        elif isinstance(request, SubscribeAgentStatusRequest):
            await self._subscribe(conn)
        else:
            who = audit.socket_actor("operator", "host_sock", getattr(conn.stream, "socket", None))
            answer = await self.dispatch(request, who=who)
            await conn.send(answer if isinstance(answer, bytes) else encode_response(answer))

    async def dispatch(self, request: HostRequest, *, who: audit.Actor | None = None) -> HostResponse | bytes:
        """Answer one request; refusals and failures become ``ok:false`` answers, never exceptions.
        ``who``: the peer, for the audit trail (its uid and user name from ``SO_PEERCRED``)."""
        key = self.verbs.get(type(request))
        try:
            if key is None or bind.BINDINGS[key].call is None:
                raise NotAvailable(f"{request.CMD} is not handled by this daemon")
            value = await bind.run(key, self, request, who=who)
            return bind.BINDINGS[key].host(self, value)
        except Exception as exc:
            return failure(self._error_message(exc, request.CMD))

    def _error_message(self, exc: Exception, what: str) -> str:
        """The ``error`` text for ``exc``: a HiveError's own words; anything else is logged as a bug."""
        answer = answer_for(exc, what)
        if answer.internal:
            self._internal_errors += 1
            log.error("host.sock: %s failed", what, exc_info=exc)
        return answer.line

    def agent_status_line(self) -> bytes:
        """The encoded ``agent_status`` answer, re-encoded only when the façade's rows change.

        Rows are frozen and every rescan builds new objects, so "the same objects" means "the same
        rows"; the cache holds the objects themselves, so their ids cannot be reused.
        """
        views = tuple(self.facade.views().values())
        cached = self._status_cache
        if (
            cached is None
            or len(cached[0]) != len(views)
            or any(a is not b for a, b in zip(cached[0], views, strict=True))
        ):
            cached = self._status_cache = (views, encode_response(_status_response(views)))
        return cached[1]

    async def resolve_scope(self, scope: LifecycleScope) -> list[str]:
        """The agent names ``scope`` selects (:func:`hivecore.verbs.bind.resolve_scope`)."""
        return await bind.resolve_scope(self.facade, scope)

    # --- subscribe_agent_status ------------------------------------------------------------------

    async def _subscribe(self, conn: Connection) -> None:
        """Ack, then one single-row ``agent_statuses`` line per changed agent until the client leaves.

        Rows identical to the last one sent for that agent are skipped. The subscription ends when
        the client hangs up, a send does not complete within ``send_timeout``, or the event bus
        drops us for lagging (or closes at shutdown).
        """
        with self.bus.subscribe(kinds=[ContainerStateChanged.KIND], buffer=self.subscriber_buffer) as sub:
            if not await conn.send(encode_response(OK)):
                return
            self._subscribers += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_hangup, conn, nursery.cancel_scope)
                    last: dict[str, AgentStatusRow] = {}
                    while True:
                        try:
                            event = await sub.receive()
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            break
                        if not isinstance(event, ContainerStateChanged):
                            continue
                        row = AgentStatusRow.from_view(event.container)
                        if last.get(row.name) == row:
                            continue
                        last[row.name] = row
                        line = encode_response(HostResponse(ok=True, agent_statuses=[row]))
                        if not await conn.send(line):
                            self._dropped_subscribers += 1
                            break
                    if sub.lagged:
                        self._dropped_subscribers += 1
                        log.info("host.sock: dropped a subscriber that fell behind")
                    nursery.cancel_scope.cancel()
            finally:
                self._subscribers -= 1


def _status_response(views: Iterable[ContainerView]) -> HostResponse:
    return HostResponse(ok=True, agent_statuses=[AgentStatusRow.from_view(v) for v in views])


async def _cancel_on_hangup(conn: Connection, scope: trio.CancelScope) -> None:
    await conn.wait_hangup()
    scope.cancel()
