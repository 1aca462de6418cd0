"""Dashboard app factory: the static shell, the ``/api/state`` snapshot and the SSE stream.

``/api/state`` is fetched once per page session and carries ``seq``, the bus's high-water mark at
assembly; every later change arrives on ``/api/dashboard/stream`` (``?kinds=a,b`` filters;
``Last-Event-ID`` replays from the ring or answers one ``refetch`` frame).
"""

from __future__ import annotations

import collections
import errno
import inspect
import json
import logging
import mimetypes
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import trio
from quart import Response, request
from quart.asgi import ASGIHTTPConnection
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from actors.event_bus import EventBus, RefetchRequired
from actors.supervisor import Supervisor
from actors.transients import TransientRegistry
from hivecore import agentfs
from hivecore.config import StatePaths, is_loopback
from hivecore.coordinator import Coordinator
from hivecore.errors import HiveError
from hivecore.models import ContainerView
from hivecore.names import validate_name
from hivecore.services.broker import OPERATOR, Broker
from hivecore.store import Store
from hivecore.wire.converter import converter
from hivecore.wire.events import EVENT_KINDS, Event, event_to_dict
from web import actions
from web import snapshot as snap
from web.auth import CSRF_HEADER, SESSION_COOKIE, Auth, Principal, ensure_token

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from hivecore.daemon import Daemon

STATIC = Path(__file__).parent / "static"
KEEPALIVE_SECONDS = 15.0
RETRY_MS = 1000
FRAME_CACHE = 512
"""Encoded frames kept for the streams still sending them (the bus's ring is about this long)."""
"""The reconnect delay the stream asks EventSource for (``retry:``)."""
MAX_SHOWN_KINDS = 5
MAX_BODY = 256 * 1024
"""Largest request body (a form); more is a 413."""
HISTORY = 50
"""Resolved approvals in the snapshot (the most recent ones)."""
LOG_LINES = 200
LOG_TAIL_BYTES = 256 * 1024
MAX_LOG_LINE = 4096
JSON = "application/json"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SEQ_RE = re.compile(r"[0-9]{1,18}")
"""A Last-Event-ID: ASCII digits only (``str.isdigit`` also takes ``²`` and ``٣``), and bounded."""


def _maybe_call(value: Any) -> Any:
    """``value()`` when it is callable (a method the façade may grow), else ``value``."""
    return value() if callable(value) else value


def _any_stale(coordinator: Coordinator, views: list[ContainerView]) -> bool:
    found = _maybe_call(getattr(coordinator, "any_stale", None))
    if isinstance(found, bool):
        return found
    return any(v.needs_update for v in views)


