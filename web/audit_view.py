"""``GET /api/audit``: the audit trail, one page at a time (the dashboard's Audit section).

A separate paged read, not part of ``/api/state``: the trail grows for the whole retention (180 days
by default) and is read rarely, while the snapshot is fetched by every page load; new rows are not
pushed over SSE (the section's *refresh* reads the newest page again).

Query: ``limit`` (1-1000, default 100), ``before`` (a seq: the page before it), ``since`` (epoch s),
``agent`` (rows about that agent), ``verify=1`` (recompute the hash chain instead). Answers
``{ok: true, rows: [...], before: <seq of the oldest row shown or null>}``, ``{ok: true, verified:
{...}}``, or ``{ok: false, error}`` with 400 for a bad parameter, 404 when no trail is kept.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from quart import Blueprint, Response, request

from hivecore.errors import BadInput, NotAvailable, answer_for
from hivecore.verbs import checks
from hivecore.wire.converter import converter
from web.stream import json_error

PAGE = 100
JSON = "application/json"


def _int(name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadInput(f"{name} is a number from {low} to {high}")
    return int(text)


def blueprint(audit_log: Any) -> Blueprint:
    bp = Blueprint("audit", __name__)

    @bp.get("/api/audit")
    async def audit_page() -> Response:
        try:
            if audit_log is None:
                raise NotAvailable("this daemon keeps no audit trail")
            if request.args.get("verify") in ("1", "true"):
                found = await audit_log.verify()
                body: dict[str, Any] = {"ok": True, "verified": {**attrs.asdict(found), "ok": found.ok}}
                return Response(json.dumps(body), mimetype=JSON)
            limit = _int("limit", PAGE, 1, 1000)
            before = _int("before", None, 1, 2**62)
            since = _int("since", None, 0, 10**11)
            agent = checks.optional_agent_name(request.args.get("agent") or None)
            rows = await audit_log.read(
                since=since, agent=agent, before=before, limit=limit if limit is not None else PAGE
            )
        except Exception as exc:
            answer = answer_for(exc, "audit")
            if answer.internal:
                raise
            return json_error(404 if isinstance(exc, NotAvailable) else answer.http_status, answer.line)
        out = {"ok": True, "rows": converter.unstructure(rows), "before": rows[0].seq if rows else None}
        return Response(json.dumps(out), mimetype=JSON)

    return bp
