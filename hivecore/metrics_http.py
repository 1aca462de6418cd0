"""``--metrics-listen``: ``/metrics`` on a second, loopback-only listener without auth.

For a local Prometheus (or node-exporter's textfile-less setups) that cannot hold the operator token.
What it shows, every local process can read: under the process runtime agents share the host's
loopback, so they can read it too (agent names, inbox depths, costs; nothing they could act on).
The dashboard's ``/metrics`` (bearer token) is the one to use when that matters.

* only loopback binds (:func:`hivecore.config.parse_listen`), and only a loopback ``Host`` header is
  answered (a DNS-rebound name in a browser gets ``403``), as the dashboard without auth does;
* ``GET``/``HEAD /metrics`` only; everything else gets ``404``/``405``;
* a rendering is reused for :data:`MAX_AGE` seconds (:meth:`hivecore.metrics.Metrics.scrape`), so
  however fast a client asks, the store sees at most one scrape's read a second from here;
* connections go through the dashboard's capped listener (:mod:`hivecore.dashboard_listener`: a
  deadline for the request head, a cap on open connections, the fd reserve).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from hivecore.config import is_loopback, parse_listen
from hivecore.errors import HiveError
from hivecore.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_AGE = 1.0
"""Seconds a rendering is reused for requests on this listener."""
MAX_CONNECTIONS = 256
"""The capped listener's total (its pending and unauthenticated shares are the dashboard's)."""

Scrape = Callable[[float], Awaitable[bytes]]


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def asgi_app(scrape: Scrape) -> Callable[..., Awaitable[None]]:
    """A bare ASGI app serving ``/metrics`` from ``scrape(max_age)``."""

    async def respond(send: Any, status: int, body: bytes, content_type: str = "text/plain") -> None:
        headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"host"), "")
        if not is_loopback(_host_name(host)):
            await respond(send, 403, b"this listener answers only a loopback Host (127.0.0.1, [::1])\n")
            return
        if scope.get("path") != "/metrics":
            await respond(send, 404, b"only /metrics is served here\n")
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await respond(send, 405, b"only GET and HEAD\n")
            return
        body = await scrape(MAX_AGE) if method == "GET" else b""
        await respond(send, 200, body, CONTENT_TYPE)

    return app


async def serve(
    listen: str,
    scrape: Scrape,
    *,
    urls_out: list[str] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``listen`` (``HOST:PORT``, loopback) until cancelled; ``task_status``
    gets the bound URLs. A bind failure is a :class:`HiveError` naming ``--metrics-listen``."""
    import hypercorn.config

    from hivecore import dashboard_listener

    host, port = parse_listen(listen)
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    never = trio.Event()
    bound = False
    try:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(
                    dashboard_listener.serve,
                    asgi_app(scrape),
                    config,
                    max_connections=MAX_CONNECTIONS,
                    shutdown_trigger=never.wait,
                )
            )
            if urls_out is not None:
                urls_out[:] = urls
            log.info("metrics (no auth, loopback) on %s", ", ".join(u + "/metrics" for u in urls))
            bound = True
            task_status.started(urls)
    except* OSError as group:
        if bound:
            raise
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup):  # trio's nurseries nest the bind's OSError
            exc = exc.exceptions[0]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HiveError(f"cannot bind --metrics-listen {listen}: {reason}") from None
