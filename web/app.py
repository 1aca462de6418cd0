"""Dashboard app factory: the static shell, the ``/api/state`` snapshot and the SSE stream.

``/api/state`` is fetched once per page session and carries ``seq``, the bus's high-water mark at
assembly; every later change arrives on ``/api/dashboard/stream`` (``?kinds=a,b`` filters;
``Last-Event-ID`` replays from the ring or answers one ``refetch`` frame).
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
from quart import Response, request
from quart.asgi import ASGIHTTPConnection
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from actors.event_bus import EventBus, RefetchRequired
from actors.supervisor import Supervisor
from actors.transients import TransientRegistry
from hivecore.coordinator import Coordinator
from hivecore.wire.converter import converter
from hivecore.wire.events import EVENT_KINDS, event_to_dict

if TYPE_CHECKING:
    from hivecore.daemon import Daemon

STATIC = Path(__file__).parent / "static"
KEEPALIVE_SECONDS = 15.0
MAX_SHOWN_KINDS = 5
_SEQ_RE = re.compile(r"[0-9]{1,18}")
"""A Last-Event-ID: ASCII digits only (``str.isdigit`` also takes ``²`` and ``٣``), and bounded."""


def _sse(data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def _cut(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text[:limit] + "…" if len(text) > limit else text


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(_cut(text, limit))


def _client_closes(scope: Any) -> bool:
    """The request asks hypercorn (h11) to close the connection after the response."""
    tokens = {
        t.strip().lower()
        for name, value in scope.get("headers", ())
        if name.lower() == b"connection"
        for t in value.decode("latin-1").split(",")
    }
    return "close" in tokens or (scope.get("http_version") == "1.0" and "keep-alive" not in tokens)


class _HTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's connection, minus one cancellation.

    quart-trio cancels the request on ``http.disconnect``; hypercorn sends that disconnect from
    inside the response's last send, right before it closes a ``Connection: close`` socket. The
    cancel aborted the close, and the socket stayed open until the client gave up. So once the last
    send of such a response has begun, the request is left to end. (A keep-alive response is still
    cancelled there, as before: the cancel also keeps hypercorn from arming its keep-alive timer,
    which would hold the socket up to 5 s after the client has left.) :meth:`__call__` mirrors
    quart-trio 0.12's, with the one condition added.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        request = self._create_request_from_scope(send)
        closes = _client_closes(self.scope)
        ending = False

        async def send_tracked(message: Any) -> None:
            nonlocal ending
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                ending = closes
            await send(message)

        async def messages(nursery: trio.Nursery) -> None:
            await ASGIHTTPConnection.handle_messages(self, request, receive)
            if not ending:  # the client left (an SSE tab closed), or a keep-alive response ended
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(messages, nursery)
            nursery.start_soon(self.handle_request, nursery, request, send_tracked)


def daemon_app(daemon: Daemon) -> QuartTrio:
    """The web factory ``hive-c0re serve`` hands the daemon."""
    return create_app(daemon.coordinator, daemon.bus, daemon.supervisor, daemon.transients)


def create_app(
    coordinator: Coordinator, bus: EventBus, supervisor: Supervisor, transients: TransientRegistry
) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.asgi_http_class = _HTTPConnection
    # the static shell is a few small files, read once: no request opens a file, so a client that
    # leaves mid-response (or a HEAD) cannot strand one, and no odd name reaches the filesystem
    static_files = {
        p.name: (p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream")
        for p in STATIC.iterdir()
        if p.is_file()
    }

    @app.get("/")
    async def index() -> Response:
        return Response(static_files["index.html"][0], mimetype="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "seq": bus.current_seq()}

    @app.get("/api/state")
    async def state() -> dict[str, Any]:
        seq = bus.current_seq()  # taken first: every later change has a larger seq
        return {
            "seq": seq,
            "containers": converter.unstructure(list(coordinator.views().values())),
            "tombstones": converter.unstructure(coordinator.tombstones()),
            "transients": {
                n: {"transient_kind": t.kind, "since_unix": t.since_unix}
                for n, t in transients.snapshot().items()
            },
            "rebuild_queue": converter.unstructure(coordinator.jobs()),
            "approvals": converter.unstructure(await coordinator.approvals()),
            "actors": [attrs.asdict(c) for c in supervisor.statistics()],
        }

    @app.get("/static/<path:filename>")
    async def static(filename: str) -> Response:
        found = static_files.get(filename)
        if found is None:
            return _error(404, f"no static file {_shown(filename)}")
        body, mimetype = found
        return Response(body, mimetype=mimetype, headers={"Cache-Control": "no-cache"})

    @app.route("/api/dashboard/stream", methods=["GET", "HEAD"])
    async def stream() -> Response:
        kinds_arg = request.args.get("kinds")
        kinds = [k for k in kinds_arg.split(",") if k] if kinds_arg else None
        unknown = sorted(set(kinds or ()) - EVENT_KINDS)
        if unknown:
            shown = ", ".join(_cut(k) for k in unknown[:MAX_SHOWN_KINDS])
            more = f" (+{len(unknown) - MAX_SHOWN_KINDS} more)" if len(unknown) > MAX_SHOWN_KINDS else ""
            known = ", ".join(sorted(EVENT_KINDS))
            return _error(400, f"unknown event kind(s) {shown}{more}; known: {known}")
        last_id = request.headers.get("Last-Event-ID")
        after = None
        if last_id is not None:
            if not _SEQ_RE.fullmatch(last_id.strip()):
                return _error(400, f"Last-Event-ID must be a seq number, got {_shown(last_id)}")
            after = int(last_id.strip())
        if request.method != "GET":
            # HEAD: the headers a GET would get, no body. The body must not be the endless stream:
            # it would never finish, and the connection (and its fd) would be held forever.
            head = app.response_class(b"", mimetype="text/event-stream")
            head.headers["Cache-Control"] = "no-cache"
            return head

        async def frames() -> AsyncIterator[bytes]:
            # subscribed here, not in the handler: a response that is never iterated holds nothing
            try:
                sub = bus.subscribe(kinds=kinds, after_seq=after)
            except RefetchRequired as exc:
                yield _sse({"kind": "refetch", "reason": str(exc)})
                return
            with sub:
                yield b": connected\n\n"
                while True:
                    event = None
                    with trio.move_on_after(KEEPALIVE_SECONDS):
                        try:
                            event = await sub.receive()
                        except trio.EndOfChannel:
                            break
                    if event is None:
                        yield b": keepalive\n\n"
                    else:
                        yield _sse(event_to_dict(event), event_id=event.seq)
                if sub.lagged:
                    yield _sse({"kind": "refetch", "reason": "this stream fell behind; reload /api/state"})

        resp = app.response_class(frames(), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.timeout = None  # SSE only: Quart would otherwise end the stream after 60 s
        return resp

    return app
