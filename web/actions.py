"""The dashboard's form-encoded POST actions, each one call into the façade (``source="dashboard"``).

Every answer is JSON: ``200 {ok: true, message}`` or ``{ok: false, error}`` with 400 (bad input),
404 (unknown agent or approval) or 409 (refused or busy). The job lane runs the work, so a tab
closed mid-request abandons the answer, never the job. Rows change only through their events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from quart import Response, request
from quart_trio import QuartTrio

from hivecore.errors import HiveError, InvalidName, UnknownAgent
from hivecore.names import validate_name
from hivecore.services.approvals import UnknownApproval
from hivecore.services.broker import BadMessage

if TYPE_CHECKING:
    from hivecore.coordinator import Coordinator
    from hivecore.services.broker import Broker

_ID_RE = re.compile(r"[0-9]{1,18}")
_INPUT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]{0,199}")
MAX_INPUTS = 64
TRUE_WORDS = frozenset({"1", "true", "on", "yes"})


class BadInput(HiveError):
    """A missing or malformed form field (400)."""


def ok(message: str) -> Response:
    return Response(json.dumps({"ok": True, "message": message}), mimetype="application/json")


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"ok": False, "error": message}), status=status, mimetype="application/json")


def status_of(exc: HiveError) -> int:
    if isinstance(exc, InvalidName | BadInput | BadMessage):
        return 400
    if isinstance(exc, UnknownAgent | UnknownApproval):
        return 404
    return 409


def _cut(text: str, limit: int = 40) -> str:
    return repr(text[:limit] + "…" if len(text) > limit else text)


async def _form() -> dict[str, str]:
    """The form fields (first value of each); a body that is not a form reads as no fields."""
    form = await request.form
    return {k: form.get(k, "") for k in form}


def _field(form: dict[str, str], name: str, *, required: bool = True, limit: int = 4096) -> str | None:
    value = form.get(name)
    if value is None or not value.strip():
        if required:
            raise BadInput(f"missing field {name!r}")
        return None
    if len(value) > limit:
        raise BadInput(f"field {name!r} is longer than {limit} characters")
    return value


def _approval_id(text: str) -> int:
    if not _ID_RE.fullmatch(text):
        raise BadInput(f"an approval id is a number, got {_cut(text)}")
    return int(text)


def _agent(text: str) -> str:
    return validate_name(text)


def _meta_inputs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadInput("pick at least one input")
    if len(names) > MAX_INPUTS:
        raise BadInput(f"at most {MAX_INPUTS} inputs at once")
    for n in names:
        if not _INPUT_RE.fullmatch(n) or ".." in n:
            raise BadInput(f"not a flake input name: {_cut(n)}")
    return list(dict.fromkeys(names))


def register(app: QuartTrio, coordinator: Coordinator, broker: Broker) -> None:
    """Add every action route to ``app`` (auth and CSRF are checked before these run)."""

    def action(path: str) -> Callable[[Callable[..., Awaitable[str]]], None]:
        def wrap(fn: Callable[..., Awaitable[str]]) -> None:
            async def handler(**kwargs: str) -> Response:
                try:
                    return ok(await fn(**kwargs))
                except HiveError as exc:
                    return error(status_of(exc), str(exc))

            handler.__name__ = f"action_{fn.__name__}"
            app.add_url_rule(path, handler.__name__, handler, methods=["POST"])

        return wrap

    @action("/start/<name>")
    async def start(name: str) -> str:
        await coordinator.start(_agent(name), source="dashboard")
        return f"{name} started"

    @action("/stop/<name>")
    async def stop(name: str) -> str:
        await coordinator.stop(_agent(name), source="dashboard")
        return f"{name} stopped"

    @action("/kill/<name>")
    async def kill(name: str) -> str:
        await coordinator.kill(_agent(name), source="dashboard")
        return f"{name} killed"

    @action("/restart/<name>")
    async def restart(name: str) -> str:
        await coordinator.restart(_agent(name), source="dashboard")
        return f"{name} restarted"

    @action("/rebuild/<name>")
    async def rebuild(name: str) -> str:
        await coordinator.rebuild(_agent(name), source="dashboard")
        return f"{name} rebuilt"

    @action("/destroy/<name>")
    async def destroy(name: str) -> str:
        purge = (_field(await _form(), "purge", required=False) or "").lower() in TRUE_WORDS
        await coordinator.destroy(_agent(name), purge=purge, source="dashboard")
        return f"{name} destroyed" + (" and purged" if purge else "; its state is kept")

    @action("/purge-tombstone/<name>")
    async def purge_tombstone(name: str) -> str:
        await coordinator.purge_tombstone(_agent(name), source="dashboard")
        return f"kept state of {name} purged"

    @action("/approve/<approval_id>")
    async def approve(approval_id: str) -> str:
        aid = _approval_id(approval_id)
        await coordinator.approve(aid, source="dashboard")
        return f"approval {aid} approved"

    @action("/deny/<approval_id>")
    async def deny(approval_id: str) -> str:
        aid = _approval_id(approval_id)
        note = _field(await _form(), "note", required=False)
        await coordinator.deny(aid, note, source="dashboard")
        return f"approval {aid} denied"

    @action("/request-spawn")
    async def request_spawn(**_: str) -> str:
        form = await _form()
        name = _agent(_field(form, "name", limit=200) or "")
        description = _field(form, "description", required=False)
        approval = await coordinator.request_spawn(name, description, source="dashboard")
        return f"spawn of {name} requested (approval {approval.id})"

    @action("/meta-update")
    async def meta_update(**_: str) -> str:
        inputs = _meta_inputs(_field(await _form(), "inputs", limit=16384) or "")
        # accepted, not awaited: the rebuild loop runs on the lane; the page follows it by events
        job = await coordinator.meta_update(inputs, source="dashboard", wait=False)
        return f"meta update started (job {job.id}): " + ", ".join(inputs)

    @action("/op-send")
    async def op_send(**_: str) -> str:
        form = await _form()
        to = _field(form, "to", limit=200) or ""
        body = _field(form, "body", limit=1 << 20) or ""
        ids = await broker.send("operator", to.strip().lstrip("@"), body)
        return f"sent to {to.strip()} ({len(ids)} message{'s' if len(ids) != 1 else ''})"