def _tail(run_process: Path, name: str, lines: int) -> list[str]:
    """The last ``lines`` lines of ``run/process/<name>/agent.log``, no symlink followed anywhere below
    ``run/process``, a FIFO never blocked on, at most :data:`LOG_TAIL_BYTES` read."""
    try:
        dir_fd = agentfs.open_dir(run_process, name)
    except FileNotFoundError:
        return []
    try:
        try:
            fd = os.open("agent.log", _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return []
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise agentfs.NotRegularFile(errno.EINVAL, "agent.log is not a regular file")
        f.seek(max(0, st.st_size - LOG_TAIL_BYTES))
        data = f.read(LOG_TAIL_BYTES)
    text = data.decode("utf-8", "replace").splitlines()
    if st.st_size > LOG_TAIL_BYTES and text:
        text = text[1:]  # the first line was cut
    return [line[:MAX_LOG_LINE] for line in text[-lines:]]


def _sse(data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def _throttled(retry_after: int) -> Response:
    resp = _error(429, f"too many failed logins from this address; retry in {retry_after} s")
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def _failed_login(auth: Auth, client: str) -> None:
    """Count and log one failed login of ``client`` (its address; never what it sent)."""
    count = auth.throttle.failed(client)
    if count < auth.throttle.limit:
        log.warning("dashboard: failed login from %s (%d in %g s)", client, count, auth.throttle.window)
    elif count == auth.throttle.limit:
        log.warning(
            "dashboard: failed login from %s (%d in %g s): its logins are refused (429) until the "
            "window has room",
            client,
            count,
            auth.throttle.window,
        )


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
    """The web factory ``hive-c0re serve`` hands the daemon.

    It writes the operator token on the first start; the app's ``hive_login_hint`` is what the
    daemon logs once the dashboard is bound.
    """
    config = daemon.config
    token: str | None = None
    created = False
    if config.dashboard_auth == "token":
        token, created = ensure_token(config.paths.operator_token)
    auth = Auth(config.dashboard_auth, token)
    app = create_app(
        daemon.coordinator,
        daemon.bus,
        daemon.supervisor,
        daemon.transients,
        auth=auth,
        broker=daemon.broker,
        store=daemon.store,
        paths=config.paths,
    )

    def login_hint(base_url: str) -> str:
        # never the token, nor a URL holding it: logs are read by more people than the token file
        if config.dashboard_auth == "none":
            return f"dashboard: {base_url}/ (no auth: loopback only; every local process is the operator)"
        where = config.paths.operator_token
        first = "first start: wrote the operator token to" if created else "the operator token is in"
        return (
            f"dashboard login: {base_url}/login ({first} {where}; "
            f"`hive-c0re login-url --state-dir {config.state_dir} --url {base_url}` prints a login URL)"
        )

    app.hive_login_hint = login_hint  # type: ignore[attr-defined]
    return app


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:7000`` → ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _port(host: str) -> str:
    tail = host.rpartition("]")[2] if host.startswith("[") else host
    return tail.rpartition(":")[2] if ":" in tail else "80"


def _is_public(path: str) -> bool:
    """Routes served without auth: the static shell, the login page and the health probe."""
    return path in ("/", "/healthz", "/login", "/favicon.ico") or path.startswith("/static/")


def create_app(
    coordinator: Coordinator,
    bus: EventBus,
    supervisor: Supervisor,
    transients: TransientRegistry,
    *,
    auth: Auth,
    broker: Broker,
    store: Store,
    paths: StatePaths,
) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.asgi_http_class = _HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # the static shell is a few small files, read once: no request opens a file, so a client that
    # leaves mid-response (or a HEAD) cannot strand one, and no odd name reaches the filesystem
    static_files = {
        p.name: (p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream")
        for p in STATIC.iterdir()
        if p.is_file()
    }
    # the kinds this server streams, for the client to ask only for those (server data, not agents')
    kinds_meta = ",".join(sorted(EVENT_KINDS)).encode()
    index_html = static_files["index.html"][0].replace(b"@@EVENT_KINDS@@", kinds_meta)

    live_streams: set[trio.CancelScope] = set()
    frames_cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def frame_of(event: Event) -> bytes:
        """The SSE frame of ``event``, encoded once for every stream that sends it (seqs are unique
        per bus, events immutable)."""
        frame = frames_cache.get(event.seq)
        if frame is None:
            frame = frames_cache[event.seq] = _sse(event_to_dict(event), event_id=event.seq)
            if len(frames_cache) > FRAME_CACHE:
                frames_cache.popitem(last=False)
        return frame

    def drop_streams() -> int:
        """End every open stream from the server side (its clients reconnect with Last-Event-ID)."""
        for scope in list(live_streams):
            scope.cancel()
        return len(live_streams)

    app.hive_drop_streams = drop_streams  # type: ignore[attr-defined]

    def principal() -> Principal | None:
        return auth.principal(request.headers.get("Authorization"), request.cookies.get(SESSION_COOKIE))

    @app.before_request
    async def gate() -> Response | None:
        if request.method == "POST" and request.path in ("/login", "/logout"):
            return None  # they check what they need themselves
        if auth.mode == "none" and not is_loopback(_host_name(request.host)):
            # no login: only a loopback Host, so a DNS-rebound name cannot reach the API
            return _error(
                403, f"this dashboard has no auth; use it as http://127.0.0.1:{_port(request.host)}/"
            )
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if auth.mode == "token" and scheme.lower() == "bearer":
            client = request.remote_addr or "?"
            if wait := auth.throttle.retry_after(client):
                return _throttled(wait)
            if not auth.token_ok(bearer):
                _failed_login(auth, client)
        who = principal()
        if _is_public(request.path) and request.method != "POST":
            return None
        if who is None:
            return _error(401, "not logged in: open /login, or send Authorization: Bearer <operator token>")
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            origin = request.headers.get("Origin")
            if origin is not None and who != "bearer" and urlsplit(origin).netloc != request.host:
                return _error(403, "cross-origin request refused")
            given = request.headers.get(CSRF_HEADER)
            if given is None and request.mimetype == "application/x-www-form-urlencoded":
                given = (await request.form).get("csrf")
            if not auth.csrf_ok(who, request.cookies.get(SESSION_COOKIE), given):
                return _error(403, f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
        return None

    @app.after_request
    async def no_store(resp: Response) -> Response:
        if request.path.startswith("/api/") and request.path != "/api/dashboard/stream":
            resp.headers["Cache-Control"] = "no-store"  # operator data stays out of caches
        return resp

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        if status == 413:
            return _error(413, f"request body too large (limit {MAX_BODY} bytes)")
        return _error(status, exc.description or exc.name)

    @app.get("/")
    async def index() -> Response:
        return Response(index_html, mimetype="text/html")

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(b"", status=204)

    @app.get("/login")
    async def login_page() -> Response:
        return Response(static_files["login.html"][0], mimetype="text/html")

    @app.post("/login")
    async def login() -> Response:
        if auth.mode == "none":
            return Response(json.dumps({"ok": True, "message": "no auth on this dashboard"}), mimetype=JSON)
        client = request.remote_addr or "?"
        if wait := auth.throttle.retry_after(client):
            return _throttled(wait)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        if given is None and request.mimetype == "application/x-www-form-urlencoded":
            given = (await request.form).get("token")
        sid = auth.login(given)
        if sid is None:
            _failed_login(auth, client)
            return _error(403, "wrong operator token")
        resp = Response(json.dumps({"ok": True, "message": "logged in"}), mimetype=JSON)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")
        return resp

    @app.post("/logout")
    async def logout() -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        who = principal()
        if who == "session" and not auth.csrf_ok(who, sid, request.headers.get(CSRF_HEADER)):
            return _error(403, f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
        auth.logout(sid)
        resp = Response(json.dumps({"ok": True, "message": "logged out"}), mimetype=JSON)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "seq": bus.current_seq()}

    @app.get("/api/state")
    async def state() -> dict[str, Any]:
        # everything cached is read synchronously, right after seq: no event can fall between
        # them. What needs an await (sqlite, git diffs, statvfs) is read later and may be newer
        # than seq; the events after seq that the client replays onto it are idempotent upserts.
        seq = bus.current_seq()
        views = list(coordinator.views().values())
        out: dict[str, Any] = {
            "seq": seq,
            "containers": converter.unstructure(views),
            "tombstones": converter.unstructure(coordinator.tombstones()),
            "transients": {
                n: {"transient_kind": t.kind, "since_unix": t.since_unix}
                for n, t in transients.snapshot().items()
            },
            "rebuild_queue": converter.unstructure(coordinator.jobs()),
            "actors": [attrs.asdict(c) for c in supervisor.statistics()],
            "meta_update_running": bool(_maybe_call(getattr(coordinator, "meta_update_running", False))),
            "any_stale": _any_stale(coordinator, views),
            "csrf": auth.csrf_for(principal(), request.cookies.get(SESSION_COOKIE)),
            "event_kinds": sorted(EVENT_KINDS),
        }
        meta_inputs: Any = _maybe_call(getattr(coordinator, "meta_inputs", None)) or []
        if inspect.isawaitable(meta_inputs):
            meta_inputs = await meta_inputs
        out["meta_inputs"] = converter.unstructure(meta_inputs)
        approvals = await coordinator.pending()
        resolved = [a for a in approvals if a.status != "pending"][-HISTORY:]
        out["approvals"] = converter.unstructure([a for a in approvals if a.status == "pending"] + resolved)
        out["messages"], out["operator_inbox"] = await store.call(snap.messages)
        if inbox := out["operator_inbox"]:
            # the operator has read the inbox up to here: ack it (frees the senders' quota; the
            # vacuum reclaims the rows)
            await broker.ack_read(OPERATOR, max(m["id"] for m in inbox))
        out["server_warnings"] = await trio.to_thread.run_sync(snap.server_warnings, paths.root)
        return out

    @app.get("/api/logs/<name>")
    async def logs(name: str) -> Response:
        try:
            valid = validate_name(name)
        except HiveError as exc:
            return _error(400, str(exc))
        if valid not in coordinator.views():
            return _error(404, f'agent "{valid}" is not managed by this hive')
        try:
            lines = await trio.to_thread.run_sync(_tail, paths.run_process, valid, LOG_LINES)
        except OSError as exc:
            return _error(409, f"cannot read the log of {valid}: {exc.strerror or exc}")
        return Response(json.dumps({"ok": True, "name": valid, "lines": lines}), mimetype=JSON)

    actions.register(app, coordinator, broker)

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
                start = after if after is not None else bus.current_seq()  # no await in between
            except RefetchRequired as exc:
                yield _sse({"kind": "refetch", "reason": str(exc)})
                return
            with sub, trio.CancelScope() as dropped:
                live_streams.add(dropped)
                try:
                    # the id sets the client's Last-Event-ID to where this subscription starts, so
                    # a reconnect before the first event still replays everything after it
                    yield f"retry: {RETRY_MS}\nid: {start}\n\n: connected\n\n".encode()
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
                            yield frame_of(event)
                    if sub.lagged:
                        yield _sse({"kind": "refetch", "reason": "this stream fell behind; refetch"})
                finally:
                    live_streams.discard(dropped)

        resp = app.response_class(frames(), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.timeout = None  # SSE only: Quart would otherwise end the stream after 60 s
        return resp

    return app
