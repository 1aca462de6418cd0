"""``/api/dashboard/stream``: the SSE stream, and :class:`SseHub`, which owns what every stream shares.

A stream subscribes to the façade's event bus (``?kinds=a,b`` filters; ``Last-Event-ID`` replays
from the ring, or one ``refetch`` frame when the ring no longer covers the gap), sends one frame per
event and a keepalive comment every :data:`KEEPALIVE_SECONDS`. Each event's frame is encoded once
for all streams (:meth:`SseHub.frame_of`).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import trio
from quart import Blueprint, Response, current_app, request

from hivecore.coordinator import RefetchRequired
from hivecore.wire.events import EVENT_KINDS, Event, SwarmStateEvent, event_to_dict

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 1000
"""The reconnect delay the stream asks EventSource for (``retry:``)."""
FRAME_CACHE = 512
"""Encoded frames kept for the streams still sending them (the bus's ring is about this long)."""
MAX_SHOWN_KINDS = 5
_SEQ_RE = re.compile(r"[0-9]{1,18}")
"""A Last-Event-ID: ASCII digits only (``str.isdigit`` also takes ``²`` and ``٣``), and bounded."""


def sse(data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def json_error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def _cut(text: str, limit: int = 40) -> str:
    return text[:limit] + "…" if len(text) > limit else text


class SseHub:
    """The open streams (so the server can end them all) and the encoded-frame cache.

    Plain object, no task: it changes only in synchronous code on the trio thread.
    """

    def __init__(self, facade: Any) -> None:
        self.facade = facade
        self._live: set[trio.CancelScope] = set()
        self._frames: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._unsequenced: tuple[Event, bytes] | None = None

    def frame_of(self, event: Event) -> bytes:
        """The SSE frame of ``event``, encoded once for every stream that sends it (seqs are unique
        per bus, events immutable)."""
        if not event.seq:  # unsequenced (the swarm view): no id; the last one's frame is kept
            if self._unsequenced is not None and self._unsequenced[0] is event:
                return self._unsequenced[1]
            data = event_to_dict(event)
            data.pop("seq", None)
            encoded = sse(data)
            self._unsequenced = (event, encoded)
            return encoded
        frame = self._frames.get(event.seq)
        if frame is None:
            frame = self._frames[event.seq] = sse(event_to_dict(event), event_id=event.seq)
            if len(self._frames) > FRAME_CACHE:
                self._frames.popitem(last=False)
        return frame

    def clients(self) -> int:
        """Streams open now."""
        return len(self._live)

    def drop_streams(self) -> int:
        """End every open stream from the server side (its clients reconnect with Last-Event-ID)."""
        for scope in list(self._live):
            scope.cancel()
        return len(self._live)

    def _swarm_state(self, kinds: list[str] | None) -> SwarmStateEvent | None:
        """The swarm picture for a stream that asked for ``swarm_state`` (None: it did not, or no
        ``--swarm``)."""
        swarm_status = getattr(self.facade, "swarm_status", None)
        if kinds is None or SwarmStateEvent.KIND not in kinds or swarm_status is None:
            return None
        feed = getattr(getattr(self.facade, "swarm", None), "feed", None)
        cached = feed.state_event() if feed is not None else None
        if cached is not None:  # the picture the feed's next deltas apply to, its frame encoded once
            return cast(SwarmStateEvent, cached)
        from hivecore import swarm_view

        status = swarm_status()
        return None if status.state == "off" else SwarmStateEvent(swarm=swarm_view.shown(status))

    async def frames(self, kinds: list[str] | None, after: int | None) -> AsyncIterator[bytes]:
        """One stream's bytes. Subscribed here, not in the handler: a response that is never
        iterated holds nothing."""
        try:
            sub = self.facade.subscribe(kinds, after_seq=after)
            start = after if after is not None else self.facade.current_seq()  # no await in between
            swarm = self._swarm_state(kinds)  # the picture the swarm deltas that follow apply to
        except RefetchRequired as exc:
            yield sse({"kind": "refetch", "reason": str(exc)})
            return
        with sub, trio.CancelScope() as dropped:
            self._live.add(dropped)
            try:
                # the id sets the client's Last-Event-ID to where this subscription starts, so a
                # reconnect before the first event still replays everything after it
                yield f"retry: {RETRY_MS}\nid: {start}\n\n: connected\n\n".encode()
                if swarm is not None:
                    yield self.frame_of(swarm)
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
                        yield self.frame_of(event)
                if sub.lagged:
                    yield sse({"kind": "refetch", "reason": "this stream fell behind; refetch"})
            finally:
                self._live.discard(dropped)


def blueprint(hub: SseHub) -> Blueprint:
    bp = Blueprint("stream", __name__)

    @bp.route("/api/dashboard/stream", methods=["GET", "HEAD"])
    async def stream() -> Response:
        kinds_arg = request.args.get("kinds")
        kinds = [k for k in kinds_arg.split(",") if k] if kinds_arg else None
        unknown = sorted(set(kinds or ()) - EVENT_KINDS)
        if unknown:
            shown = ", ".join(_cut(k) for k in unknown[:MAX_SHOWN_KINDS])
            more = f" (+{len(unknown) - MAX_SHOWN_KINDS} more)" if len(unknown) > MAX_SHOWN_KINDS else ""
            known = ", ".join(sorted(EVENT_KINDS))
            return json_error(400, f"unknown event kind(s) {shown}{more}; known: {known}")
        last_id = request.headers.get("Last-Event-ID")
        after = None
        if last_id is not None:
            if not _SEQ_RE.fullmatch(last_id.strip()):
                return json_error(400, f"Last-Event-ID must be a seq number, got {_cut(last_id)!r}")
            after = int(last_id.strip())
        if request.method != "GET":
            # HEAD: the headers a GET would get, no body. The body must not be the endless stream:
            # it would never finish, and the connection (and its fd) would be held forever.
            head = current_app.response_class(b"", mimetype="text/event-stream")
            head.headers["Cache-Control"] = "no-cache"
            return head
        resp = current_app.response_class(hub.frames(kinds, after), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.timeout = None  # SSE only: Quart would otherwise end the stream after 60 s
        return resp

    return bp
