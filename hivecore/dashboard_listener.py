"""The dashboard's listening socket: a cap on open connections and the daemon's fd reserve, at accept.

Under the process runtime agents share the host's network, so any agent can connect to the dashboard
port. Without a cap one agent could hold thousands of (slowloris) connections open in hypercorn and
exhaust the daemon's descriptors, host.sock included. :func:`serve` runs hypercorn's HTTP server on a
:class:`CappedListener` (hypercorn's own ``serve`` builds its listeners itself); a connection
accepted while

* :data:`MAX_CONNECTIONS` dashboard connections are open, or
* its descriptor is inside the part of the fd reserve host.sock keeps
  (:func:`hivecore.fdlimit.in_host_reserve`)

gets a one-shot ``503`` and is closed before hypercorn ever sees it. A connection counts from its
accept until hypercorn's handler for it returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

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
"""Open dashboard connections at most. A browser tab holds one SSE stream and at most 6 HTTP/1.1
connections, so tens of operator tabs fit well within it."""

REFUSAL_LOG_SECONDS = 60.0


def _response(reason: str) -> bytes:
    body = f"{reason}\n".encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nretry-after: 5\r\n\r\n"
    )
    return head.encode() + body


OVER_CAP = _response(f"too many dashboard connections: the limit is {MAX_CONNECTIONS} open at once")
IN_RESERVE = _response("the daemon is short of file descriptors; the last ones are kept for the operator")


class CappedListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener whose ``accept`` refuses connections past ``max_connections`` or inside the
    part of the fd reserve host.sock keeps (a best-effort 503, then closed). The caller reports each
    admitted connection's end with :meth:`release`. Counters: ``open_connections``,
    ``refused_over_cap``, ``refused_fd_reserve``."""

    def __init__(self, inner: trio.SocketListener, max_connections: int = MAX_CONNECTIONS) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_over_cap = 0
        self.refused_fd_reserve = 0
        self._last_log = -REFUSAL_LOG_SECONDS

    async def accept(self) -> trio.SocketStream:
        while True:
            stream = await self.inner.accept()
            if self.open_connections >= self.max_connections:
                self.refused_over_cap += 1
                await self._refuse(stream, OVER_CAP, "over the cap")
            elif fdlimit.in_host_reserve(stream.socket.fileno()):
                self.refused_fd_reserve += 1
                await self._refuse(stream, IN_RESERVE, "inside the fd reserve")
            else:
                self.open_connections += 1
                return stream

    def release(self) -> None:
        """One admitted connection has ended."""
        self.open_connections -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _refuse(self, stream: trio.SocketStream, response: bytes, why: str) -> None:
        # a fresh socket's send buffer is empty: the send completes at once or fails
        with trio.move_on_after(0.1):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(response)
        await trio.aclose_forcefully(stream)
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_SECONDS:
            self._last_log = now
            log.warning(
                "dashboard: refused a connection (%s; cap %d); refused so far: %d over the cap, "
                "%d for the fd reserve (logged at most once a minute)",
                why,
                self.max_connections,
                self.refused_over_cap,
                self.refused_fd_reserve,
            )


async def serve(
    app: Any,
    config: hypercorn.config.Config,
    *,
    max_connections: int = MAX_CONNECTIONS,
    shutdown_trigger: Callable[[], Awaitable[object]],
    listeners_out: list[CappedListener] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's ``hypercorn.trio.serve`` for plain HTTP (no TLS, no QUIC), on :class:`CappedListener`.

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
                listeners.append(CappedListener(inner, max_connections))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            if listeners_out is not None:
                listeners_out.extend(listeners)

            async def handle(listener: CappedListener, stream: trio.SocketStream) -> None:
                try:
                    state = ConnectionState(lifespan_state.copy())
                    await TCPServer(wrapped, config, context, state, stream)  # type: ignore[arg-type]
                finally:
                    listener.release()

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
