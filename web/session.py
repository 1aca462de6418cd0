"""``POST /login`` and ``POST /logout`` (the app's gate lets them through; they check what they need)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, request

from web.auth import CSRF_HEADER, SESSION_COOKIE, Auth, Principal
from web.stream import json_error as _error

JSON = "application/json"
log = logging.getLogger(__name__)


def throttled(retry_after: int) -> Response:
    resp = _error(429, f"too many failed logins from this address; retry in {retry_after} s")
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def failed_login(auth: Auth, client: str) -> None:
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


def blueprint(auth: Auth, principal: Callable[[], Principal | None], audit_log: Any = None) -> Blueprint:
    """``audit_log``: a session's login and logout are recorded in the audit trail (``dashboard_login``,
    ``dashboard_logout``, with the session's identifier, never its cookie)."""
    bp = Blueprint("session", __name__)

    async def record(verb: str, sid: str | None) -> None:
        if audit_log is not None:
            await audit_log.record(verb, {}, actor=auth.actor("session", sid, request.remote_addr))

    @bp.post("/login")
    async def login() -> Response:
        if auth.mode == "none":
            return Response(json.dumps({"ok": True, "message": "no auth on this dashboard"}), mimetype=JSON)
        client = request.remote_addr or "?"
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        if given is None and request.mimetype == "application/x-www-form-urlencoded":
            given = (await request.form).get("token")
        sid = auth.login(given, client)  # the right token always logs in, throttled address or not
        if sid is None:
            if wait := auth.throttle.retry_after(client):
                return throttled(wait)
            failed_login(auth, client)
            return _error(403, "wrong operator token")
        await record("dashboard_login", sid)
        resp = Response(json.dumps({"ok": True, "message": "logged in"}), mimetype=JSON)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")
        return resp

    @bp.post("/logout")
    async def logout() -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        who = principal()
        if who == "session" and not auth.csrf_ok(who, sid, request.headers.get(CSRF_HEADER)):
            return _error(403, f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
        if who == "session":
            await record("dashboard_logout", sid)
        auth.logout(sid)
        resp = Response(json.dumps({"ok": True, "message": "logged out"}), mimetype=JSON)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    return bp
