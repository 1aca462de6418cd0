"""Dashboard app factory: the static shell, the ``/api/state`` snapshot and the SSE stream.

``/api/state`` is fetched once per page session and carries ``seq``, the bus's high-water mark at
assembly; every later change arrives on ``/api/dashboard/stream`` (``?kinds=a,b`` filters;
``Last-Event-ID`` replays from the ring or answers one ``refetch`` frame).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

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


def _sse(data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def daemon_app(daemon: Daemon) -> QuartTrio:
    """The web factory ``hive-c0re serve`` hands the daemon."""
    return create_app(daemon.coordinator, daemon.bus, daemon.supervisor, daemon.transients)


def create_app(
    coordinator: Coordinator, bus: EventBus, supervisor: Supervisor, transients: TransientRegistry
) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=str(STATIC), static_url_path="/static")

    @app.get("/")
    async def index() -> Response:
        return Response((STATIC / "index.html").read_text(), mimetype="text/html")

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

    @app.get("/api/dashboard/stream")
    async def stream() -> Response:
        kinds_arg = request.args.get("kinds")
        kinds = [k for k in kinds_arg.split(",") if k] if kinds_arg else None
        unknown = sorted(set(kinds or ()) - EVENT_KINDS)
        if unknown:
            return _error(
                400, f"unknown event kind(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENT_KINDS))}"
            )
        last_id = request.headers.get("Last-Event-ID")
        if last_id is not None and not last_id.strip().isdigit():
            return _error(400, f"Last-Event-ID must be a seq number, got {last_id[:40]!r}")
        after = int(last_id) if last_id is not None else None
        try:
            sub = bus.subscribe(kinds=kinds, after_seq=after)
        except RefetchRequired as exc:
            sub = None
            refetch = str(exc)

        async def frames() -> AsyncIterator[bytes]:
            if sub is None:
                yield _sse({"kind": "refetch", "reason": refetch})
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
