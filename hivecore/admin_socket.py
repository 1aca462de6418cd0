"""host.sock: the admin socket server (reference §8; wire records in :mod:`hivecore.wire.host`).

One JSON object per line each way and one request per connection: the client connects, writes a
line, reads the answer, and the server closes. ``subscribe_agent_status`` is the exception: an ack,
then one single-row ``agent_statuses`` line per changed agent for as long as the client stays.

Robustness rules (the daemon is never affected by a client):

* framing is sans-IO (:class:`LineBuffer`) and capped at :data:`MAX_LINE` bytes; a client that
  sends no complete line within ``idle_timeout`` (10 s) gets an error line and is closed;
* every bad request (non-JSON, unknown ``cmd``, a missing or ill-typed field, an over-long line) is
  answered with one ``{"version":1,"ok":false,"error":…}`` line;
* a handler error is logged and answered; it never escapes into the accept loop;
* sends are bounded by ``send_timeout``; a subscriber that stops reading is dropped (the event bus
  drops it too when its buffer fills), so a slow reader never back-pressures the daemon.

Scoped verbs (``start``/``stop``): an empty scope and the non-agent services (``ci``, ``forge``,
``gateway``, ``matrix``) are refused before anything happens, and so is a scope naming an unknown
agent. Otherwise the verb is applied to every selected agent (concurrently); if some fail, the
others still happen and the answer is ``ok:false`` with every failure listed in ``error`` (for a
single agent, exactly that agent's message).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.event_bus import EventBus
from hivecore.config import Config
from hivecore.coordinator import Coordinator
from hivecore.errors import HiveError, NotAvailable, Refused
from hivecore.models import ContainerView
from hivecore.unix_listener import open_unix_listener, resolve_group
from hivecore.wire.events import ContainerStateChanged
from hivecore.wire.host import (
    MAX_LINE,
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
    PendingRequest,
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
IDLE_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
SUBSCRIBER_BUFFER = 64
SCOPE_CONCURRENCY = 16
EMPTY_SCOPE = "scope selects nothing; name agents or set agents=true"
_RECEIVE_SIZE = 16 * 1024


class LineTooLong(Exception):
    pass


class LineBuffer:
    """Sans-IO framing: :meth:`feed` bytes, take complete lines with :meth:`next_line`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without its ``\\n``, or None; :class:`LineTooLong` past the cap."""
        i = self._buf.find(b"\n", self._scanned)
        if i < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_line:
                raise LineTooLong
            return None
        if i > self.max_line:
            raise LineTooLong
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        self._scanned = 0
        return line

    def rest(self) -> bytes:
        """What was fed after the last complete line (an unterminated last line at EOF)."""
        return bytes(self._buf)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_message(exc: Exception, what: str) -> str:
    """The ``error`` text for ``exc``: a HiveError's own words; anything else is logged as a bug."""
    inner = _unwrap(exc)
    if isinstance(inner, HiveError):
        return str(inner)
    log.error("host.sock: %s failed", what, exc_info=exc)
    return f"internal error during {what}: {type(inner).__name__}: {inner}"


@attrs.define
class AdminSocketStatistics:
    connections: int = 0
    requests: int = 0
    bad_requests: int = 0
    idle_timeouts: int = 0
    internal_errors: int = 0
    subscribers: int = 0
    dropped_subscribers: int = 0


