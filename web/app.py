"""Dashboard app factory: auth, the static shell, and one blueprint per concern.

* :mod:`web.session` — ``/login``, ``/logout`` (here, beside the gate they share);
* :mod:`web.api` — ``/healthz``, ``/api/state``, ``/api/logs/<n>`` (the read side);
* :mod:`web.stream` — ``/api/dashboard/stream`` and its :class:`~web.stream.SseHub`;
* :mod:`web.actions` — the POST actions, generated from the verb table (:mod:`hivecore.verbs`);
* :mod:`web.metrics` — ``/metrics`` (Prometheus text format, :mod:`hivecore.metrics`).

Every blueprint talks to the daemon through the façade (the coordinator) only.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio
from quart import Response, request
from quart.asgi import ASGIHTTPConnection
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from hivecore import audit
from hivecore.config import StatePaths, is_loopback
from hivecore.coordinator import Coordinator
from hivecore.wire.events import EVENT_KINDS
from web import actions, api, audit_view, metrics, session, stream
from web.auth import CSRF_HEADER, SESSION_COOKIE, Auth, Principal, ensure_token
from web.stream import json_error

if TYPE_CHECKING:
    from hivecore.daemon import Daemon

STATIC = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024
"""Largest request body (a form); more is a 413."""
_error = json_error


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
        auth=auth,
        paths=config.paths,
        scrape=daemon.metrics.scrape,
        audit_log=daemon.audit,
    )
    daemon.metrics.sse_clients = app.hive_sse_clients  # type: ignore[attr-defined]

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

    # the dashboard listener keeps slots only requests with valid credentials may take
    def credentials_ok(authorization: str | None, sid: str | None) -> bool:
        return auth.principal(authorization, sid) is not None

    app.hive_credentials_ok = credentials_ok  # type: ignore[attr-defined]
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
    *,
    auth: Auth,
    paths: StatePaths,
    scrape: Callable[[], Awaitable[bytes]] | None = None,
    audit_log: Any = None,
) -> QuartTrio:
    """The dashboard; ``scrape`` (the daemon's :meth:`hivecore.metrics.Metrics.scrape`) adds
    ``GET /metrics``; ``audit_log`` (:class:`~hivecore.services.audit.AuditLog`) records the POST
    actions and serves ``GET /api/audit``."""
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

    hub = stream.SseHub(coordinator)
    app.hive_drop_streams = hub.drop_streams  # type: ignore[attr-defined]
    app.hive_sse_clients = hub.clients  # type: ignore[attr-defined]

    def principal() -> Principal | None:
        return auth.principal(request.headers.get("Authorization"), request.cookies.get(SESSION_COOKIE))

    def csrf_for() -> str | None:
        return auth.csrf_for(principal(), request.cookies.get(SESSION_COOKIE))

    def actor() -> audit.Actor:
        return auth.actor(principal(), request.cookies.get(SESSION_COOKIE), request.remote_addr)

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
            if not auth.token_ok(bearer):  # the right token is never throttled (see web.auth)
                if wait := auth.throttle.retry_after(client):
                    return session.throttled(wait)
                session.failed_login(auth, client)
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

    @app.get("/static/<path:filename>")
    async def static(filename: str) -> Response:
        found = static_files.get(filename)
        if found is None:
            return _error(404, f"no static file {_shown(filename)}")
        body, mimetype = found
        return Response(body, mimetype=mimetype, headers={"Cache-Control": "no-cache"})

    app.register_blueprint(session.blueprint(auth, principal, audit_log))
    app.register_blueprint(api.blueprint(coordinator, paths, csrf_for))
    app.register_blueprint(stream.blueprint(hub))
    app.register_blueprint(actions.blueprint(coordinator, audit_log, actor))
    app.register_blueprint(audit_view.blueprint(audit_log))
    if scrape is not None:
        app.register_blueprint(metrics.blueprint(scrape))
    return app
