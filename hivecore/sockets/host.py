"""host.sock: the admin socket (reference §8; wire records in :mod:`hivecore.wire.host`).

One request per connection on the generic :class:`~hivecore.sockets.server.JsonLinesServer`: the
client connects, writes a line, reads the answer, and the server closes. ``subscribe_agent_status``
is the exception: an ack, then one single-row ``agent_statuses`` line per changed agent for as long
as the client stays. Every verb is one entry of :attr:`HostSocket.verbs` (request class → handler).

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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from hivecore.errors import HiveError, NotAvailable, Refused
from hivecore.models import Approval, ContainerView
from hivecore.sockets.server import IDLE_TIMEOUT, SEND_TIMEOUT, Connection, JsonLinesServer, unwrap
from hivecore.wire.events import ContainerStateChanged
from hivecore.wire.host import (
    OK,
    AgentStatusRequest,
    AgentStatusRow,
    ApproveRequest,
    DenyRequest,
    DestroyRequest,
    HostRequest,
    HostResponse,
    KillRequest,
    LifecycleScope,
    ListRequest,
    MetaUpdateRequest,
    PendingRequest,
    PurgeTombstoneRequest,
    RebuildRequest,
    RequestError,
    RequestSpawnRequest,
    RestartRequest,
    SetPausedRequest,
    SpawnRequest,
    StartRequest,
    StopRequest,
    SubscribeAgentStatusRequest,
    Urls,
    UrlsRequest,
    encode_response,
    failure,
    make_urls,
    parse_request,
)

log = logging.getLogger(__name__)

DEFAULT_ADMIN_GROUP = "hive-admin"
SUBSCRIBER_BUFFER = 64
SCOPE_CONCURRENCY = 16
EMPTY_SCOPE = "scope selects nothing; name agents or set agents=true"


class HostFacade(Protocol):
    """What host.sock may ask of the daemon (the coordinator satisfies it); nothing else."""

    async def agent_names(self) -> list[str]: ...
    def views(self) -> Mapping[str, ContainerView]: ...
    async def approvals(self) -> list[Approval]: ...
    async def pending(self) -> list[Approval]: ...
    async def require_agent(self, name: str) -> str: ...
    async def start(self, name: str) -> None: ...
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


Verb = Callable[[Any], Awaitable[HostResponse | bytes]]
"""A verb's handler: the decoded request in, the answer (a record, or an already encoded line) out."""


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
    ) -> None:
        self.facade = facade
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
        self.verbs: dict[type[HostRequest], Verb] = {
            ListRequest: self._list,
            AgentStatusRequest: self._agent_status,
            StartRequest: self._start,
            StopRequest: self._stop,
            RestartRequest: self._named(lambda name: self.facade.restart(name)),
            KillRequest: self._named(lambda name: self.facade.kill(name)),
            DestroyRequest: self._destroy,
            SpawnRequest: self._named(lambda name: self.facade.spawn(name)),
            SetPausedRequest: self._set_paused,
            PurgeTombstoneRequest: self._named(lambda name: self.facade.purge_tombstone(name)),
            PendingRequest: self._pending,
            UrlsRequest: self._urls,
            RebuildRequest: self._named(lambda name: self.facade.rebuild(name)),
            RequestSpawnRequest: self._request_spawn,
            ApproveRequest: self._approve,
            DenyRequest: self._deny,
            MetaUpdateRequest: self._meta_update,
        }
        """Every verb but ``subscribe_agent_status`` (a stream, see :meth:`handle_line`)."""
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
            answer = await self.dispatch(request)
            await conn.send(answer if isinstance(answer, bytes) else encode_response(answer))

    async def dispatch(self, request: HostRequest) -> HostResponse | bytes:
        """Answer one request; refusals and failures become ``ok:false`` answers, never exceptions."""
        verb = self.verbs.get(type(request))
        try:
            if verb is None:
                raise NotAvailable(f"{request.CMD} is not handled by this daemon")
            return await verb(request)
        except Exception as exc:
            return failure(self._error_message(exc, request.CMD))

    def _error_message(self, exc: Exception, what: str) -> str:
        """The ``error`` text for ``exc``: a HiveError's own words; anything else is logged as a bug."""
        inner = unwrap(exc)
        if isinstance(inner, HiveError):
            return str(inner)
        self._internal_errors += 1
        log.error("host.sock: %s failed", what, exc_info=exc)
        return f"internal error during {what}: {type(inner).__name__}: {inner}"

    # --- verbs -----------------------------------------------------------------------------------

    async def _list(self, request: ListRequest) -> HostResponse:
        return HostResponse(ok=True, agents=await self.facade.agent_names())

    async def _agent_status(self, request: AgentStatusRequest) -> bytes:
        return self.agent_status_line()

    async def _start(self, request: StartRequest) -> HostResponse:
        return await self._apply(request.CMD, await self.resolve_scope(request.scope), self.facade.start)

    async def _stop(self, request: StopRequest) -> HostResponse:
        async def stop(name: str) -> None:
            await self.facade.stop(name, graceful=request.graceful)

        return await self._apply(request.CMD, await self.resolve_scope(request.scope), stop)

    async def _destroy(self, request: DestroyRequest) -> HostResponse:
        await self.facade.destroy(request.name, purge=request.purge)
        return OK

    async def _meta_update(self, request: MetaUpdateRequest) -> HostResponse:
        await self.facade.meta_update(request.inputs)
        return OK

    async def _set_paused(self, request: SetPausedRequest) -> HostResponse:
        await self.facade.set_paused(request.name, request.paused)
        return OK

    async def _pending(self, request: PendingRequest) -> HostResponse:
        return HostResponse(ok=True, approvals=await self.facade.pending())

    async def _request_spawn(self, request: RequestSpawnRequest) -> HostResponse:
        await self.facade.request_spawn(request.name, request.description)
        return OK

    async def _approve(self, request: ApproveRequest) -> HostResponse:
        await self.facade.approve(request.id)
        return OK

    async def _deny(self, request: DenyRequest) -> HostResponse:
        await self.facade.deny(request.id, request.note)
        return OK

    async def _urls(self, request: UrlsRequest) -> HostResponse:
        return HostResponse(ok=True, urls=self.urls())

    @staticmethod
    def _named(fn: Callable[[str], Awaitable[None]]) -> Verb:
        """A verb that calls ``fn(request.name)`` and answers ok."""

        async def verb(request: Any) -> HostResponse:
            await fn(request.name)
            return OK

        return verb

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
        """The agent names ``scope`` selects, validated against one ``agent_names()`` snapshot.

        Refuses empty scopes, services, and any name that is not an agent (with the façade's own
        message: ``require_agent`` is asked only about a name missing from the snapshot).
        """
        services = scope.services()
        if services:
            raise Refused(
                f"scope selects {', '.join(services)}: this hive runs no such service; "
                "only agents (agent_names / agents=true) can be started or stopped"
            )
        if not scope.agents and not scope.agent_names:
            raise Refused(EMPTY_SCOPE)
        known = await self.facade.agent_names()
        selected = dict.fromkeys(known) if scope.agents else {}
        present = set(known)
        for name in dict.fromkeys(scope.agent_names):
            if name not in present:
                name = await self.facade.require_agent(name)  # raises the precise refusal
            selected.setdefault(name)
        return list(selected)

    async def _apply(self, verb: str, names: list[str], fn: Callable[[str], Awaitable[None]]) -> HostResponse:
        """Run ``fn`` on every name (at most :data:`SCOPE_CONCURRENCY` at once); collect failures."""
        failures: dict[str, str] = {}
        limiter = trio.CapacityLimiter(SCOPE_CONCURRENCY)

        async def one(name: str) -> None:
            async with limiter:
                try:
                    await fn(name)
                except Exception as exc:
                    failures[name] = self._error_message(exc, f"{verb} {name}")

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name, name=f"host.sock {verb} {name}")
        if not failures:
            return OK
        if len(names) == 1:
            return failure(failures[names[0]])
        listed = "; ".join(f"{n}: {failures[n]}" for n in names if n in failures)
        return failure(f"{verb} failed for {len(failures)} of {len(names)} agents: {listed}")

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
