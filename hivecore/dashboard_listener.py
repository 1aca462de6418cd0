"""The dashboard's listening socket: slots by credentials, a deadline for the request head, the fd reserve.

Under the process runtime agents share the host's network (and its loopback address), so any agent
can connect to the dashboard port and the address does not tell it from the operator. Without
limits one agent could hold every connection hypercorn will take (or thousands: the daemon's fds,
host.sock included). :func:`serve` runs hypercorn's HTTP server on a :class:`CappedListener`
(hypercorn's own ``serve`` builds its listeners itself) and reads each connection's **request
head** itself before hypercorn sees it:

* **pending** (head not complete yet): at most :data:`MAX_PENDING`; a new connection past that
  closes the *oldest* pending one (so idle connections cannot hold the door shut: the operator's
  browser sends its head within milliseconds), and a head must be complete within
  :data:`HEAD_TIMEOUT` seconds of the accept (``408``) and fit :data:`MAX_HEAD_BYTES` (``431``). The
  deadline is for the head only: an SSE stream then lives as long as it likes (hypercorn's own
  ``read_timeout`` would kill it);
* **unauthenticated** (head complete, no valid session cookie or bearer token: the login page,
  static files): at most :data:`MAX_UNAUTHENTICATED` in flight, then ``503``; each is closed
  :data:`UNAUTHENTICATED_LIFETIME` seconds after it was admitted (the login page posts the token in
  an ``Authorization`` header, so the login itself is authenticated);
* **authenticated** (``credentials_ok`` says the ``Authorization`` header or the ``hive_session``
  cookie is valid): the other :data:`MAX_AUTHENTICATED` slots, which no unauthenticated connection
  can take;
* a connection accepted on a descriptor inside the part of the fd reserve host.sock keeps
  (:func:`hivecore.fdlimit.in_host_reserve`) gets ``503`` at once.

So at most :data:`MAX_CONNECTIONS` dashboard connections are open at any time, and whatever agents
hold, an operator with credentials gets a slot. Every refusal is a one-shot response with a body
that says why, then the connection is closed; hypercorn never sees it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Literal

import hypercorn.config
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from hivecore import fdlimit

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
"""Open dashboard connections at most, all kinds together."""
MAX_PENDING = 64
"""Connections whose request head is not complete yet; a new one past this closes the oldest."""
MAX_UNAUTHENTICATED = 64
"""Connections without valid credentials being served at once (login page, ``/login``, static)."""
MAX_AUTHENTICATED = MAX_CONNECTIONS - MAX_PENDING - MAX_UNAUTHENTICATED
"""The operator's slots (128): a browser tab holds one SSE stream and at most 6 HTTP/1.1
connections, so tens of operator tabs fit."""
HEAD_TIMEOUT = 10.0
"""Seconds from accept until the request head must be complete."""
UNAUTHENTICATED_LIFETIME = 30.0
"""Seconds an unauthenticated connection may stay open in all (its slot is then freed)."""
MAX_HEAD_BYTES = 16 << 10
"""The largest request head read (hypercorn's h11 limit, ``h11_max_incomplete_size``)."""

REFUSAL_LOG_SECONDS = 60.0
LINGER_SECONDS = 1.0
"""After a refusal is sent, the connection's write side is shut and what the client still sends is
read and dropped for up to this long before the close: closing with unread input makes the kernel
answer with a reset, which can destroy the refusal before the client reads it."""
MAX_LINGERING = 64
"""Refused connections lingering at once; past it a refusal closes at once (a flood of refusals
must not hold fds)."""

CredentialsOk = Callable[[str | None, str | None], bool]
"""``(Authorization header, hive_session cookie) -> valid``: whether a request is the operator's."""
SESSION_COOKIE = "hive_session"

Kind = Literal["authenticated", "unauthenticated"]


def _response(status: str, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nretry-after: 5\r\n\r\n"
    )
    return head.encode() + body


OVER_CAP = _response(
    "503 Service Unavailable",
    f"too many dashboard connections: the limit is {MAX_CONNECTIONS} open at once",
)
IN_RESERVE = _response(
    "503 Service Unavailable",
    "the daemon is short of file descriptors; the last ones are kept for the operator",
)
UNAUTHENTICATED_FULL = _response(
    "503 Service Unavailable",
    f"too many dashboard connections without credentials (at most {MAX_UNAUTHENTICATED} at once); "
    "the other slots are kept for requests with a session cookie or a bearer token",
)
AUTHENTICATED_FULL = _response(
    "503 Service Unavailable",
    f"too many authenticated dashboard connections: the limit is {MAX_AUTHENTICATED} open at once",
)
EVICTED = _response(
    "503 Service Unavailable",
    f"too many dashboard connections waiting to send a request (at most {MAX_PENDING}); "
    "this one was the oldest",
)
HEAD_TOO_SLOW = _response("408 Request Timeout", "the request head was not complete in time")
HEAD_TOO_BIG = _response(
    "431 Request Header Fields Too Large", f"the request head is over {MAX_HEAD_BYTES} bytes"
)


class _HeadTooBig(Exception):
    pass


async def read_head(stream: trio.abc.ReceiveStream, limit: int = MAX_HEAD_BYTES) -> bytes | None:
    """Bytes received until the request head is complete (a blank line ends it; bytes after it
    included), ``None`` at end of stream; :class:`_HeadTooBig` past ``limit`` bytes."""
    buf = bytearray()
    while True:
        if b"\r\n\r\n" in buf or b"\n\n" in buf:
            return bytes(buf)
        if len(buf) > limit:
            raise _HeadTooBig
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data


def head_credentials(head: bytes) -> tuple[str | None, str | None]:
    """``(Authorization, hive_session)`` of a request head (the first of each; ``None`` if absent)."""
    end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=len(head))
    authorization: str | None = None
    session: str | None = None
    for raw in head[:end].decode("latin-1").splitlines()[1:]:
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == "authorization" and authorization is None:
            authorization = value
        elif name == "cookie" and session is None:
            for part in value.split(";"):
                key, eq, val = part.strip().partition("=")
                if eq and key == SESSION_COOKIE:
                    session = val.strip().strip('"')
                    break
    return authorization, session


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes (the head the listener read) are received again."""

    def __init__(self, inner: trio.SocketStream, buffered: bytes) -> None:
        self.inner = inner
        self.socket = inner.socket
        self._buffered = buffered

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            n = len(self._buffered) if max_bytes is None else max_bytes
            out, self._buffered = self._buffered[:n], self._buffered[n:]
            await trio.lowlevel.checkpoint()
            return out
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Pending:
    __slots__ = ("evicted", "scope")

    def __init__(self, deadline: float) -> None:
        self.scope = trio.CancelScope(deadline=deadline)
        self.evicted = False


class CappedListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener whose connections are admitted by :meth:`admit` (see the module doc).

    ``accept`` refuses only connections inside host.sock's part of the fd reserve; :meth:`admit`
    reads the head and gives the connection a slot or refuses it; the caller reports an admitted
    connection's end with :meth:`release`. ``credentials_ok`` ``None``: every request counts as
    authenticated (no split). Counters: ``pending``, ``authenticated``, ``unauthenticated``,
    ``open_connections`` (all three), ``refused_over_cap``, ``refused_fd_reserve``, ``evicted``,
    ``head_timeouts``. ``head_timeout`` and ``unauthenticated_lifetime`` may be changed while serving
    (tests)."""

    def __init__(
        self,
        inner: trio.SocketListener,
        max_connections: int = MAX_CONNECTIONS,
        *,
        credentials_ok: CredentialsOk | None = None,
        max_pending: int = MAX_PENDING,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        head_timeout: float = HEAD_TIMEOUT,
        unauthenticated_lifetime: float = UNAUTHENTICATED_LIFETIME,
    ) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_unauthenticated = max_unauthenticated
        self.max_authenticated = max_connections - max_pending - max_unauthenticated
        self.credentials_ok = credentials_ok
        self.head_timeout = head_timeout
        self.unauthenticated_lifetime = unauthenticated_lifetime
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._next_id = 0
        self.authenticated = 0
        self.unauthenticated = 0
        self.refused_over_cap = 0
        self.refused_fd_reserve = 0
        self.evicted = 0
        self.head_timeouts = 0
        self._last_log = -REFUSAL_LOG_SECONDS
        self._lingering = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def open_connections(self) -> int:
        return len(self._pending) + self.authenticated + self.unauthenticated

    async def accept(self) -> trio.SocketStream:
        while True:
            stream = await self.inner.accept()
            if fdlimit.in_host_reserve(stream.socket.fileno()):
                self.refused_fd_reserve += 1
                await self._refuse(stream, IN_RESERVE, "inside the fd reserve")
            else:
                return stream

    async def admit(self, stream: trio.SocketStream) -> tuple[ReplayStream, Kind] | None:
        """Read ``stream``'s request head (pending slot, deadline) and give it a slot by its
        credentials: ``(a stream that replays the head, its kind)``, or ``None`` when it was
        refused (answered and closed)."""
        key = self._next_id
        self._next_id += 1
        waiting = _Pending(trio.current_time() + self.head_timeout)
        self._pending[key] = waiting
        while len(self._pending) > self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            oldest.evicted = True
            oldest.scope.cancel()
            self.evicted += 1
        head: bytes | None = None
        too_big = False
        try:
            with waiting.scope:
                head = await read_head(stream)
        except _HeadTooBig:
            too_big = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            head = None
        finally:
            self._pending.pop(key, None)
        if head is None:
            if waiting.evicted:
                await self._refuse(stream, EVICTED, "evicted while waiting for its request head")
            elif too_big:
                await self._refuse(stream, HEAD_TOO_BIG, "request head too big")
            elif waiting.scope.cancelled_caught:
                self.head_timeouts += 1
                await self._refuse(
                    stream, HEAD_TOO_SLOW, f"request head not complete in {self.head_timeout:g} s"
                )
            else:
                await trio.aclose_forcefully(stream)
            return None
        kind: Kind = "authenticated"
        if self.credentials_ok is not None and not self.credentials_ok(*head_credentials(head)):
            kind = "unauthenticated"
        if kind == "authenticated" and self.authenticated >= self.max_authenticated:
            self.refused_over_cap += 1
            await self._refuse(stream, AUTHENTICATED_FULL, "authenticated slots full")
            return None
        if kind == "unauthenticated" and self.unauthenticated >= self.max_unauthenticated:
            self.refused_over_cap += 1
            await self._refuse(stream, UNAUTHENTICATED_FULL, "unauthenticated slots full")
            return None
        if kind == "authenticated":
            self.authenticated += 1
        else:
            self.unauthenticated += 1
        return ReplayStream(stream, head), kind

    def release(self, kind: Kind) -> None:
        """One admitted connection of ``kind`` has ended."""
        if kind == "authenticated":
            self.authenticated -= 1
        else:
            self.unauthenticated -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _refuse(self, stream: trio.SocketStream, response: bytes, why: str) -> None:
        # best effort: a send buffer with room completes at once, else the peer is not reading
        sent = False
        with trio.move_on_after(0.1):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.send_all(response)
                sent = True
        if sent and self._lingering < MAX_LINGERING:
            self._lingering += 1
            try:
                await _lingering_close(stream)
            finally:
                self._lingering -= 1
        else:
            await trio.aclose_forcefully(stream)
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_SECONDS:
            self._last_log = now
            log.warning(
                "dashboard: refused a connection (%s); so far: %d over a slot limit, %d for the fd "
                "reserve, %d evicted waiting for a head, %d head timeouts (logged at most once a minute)",
                why,
                self.refused_over_cap,
                self.refused_fd_reserve,
                self.evicted,
                self.head_timeouts,
            )


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Shut the write side (the client reads the answer, then end of file), drop what the client
    still sends for up to :data:`LINGER_SECONDS` or until it closes, then close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.send_eof()
                while await stream.receive_some(1 << 14):
                    pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve(
    app: Any,
    config: hypercorn.config.Config,
    *,
    max_connections: int = MAX_CONNECTIONS,
    credentials_ok: CredentialsOk | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]],
    listeners_out: list[CappedListener] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's ``hypercorn.trio.serve`` for plain HTTP (no TLS, no QUIC), on :class:`CappedListener`
    (``credentials_ok``: how a request head's credentials are checked; see the module doc).

    Binds ``config.bind``, reports the URLs through ``task_status`` (as hypercorn does), appends the
    listeners to ``listeners_out`` and serves until ``shutdown_trigger`` returns; open connections
    then get ``config.graceful_timeout`` seconds.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners: list[CappedListener] = []
            binds: list[str] = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                inner = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(CappedListener(inner, max_connections, credentials_ok=credentials_ok))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            if listeners_out is not None:
                listeners_out.extend(listeners)

            async def handle(listener: CappedListener, stream: trio.SocketStream) -> None:
                admitted = await listener.admit(stream)
                if admitted is None:
                    return
                replay, kind = admitted
                limit = math.inf if kind == "authenticated" else listener.unauthenticated_lifetime
                try:
                    with trio.move_on_after(limit):  # an unauthenticated connection's slot is freed in time
                        state = ConnectionState(lifespan_state.copy())
                        await TCPServer(wrapped, config, context, state, replay)  # type: ignore[arg-type]
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(replay)
                    listener.release(kind)

            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(
                            partial(
                                trio.serve_listeners,
                                partial(handle, listener),
                                [listener],
                                handler_nursery=server_nursery,
                            )
                        )
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
