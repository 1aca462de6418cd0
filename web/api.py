"""The read side of the dashboard: ``/healthz``, the ``/api/state`` snapshot, ``/api/logs/<n>`` and
the viewers ``/api/agent-config/<n>`` and ``/api/state-file?agent=…&path=…``, all answered from the
façade (the viewers through their verb rows).

``/api/state`` is fetched once per page session and carries ``seq``, the bus's high-water mark at
assembly; every later change arrives on the stream (:mod:`web.stream`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from quart import Blueprint, Response, request

from hivecore.config import StatePaths
from hivecore.errors import NotAvailable, answer_for
from hivecore.names import OPERATOR_NAME
from hivecore.ports import port_conflicts
from hivecore.verbs import bind
from hivecore.wire.converter import converter
from hivecore.wire.events import EVENT_KINDS
from web import snapshot as snap
from web.stream import json_error

HISTORY = 50
"""Resolved approvals in the snapshot (the most recent ones)."""
RECENT_MESSAGES = 200
OPERATOR_INBOX = 50
LOG_LINES = 200
JSON = "application/json"


def blueprint(facade: Any, paths: StatePaths, csrf_for: Callable[[], str | None]) -> Blueprint:
    """``csrf_for()``: the CSRF token of the request's session (``None`` for a bearer)."""
    bp = Blueprint("api", __name__)

    @bp.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "seq": facade.current_seq()}

    @bp.get("/api/state")
    async def state() -> dict[str, Any]:
        # everything cached is read synchronously, right after seq: no event can fall between
        # them. What needs an await (sqlite, git diffs, statvfs) is read later and may be newer
        # than seq; the events after seq that the client replays onto it are idempotent upserts.
        seq = facade.current_seq()
        views = list(facade.views().values())
        out: dict[str, Any] = {
            "seq": seq,
            "containers": converter.unstructure(views),
            "tombstones": converter.unstructure(facade.tombstones()),
            "transients": {
                n: {"transient_kind": t.kind, "since_unix": t.since_unix}
                for n, t in facade.transients().items()
            },
            "rebuild_queue": converter.unstructure(facade.jobs()),
            "actors": [attrs.asdict(c) for c in facade.actors()],
            "meta_update_running": facade.meta_update_running(),
            "any_stale": facade.any_stale(),
            "csrf": csrf_for(),
            "event_kinds": sorted(EVENT_KINDS),
            "meta_inputs": converter.unstructure(facade.meta_inputs()),
            "port_conflicts": port_conflicts(v.name for v in views),
        }
        approvals = await facade.pending()
        resolved = [a for a in approvals if a.status != "pending"][-HISTORY:]
        out["approvals"] = converter.unstructure([a for a in approvals if a.status == "pending"] + resolved)
        # questions (hivecore/services/questions.py): every open one; the card shows them
        out["questions"] = converter.unstructure(await facade.open_questions())
        out["messages"] = snap.message_dicts(await facade.recent_messages(RECENT_MESSAGES))
        inbox = await facade.recent_messages(OPERATOR_INBOX, OPERATOR_NAME)
        out["operator_inbox"] = snap.message_dicts(inbox)
        if inbox:
            # the operator has read the inbox up to here: ack it (frees the senders' quota; the
            # vacuum reclaims the rows)
            await facade.ack_operator_inbox(max(row[0] for row in inbox))
        out["reminders"] = await _reminders(facade)
        out["schedules"] = await _schedules(facade)
        out["server_warnings"] = snap.server_warnings(facade.alarms())
        # the swarm (actors/swarm_link.py): the link's state and every hive seen ("off": alone)
        swarm_status = getattr(facade, "swarm_status", None)
        out["swarm"] = converter.unstructure(swarm_status()) if swarm_status is not None else None
        return out

    @bp.get("/api/logs/<name>")
    async def logs(name: str) -> Response:
        try:
            lines = await facade.agent_log(name, LOG_LINES)
        except Exception as exc:
            answer = answer_for(exc, "logs")
            if answer.internal:
                raise
            return json_error(answer.http_status, answer.line)
        return Response(json.dumps({"ok": True, "name": name, "lines": lines}), mimetype=JSON)

    # --- viewers (issue 18 item 6): the verb rows agent_config and state_file, read-only ---

    async def viewer(key: str, fields: dict[str, Any]) -> Response:
        try:
            value = await bind.call(key, bind.Context(facade, bind.DASHBOARD), fields)
        except Exception as exc:
            answer = answer_for(exc, key)
            if answer.internal:
                raise
            return json_error(answer.http_status, answer.line)
        body = {"ok": True, **converter.unstructure(value)}
        return Response(json.dumps(body), mimetype=JSON, headers={"X-Content-Type-Options": "nosniff"})

    @bp.get("/api/agent-config/<name>")
    async def agent_config(name: str) -> Response:
        return await viewer("agent_config", {"name": name})

    @bp.get("/api/state-file")
    async def state_file() -> Response:
        agent, path = request.args.get("agent"), request.args.get("path")
        if agent is None or path is None:
            return json_error(400, "name the file: /api/state-file?agent=<name>&path=<path in its state dir>")
        return await viewer("state_file", {"name": agent, "path": path})

    return bp


async def _reminders(facade: Any) -> list[Any]:
    """QU3U3D R3M1ND3RS: the pending reminders, earliest due first (none without a scheduler)."""
    try:
        rows = await facade.reminders()
    except NotAvailable:
        return []
    out: list[Any] = converter.unstructure(rows)
    return out


async def _schedules(facade: Any) -> list[Any]:
    """SCH3DUL3S: active schedules and requested ones (none without a scheduler)."""
    try:
        rows = await facade.schedules()
    except NotAvailable:
        return []
    out: list[Any] = converter.unstructure(rows)
    return out