class AdminSocket:
    """The host.sock server. Construct, then supervise :meth:`run`.

    ``home_url`` (optional) returns the dashboard's real address (e.g. after binding port 0); by
    default it is derived from the config.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        path: Path,
        *,
        bus: EventBus,
        config: Config,
        group: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
        home_url: Callable[[], str | None] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.bus = bus
        self.config = config
        self.path = path
        self.group = group
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.subscriber_buffer = subscriber_buffer
        self.home_url = home_url
        self._stats = AdminSocketStatistics()
        self._status_cache: tuple[tuple[ContainerView, ...], bytes] | None = None

    def statistics(self) -> AdminSocketStatistics:
        return attrs.evolve(self._stats)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`path` and serve until cancelled; ``task_status.started()`` once listening.

        Refuses (raises :class:`HiveError`) when a live daemon already answers on the path, the
        path is not a socket, or the group does not exist. On cancellation the connection handlers
        are cancelled with it and the socket file is unlinked (unless a successor replaced it).
        """
        try:
            gid = resolve_group(self.group, default=DEFAULT_ADMIN_GROUP)
            bound = await open_unix_listener(self.path, gid=gid)
        except (LookupError, OSError) as exc:  # SocketInUse, chgrp/bind failures: say so, no traceback
            raise HiveError(f"host.sock: {exc}") from exc
        try:
            log.info("host.sock listening on %s", self.path)
            task_status.started()
            await trio.serve_listeners(self.handle_connection, [bound.listener])
        finally:
            bound.close()

    # --- one connection ----------------------------------------------------------------------------

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one connection; never raises except ``Cancelled`` (the daemon is shutting down)."""
        self._stats.connections += 1
        try:
            async with stream:
                await self._serve(stream)
        except Exception as exc:
            # (a send inside the subscriber's nursery arrives wrapped in an ExceptionGroup)
            if isinstance(_unwrap(exc), trio.BrokenResourceError | trio.ClosedResourceError):
                log.debug("host.sock: client went away")
                return
            self._stats.internal_errors += 1
            log.exception("host.sock: connection handler failed")

    async def _serve(self, stream: trio.abc.Stream) -> None:
        line: bytes | None = None
        with trio.move_on_after(self.idle_timeout) as idle:
            try:
                line = await self._receive_line(stream)
            except LineTooLong:
                self._stats.bad_requests += 1
                await self._send(stream, failure(f"request line exceeds {MAX_LINE} bytes"))
                return
        if idle.cancelled_caught:
            self._stats.idle_timeouts += 1
            await self._send(stream, failure(f"no complete request line within {self.idle_timeout:g} s"))
            return
        if line is None:
            return  # connected and left without a word
        request = parse_request(line)
        if isinstance(request, RequestError):
            self._stats.bad_requests += 1
            await self._send(stream, failure(request.message))
            return
        self._stats.requests += 1
        if isinstance(request, SubscribeAgentStatusRequest):
            await self._subscribe(stream)
            return
        if isinstance(request, AgentStatusRequest):  # the hot verb: sidebars poll it
            await self._send(stream, self.agent_status_line())
            return
        await self._send(stream, await self.dispatch(request))

    async def _receive_line(self, stream: trio.abc.Stream) -> bytes | None:
        buf = LineBuffer()
        while (line := buf.next_line()) is None:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:  # EOF: an unterminated last line still counts
                rest = buf.rest()
                return rest if rest.strip() else None
            buf.feed(data)
        return line

    async def _send(self, stream: trio.abc.Stream, response: HostResponse | bytes) -> bool:
        """Send one answer line; False if the client did not take it within ``send_timeout``."""
        line = response if isinstance(response, bytes) else encode_response(response)
        with trio.move_on_after(self.send_timeout):
            await stream.send_all(line)
            return True
        log.info("host.sock: client did not read its answer within %g s; closing", self.send_timeout)
        return False

    async def _subscribe(self, stream: trio.abc.Stream) -> None:
        """Ack, then one single-row ``agent_statuses`` line per changed agent until the client leaves.

        Rows identical to the last one sent for that agent are skipped. The subscription ends when
        the client hangs up, a send does not complete within ``send_timeout``, or the event bus
        drops us for lagging (or closes at shutdown).
        """
        bus = self.bus
        with bus.subscribe(kinds=[ContainerStateChanged.KIND], buffer=self.subscriber_buffer) as sub:
            if not await self._send(stream, OK):
                return
            self._stats.subscribers += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_wait_hangup, stream, nursery.cancel_scope)
                    last: dict[str, AgentStatusRow] = {}
                    while True:
                        # receive(), not `async for`: leaving an async generator early leaves it
                        # for the garbage collector to finalize
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
                        if not await self._send(stream, HostResponse(ok=True, agent_statuses=[row])):
                            self._stats.dropped_subscribers += 1
                            break
                    if sub.lagged:
                        self._stats.dropped_subscribers += 1
                        log.info("host.sock: dropped a subscriber that fell behind")
                    nursery.cancel_scope.cancel()
            finally:
                self._stats.subscribers -= 1

    def agent_status_line(self) -> bytes:
        """The encoded ``agent_status`` answer, re-encoded only when the coordinator's rows change.

        Rows are frozen and every rescan builds new objects, so "the same objects" means "the same
        rows"; the cache holds the objects themselves, so their ids cannot be reused.
        """
        views = tuple(self.coordinator.views().values())
        cached = self._status_cache
        if (
            cached is None
            or len(cached[0]) != len(views)
            or any(a is not b for a, b in zip(cached[0], views, strict=True))
        ):
            cached = self._status_cache = (views, encode_response(_status_response(views)))
        return cached[1]

    # --- verbs -------------------------------------------------------------------------------------

    async def dispatch(self, request: HostRequest) -> HostResponse:
        """Answer one request; refusals and failures become ``ok:false`` answers, never exceptions."""
        try:
            return await self._dispatch(request)
        except Exception as exc:
            if not isinstance(_unwrap(exc), HiveError):
                self._stats.internal_errors += 1
            return failure(_error_message(exc, request.CMD))

    async def _dispatch(self, request: HostRequest) -> HostResponse:
        coord = self.coordinator
        match request:
            case ListRequest():
                return HostResponse(ok=True, agents=await coord.agent_names())
            case AgentStatusRequest():
                return _status_response(coord.views().values())
            case StartRequest(scope=scope):
                return await self._apply(request.CMD, await self.resolve_scope(scope), coord.start)
            case StopRequest(scope=scope, graceful=graceful):

                async def stop(name: str) -> None:
                    await coord.stop(name, graceful=graceful)

                return await self._apply(request.CMD, await self.resolve_scope(scope), stop)
            case RestartRequest(name=name):
                await coord.restart(name)
            case KillRequest(name=name):
                await coord.kill(name)
            case DestroyRequest(name=name, purge=purge):
                await coord.destroy(name, purge=purge)
            case SpawnRequest(name=name):
                await coord.spawn(name)
            case SetPausedRequest(name=name, paused=paused):
                await coord.set_paused(name, paused)
            case PendingRequest():
                return HostResponse(ok=True, approvals=await coord.approvals())
            case UrlsRequest():
                return HostResponse(ok=True, urls=self.urls())
            case RebuildRequest():
                raise NotAvailable(
                    "rebuild is not available yet: it arrives with the meta flake and the rebuild queue; "
                    "use restart to restart an agent without rebuilding"
                )
            case RequestSpawnRequest():
                raise NotAvailable(
                    "request_spawn is not available yet: it arrives with the approval flow; "
                    "spawn creates an agent directly (no approval)"
                )
            case ApproveRequest() | DenyRequest():
                raise NotAvailable(f"{request.CMD} is not available yet: it arrives with the approval flow")
            case _:
                raise NotAvailable(f"{request.CMD} is not handled by this daemon")
        return OK

    def urls(self) -> Urls:
        config = self.config
        urls = make_urls(config.domain, config.dashboard_host, config.dashboard_port)
        if not config.domain and self.home_url is not None and (home := self.home_url()):
            urls = attrs.evolve(urls, home=home if home.endswith("/") else home + "/")
        return urls

    async def resolve_scope(self, scope: LifecycleScope) -> list[str]:
        """The agent names ``scope`` selects, validated; refuses empty scopes, services and unknowns."""
        services = scope.services()
        if services:
            raise Refused(
                f"scope selects {', '.join(services)}: this hive runs no such service; "
                "only agents (agent_names / agents=true) can be started or stopped"
            )
        if not scope.agents and not scope.agent_names:
            raise Refused(EMPTY_SCOPE)
        names = await self.coordinator.agent_names() if scope.agents else []
        for name in scope.agent_names:
            valid = await self.coordinator.require_agent(name)
            if valid not in names:
                names.append(valid)
        return names

    async def _apply(self, verb: str, names: list[str], fn: Callable[[str], Awaitable[None]]) -> HostResponse:
        """Run ``fn`` on every name (at most :data:`SCOPE_CONCURRENCY` at once); collect failures."""
        failures: dict[str, str] = {}
        limiter = trio.CapacityLimiter(SCOPE_CONCURRENCY)

        async def one(name: str) -> None:
            async with limiter:
                try:
                    await fn(name)
                except Exception as exc:
                    failures[name] = _error_message(exc, f"{verb} {name}")

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name, name=f"host.sock {verb} {name}")
        if not failures:
            return OK
        if len(names) == 1:
            return failure(failures[names[0]])
        listed = "; ".join(f"{n}: {failures[n]}" for n in names if n in failures)
        return failure(f"{verb} failed for {len(failures)} of {len(names)} agents: {listed}")


def _status_response(views: Iterable[ContainerView]) -> HostResponse:
    return HostResponse(ok=True, agent_statuses=[AgentStatusRow.from_view(v) for v in views])


async def _wait_hangup(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """Discard anything the subscriber sends; cancel ``scope`` when it hangs up."""
    try:
        while await stream.receive_some(_RECEIVE_SIZE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
