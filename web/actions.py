"""The dashboard's form-encoded POST actions: one route per ``dashboard`` row of the verb table
(:mod:`hivecore.verbs`), each answered the same way.

A route's path parameters and form fields become the row's request record (``Route.fields``, then the
converter), the record's checks run, the façade is called as the operator with
``source="dashboard"``. Every answer is JSON: ``200 {ok: true, message}`` or ``{ok: false, error}``
with the status of :func:`hivecore.errors.answer_for` (400 bad input, 404 unknown agent or approval,
409 refused or busy, 500 a bug). The job lane runs the work, so a tab closed mid-request abandons
the answer, never the job. Rows change only through their events.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Blueprint, Response, request

from hivecore.errors import answer_for
from hivecore.verbs import bind, spec
from hivecore.wire.request import structure

log = logging.getLogger(__name__)


def ok(message: str) -> Response:
    return Response(json.dumps({"ok": True, "message": message}), mimetype="application/json")


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


async def _form() -> dict[str, str]:
    """The form fields (first value of each); a body that is not a form reads as no fields."""
    form = await request.form
    return {k: form.get(k, "") for k in form}


def blueprint(facade: Any) -> Blueprint:
    """Every action route (auth and CSRF are checked by the app before these run)."""
    bp = Blueprint("actions", __name__)
    ctx = bind.Context(facade, bind.DASHBOARD)

    def add(verb: spec.Verb) -> None:
        route = verb.route
        assert route is not None
        binding = bind.BINDINGS[verb.key]
        assert binding.done is not None, verb.key

        async def handler(**params: str) -> Response:
            try:
                fields = route.fields({**(await _form()), **params})
                record = structure(fields, binding.request)
                record, value = await bind.run_checked(verb.key, ctx, record)
                return ok(binding.done(record, value))  # type: ignore[misc]  # asserted above
            except Exception as exc:
                answer = answer_for(exc, verb.cmd)
                if answer.internal:
                    log.error("dashboard: %s failed", verb.cmd, exc_info=exc)
                return error(answer.http_status, answer.line)

        bp.add_url_rule(route.path, f"action_{verb.key}", handler, methods=["POST"])

    for verb in spec.on("dashboard"):
        add(verb)
    return bp
