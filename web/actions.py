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
import urllib.parse
from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, request

from hivecore import audit
from hivecore.errors import BadInput, answer_for
from hivecore.verbs import bind, spec
from hivecore.wire.request import structure

log = logging.getLogger(__name__)


def ok(message: str) -> Response:
    return Response(json.dumps({"ok": True, "message": message}), mimetype="application/json")


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def check_utf8_form(raw: bytes) -> None:
    """:class:`BadInput` naming the first field of a url-encoded form body whose name or value
    (percent-decoded) is not UTF-8: the form parser would turn those bytes into U+FFFD, and the
    action would run with a value nobody sent (a login with a garbled key, a message nobody wrote);
    host.sock answers the same bytes ``request is not valid UTF-8``."""
    for part in raw.split(b"&"):
        try:
            urllib.parse.unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            name = urllib.parse.unquote(part.split(b"=", 1)[0].decode("ascii", "replace"), errors="replace")
            raise BadInput(f"form field {name[:64]!r} is not valid UTF-8; send UTF-8 text") from None


async def _form() -> dict[str, str]:
    """The form fields (first value of each); a body that is not a form reads as no fields;
    :class:`BadInput` for a url-encoded body that is not UTF-8 (:func:`check_utf8_form`)."""
    if request.mimetype == "application/x-www-form-urlencoded":
        check_utf8_form(await request.get_data(cache=True, as_text=False, parse_form_data=False))
    form = await request.form
    return {k: form.get(k, "") for k in form}


def blueprint(facade: Any, audit_log: Any = None, who: Callable[[], audit.Actor] | None = None) -> Blueprint:
    """Every action route (auth and CSRF are checked by the app before these run); ``audit_log``
    records them (:func:`hivecore.verbs.bind.run_checked`) as ``who()`` (the request's session or
    bearer token and client address)."""
    bp = Blueprint("actions", __name__)
    ctx = bind.Context(facade, bind.DASHBOARD, audit_log)

    def add(verb: spec.Verb) -> None:
        route = verb.route
        assert route is not None
        binding = bind.BINDINGS[verb.key]
        assert binding.done is not None, verb.key

        async def handler(**params: str) -> Response:
            try:
                fields = route.fields({**(await _form()), **params})
                record = structure(fields, binding.request)
                record, value = await bind.run_checked(
                    verb.key, ctx, record, who=who() if who is not None else None
                )
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
