"""The one JSON-lines Unix socket server (host.sock now; the manager and agent sockets later).

The server owns everything that is the same for every socket: binding (through
:func:`~hivecore.unix_listener.open_unix_listener`), the accept loop, framing, timeouts and error
lines. What a line *means* is the request handler's business: it gets a :class:`Connection` and one
complete line and sends its answer(s) with :meth:`Connection.send`.

Robustness rules (the daemon is never affected by a client):

* a client that sends no complete line within ``idle_timeout`` gets an error line and is closed;
* a line longer than ``max_line`` gets an error line and the connection is closed (framing is lost);
* a handler that raises is logged and, if it had not answered yet, answered with an error line; it
  never escapes into the accept loop;
* sends are bounded by ``send_timeout``: a client that does not read is closed, never waited for;
* with ``max_connections``, a connection past the cap gets one error line naming the cap and is
  closed at once; with ``fd_reserve``, so is one accepted inside the daemon's fd reserve
  (:mod:`hivecore.fdlimit`): one client cannot hold more than its share of descriptors;
* with ``extra_idle_timeout``, connections accepted while ``long_idle_slots`` others are open wait
  at most that long for a line (probes and leftovers go; the harness's own connections stay).

With ``many_requests`` false (host.sock) the server reads one line, lets the handler answer and
closes; anything after the first line is ignored. With ``many_requests`` true it keeps reading lines
(each one waited for at most ``idle_timeout``) until the client closes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from hivecore import fdlimit
from hivecore.errors import HiveError
from hivecore.sockets.framing import MAX_LINE, LineBuffer, LineTooLong
from hivecore.unix_listener import SocketInUse, open_unix_listener, resolve_group

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
RECEIVE_SIZE = 16 * 1024


class ListenError(HiveError):
    """The socket could not be bound (in use by a live daemon, not a socket, no such group, …)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class Connection:
    """One client connection, as a request handler sees it."""

    def __init__(
        self, stream: trio.abc.Stream, send_timeout: float, name: str, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.stream = stream
        self.send_timeout = send_timeout
        self.name = name
        self.idle_timeout = idle_timeout
        """How long this connection may wait between request lines."""
        self.sent = 0
        """Lines sent so far (the server answers a failed handler only if it sent nothing)."""

    async def send(self, line: bytes) -> bool:
        """Send one complete line (ending in ``\\n``); False if the client did not take it within
        ``send_timeout`` (the server then closes the connection). A client that went away raises
        ``trio.BrokenResourceError``; the server treats that as a normal hang-up."""
        with trio.move_on_after(self.send_timeout):
            await self.stream.send_all(line)
            self.sent += 1
            return True
        log.info("%s: client did not read its answer within %g s; closing", self.name, self.send_timeout)
        return False

    async def wait_hangup(self) -> None:
        """Discard whatever the client sends; return when it hangs up (for streaming answers)."""
        try:
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


RequestHandler = Callable[[Connection, bytes], Awaitable[None]]
"""Answers one request line (without its newline) on a connection."""
ErrorLine = Callable[[str], bytes]
"""Encodes an error message as this socket's error answer line (ending in ``\\n``)."""


@attrs.define
class ServerStatistics:
    """Counters since start; :meth:`JsonLinesServer.statistics` hands out copies."""

    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    idle_timeouts: int = 0
    oversized_lines: int = 0
    internal_errors: int = 0
    refused_over_cap: int = 0
    refused_fd_reserve: int = 0


def unwrap(exc: BaseException) -> BaseException:
    """The exception inside single-member groups (a nursery wraps what its tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class JsonLinesServer:
    """A Unix socket serving ``handler`` per request line. Construct, then supervise :meth:`run`."""

    def __init__(
        self,
        name: str,
        path: Path,
        handler: RequestHandler,
        *,
        error_line: ErrorLine,
        group: str | None = None,
        default_group: str | None = None,
        many_requests: bool = False,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        max_line: int = MAX_LINE,
        max_connections: int | None = None,
        fd_reserve: bool = False,
        extra_idle_timeout: float | None = None,
        long_idle_slots: int = 0,
    ) -> None:
        self.name = name
        self.path = path
        self.handler = handler
        self.error_line = error_line
        self.group = group
        self.default_group = default_group
        self.many_requests = many_requests
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_line = max_line
        self.max_connections = max_connections
        self.fd_reserve = fd_reserve
        self.extra_idle_timeout = extra_idle_timeout
        self.long_idle_slots = long_idle_slots
        self.owner: int | None = None
        """A uid to hand the socket file to (mode 0600: that user and root connect; nobody else)."""
        self._stats = ServerStatistics()
        self._last_refusal_log = -math.inf

    def statistics(self) -> ServerStatistics:
        return attrs.evolve(self._stats)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`path` and serve until cancelled; ``task_status.started()`` once listening.

        Raises :class:`ListenError` when a live process already answers on the path, the path is
        not a socket, the group does not exist, or binding fails. On cancellation the connection
        handlers are cancelled with it and the socket file is unlinked (unless a successor replaced it).
        """
        try:
            gid = resolve_group(self.group, default=self.default_group)
            if self.owner is None:
                bound = await open_unix_listener(self.path, gid=gid)
            else:
                bound = await open_unix_listener(self.path, gid=gid, uid=self.owner, mode=0o600)
        except LookupError as exc:
            raise ListenError(f"{self.name}: {exc.args[0]}", self.path) from exc
        except SocketInUse as exc:  # its message names the path and what is there
            raise ListenError(f"{self.name}: {exc}", self.path) from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ListenError(f"{self.name}: cannot listen on {self.path}: {reason}", self.path) from exc
        try:
            log.info("%s listening on %s", self.name, self.path)
            task_status.started()
            await trio.serve_listeners(self.handle_connection, [bound.listener])
        finally:
            bound.close()

    def _refusal(self, stream: trio.abc.Stream) -> str | None:
        """Why a just-accepted connection is refused (cap, fd reserve), or ``None``."""
        if self.max_connections is not None and self._stats.open_connections >= self.max_connections:
            self._stats.refused_over_cap += 1
            return (
                f"too many connections to {self.name}: the limit is {self.max_connections} open at "
                "once; close one and retry"
            )
        sock = getattr(stream, "socket", None)
        if self.fd_reserve and sock is not None and fdlimit.in_reserve(sock.fileno()):
            self._stats.refused_fd_reserve += 1
            return (
                f"{self.name}: the daemon is short of file descriptors (the last "
                f"{fdlimit.reserve_for(fdlimit.soft_limit())} are kept for the operator); retry later"
            )
        return None

    async def _refuse(self, stream: trio.abc.Stream, reason: str) -> None:
        """One error line (if the client takes it at once), then close; logged at most once a minute."""
        now = trio.current_time()
        if now - self._last_refusal_log >= 60.0:
            self._last_refusal_log = now
            s = self._stats
            log.warning(
                "%s: refused a connection (%s); refused so far: %d over the cap, %d for the fd reserve",
                self.name,
                reason,
                s.refused_over_cap,
                s.refused_fd_reserve,
            )
        with trio.move_on_after(1.0):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(self.error_line(reason))
        await trio.aclose_forcefully(stream)

    def _idle_timeout_for_new(self) -> float:
        if self.extra_idle_timeout is not None and self._stats.open_connections >= self.long_idle_slots:
            return min(self.idle_timeout, self.extra_idle_timeout)
        return self.idle_timeout

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one connection; never raises except ``Cancelled`` (the daemon is shutting down)."""
        self._stats.connections += 1
        if (reason := self._refusal(stream)) is not None:
            await self._refuse(stream, reason)
            return
        idle_timeout = self._idle_timeout_for_new()
        self._stats.open_connections += 1
        conn = Connection(stream, self.send_timeout, self.name, idle_timeout)
        try:
            async with stream:
                await self._serve(conn)
        except Exception as exc:
            # (a send inside a handler's nursery arrives wrapped in an ExceptionGroup)
            if isinstance(unwrap(exc), trio.BrokenResourceError | trio.ClosedResourceError):
                log.debug("%s: client went away", self.name)
                return
            self._stats.internal_errors += 1
            log.exception("%s: connection handler failed", self.name)
        finally:
            self._stats.open_connections -= 1

    async def _serve(self, conn: Connection) -> None:
        buf = LineBuffer(self.max_line)
        while True:
            line: bytes | None = None
            with trio.move_on_after(conn.idle_timeout) as idle:
                try:
                    line = await self._receive_line(conn.stream, buf)
                except LineTooLong:
                    self._stats.oversized_lines += 1
                    await conn.send(self.error_line(f"request line exceeds {self.max_line} bytes"))
                    return
            if idle.cancelled_caught:
                self._stats.idle_timeouts += 1
                await conn.send(self.error_line(f"no complete request line within {conn.idle_timeout:g} s"))
                return
            if line is None:
                return  # the client closed (possibly without a word)
            self._stats.requests += 1
            if not await self._answer(conn, line) or not self.many_requests:
                return

    async def _answer(self, conn: Connection, line: bytes) -> bool:
        """Run the handler on one line; False when the connection should close."""
        sent_before = conn.sent
        try:
            await self.handler(conn, line)
        except Exception as exc:
            if isinstance(unwrap(exc), trio.BrokenResourceError | trio.ClosedResourceError):
                raise
            self._stats.internal_errors += 1
            log.error("%s: request handler failed", self.name, exc_info=exc)
            if conn.sent == sent_before:
                inner = unwrap(exc)
                await conn.send(self.error_line(f"internal error: {type(inner).__name__}: {inner}"))
            return False
        return True

    async def _receive_line(self, stream: trio.abc.Stream, buf: LineBuffer) -> bytes | None:
        while (line := buf.next_line()) is None:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:  # EOF: an unterminated last line still counts
                rest = buf.take_rest()
                return rest if rest.strip() else None
            buf.feed(data)
        return line
