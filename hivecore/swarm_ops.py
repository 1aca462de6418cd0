"""Operator reach across hives (issue 20 item 4; docs/swarm.md "Operator reach"): the pure half.

An operator on hive ``a`` runs an operator verb on hive ``b``'s agent (``hivectl stop worker@b``, a
button on a remote row of the dashboard): host.sock's ``swarm_op`` (:class:`SwarmOpRequest`) sends
one NATS request on ``hive.b.ops.a`` (:func:`subject`) and waits for the answer. Hive ``b`` serves
it only when it lists ``a`` in ``--swarm-operator-hives``; it takes the asking hive from the
SUBJECT (which per-hive NATS permissions pin), never from the payload, and answers only on a reply
subject under ``a``'s own inbox prefix (``_INBOX.a.``), so a request cannot make ``b`` publish
anywhere else.

The verbs that cross (:data:`OPS`), each one agent (or one approval) by name: ``start``, ``stop``
(``graceful``), ``restart``, ``rebuild``, ``kill``, ``pause``, ``resume``, ``approve`` and ``deny``
(``note``). Destroying, purging, spawning, logging in and environment values stay local.

Here: the records on the wire (:class:`OpCall` out, :class:`OpReply` back), target and subject
parsing, the checks on a decoded call, the far side's verb and its audit :class:`~hivecore.audit.Actor`,
and the per-hive :class:`TokenBucket`. No I/O (the actor is :mod:`actors.swarm_ops`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hivecore.audit import Actor
from hivecore.errors import BadInput, HiveError, InvalidName, Refused
from hivecore.names import validate_name
from hivecore.swarm import validate_hive_name
from hivecore.verbs.checks import MAX_APPROVAL_ID, MAX_TEXT, check

OPS: Mapping[str, str] = {
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "rebuild": "rebuild",
    "kill": "kill",
    "pause": "set_paused",
    "resume": "set_paused",
    "approve": "approve",
    "deny": "deny",
}
"""The operations another hive may run here → the verb-table row each runs (the far side's allowlist)."""
APPROVAL_OPS = frozenset({"approve", "deny"})
"""Ops whose target is an approval id (``ID@hive``), not an agent name."""
CLI_OPS: Mapping[str, str] = {
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "rebuild": "rebuild",
    "kill": "kill",
    "set_paused": "pause",
    "approve": "approve",
    "deny": "deny",
}
"""host.sock cmd → op, for hivectl's ``NAME@HIVE`` routing (``set_paused`` by its ``paused`` field)."""

SUBJECT_PREFIX = "hive."
OPS_TOKEN = "ops"
MAX_CALL_BYTES = 16 * 1024
"""A request larger than this is refused unread (a call is a few hundred bytes)."""
MAX_REPLY_BYTES = 16 * 1024
MAX_ERROR_CHARS = 1000
"""The far hive's error text is cut to this before the operator sees it."""
DEFAULT_TIMEOUT = 60.0
"""Seconds the asking hive waits for an answer (a ``rebuild``: :data:`REBUILD_TIMEOUT`)."""
REBUILD_TIMEOUT = 280.0
"""A rebuild answers once it is built; hivectl waits 300 s by default."""
MAX_TIMEOUT = 600.0
RATE_BURST = 30.0
RATE_PER_SECOND = 1.0
"""Requests one asking hive may make: a burst of :data:`RATE_BURST`, then :data:`RATE_PER_SECOND`
a second; past it each is answered "rate limited" without touching the lane."""
MAX_IN_FLIGHT = 4
"""Requests of one asking hive being carried out at once; more are answered "busy"."""
_ID_RE = re.compile(r"[0-9]{1,18}")


# --- subjects -----------------------------------------------------------------------------------------


def subject(to: str, asking: str) -> str:
    """``hive.<to>.ops.<asking>``: where hive ``asking`` sends its requests for hive ``to``."""
    return f"{SUBJECT_PREFIX}{to}.{OPS_TOKEN}.{asking}"


def listen_subject(me: str) -> str:
    """What hive ``me`` subscribes to: requests from every hive (the last token is the asker)."""
    return f"{SUBJECT_PREFIX}{me}.{OPS_TOKEN}.*"


def inbox_prefix(hive: str) -> str:
    """Hive ``hive``'s reply inbox prefix (nats-py's ``inbox_prefix``): its replies come back under it."""
    return f"_INBOX.{hive}"


def asking_hive(subject_: str, me: str) -> str | None:
    """The asking hive of a request on ``subject_`` (``hive.<me>.ops.<asking>``), else None."""
    parts = subject_.split(".")
    if len(parts) != 4 or parts[0] + "." != SUBJECT_PREFIX or parts[1] != me or parts[2] != OPS_TOKEN:
        return None
    try:
        return validate_hive_name(parts[3])
    except InvalidName:
        return None


def reply_ok(reply: str | None, asking: str) -> bool:
    """Whether ``reply`` lies under the asking hive's own inbox prefix: the far hive publishes an
    answer nowhere else (a forged reply subject could aim it at another hive's mail)."""
    prefix = inbox_prefix(asking) + "."
    return bool(reply) and reply is not None and reply.startswith(prefix) and len(reply) <= 256


# --- the records ----------------------------------------------------------------------------------------


def _opt_text(limit: int) -> Callable[[Any, Any, str | None], None]:
    def validate(_inst: Any, attribute: Any, value: str | None) -> None:
        if value is not None and (len(value) > limit or not value.isprintable()):
            raise BadInput(f"{attribute.name} must be printable text of at most {limit} characters")

    return validate


@attrs.frozen(kw_only=True)
class RemoteOperator:
    """Who on the asking hive: what its audit trail records of the caller (never a secret: a
    session or token is an identifier, a hash prefix). Sent with every call; claimed by the asking
    hive, which the far hive trusts as an operator hive."""

    via: str = attrs.field()
    """``host_sock`` or ``dashboard``."""
    uid: int | None = attrs.field(default=None)
    user: str | None = attrs.field(default=None, validator=_opt_text(64))
    session: str | None = attrs.field(default=None, validator=_opt_text(64))
    session_login: str | None = attrs.field(default=None, validator=_opt_text(64))
    client: str | None = attrs.field(default=None, validator=_opt_text(128))
    token: str | None = attrs.field(default=None, validator=_opt_text(64))

    @via.validator
    def _via(self, _attribute: Any, value: str) -> None:
        if value not in ("host_sock", "dashboard"):
            raise BadInput(f"via must be host_sock or dashboard, got {value[:40]!r}")

    @uid.validator
    def _uid(self, _attribute: Any, value: int | None) -> None:
        if value is not None and not 0 <= value < 2**32:
            raise BadInput("uid must be 0 to 2**32-1")

    @classmethod
    def of(cls, actor: Actor | None) -> RemoteOperator:
        """The identity of a local operator :class:`Actor` (host.sock when none is known)."""
        if actor is None:
            return cls(via="host_sock")
        via = actor.via if actor.via in ("host_sock", "dashboard") else "host_sock"
        return cls(
            via=via,
            uid=actor.uid,
            user=actor.user,
            session=actor.session,
            session_login=actor.session_login,
            client=actor.client,
            token=actor.token,
        )


@attrs.frozen(kw_only=True)
class OpCall:
    """One request on ``hive.<to>.ops.<from>`` (JSON). It names no asking hive: that is the subject's."""

    op: str
    name: str | None = None
    """The agent (agent ops)."""
    id: int | None = None
    """The approval (``approve``, ``deny``)."""
    graceful: bool = True
    note: str | None = None
    operator: RemoteOperator


@attrs.frozen(kw_only=True)
class OpReply:
    """The far hive's answer: ``ok``, or ``error`` with ``status`` (the verb's HTTP status: 400 bad
    input, 404 unknown, 409 refused, 429 rate limited, 500 a failure); ``message`` what the verb said."""

    ok: bool
    error: str | None = None
    status: int = 200
    message: str | None = None


def check_call(call: Any) -> OpCall:
    """A decoded :class:`OpCall` whose op is allowed and whose target fits it; else :class:`BadInput`."""
    if not isinstance(call, OpCall):
        raise BadInput("not an operator call")
    if call.op not in OPS:
        raise Refused(
            f"{str(call.op)[:40]!r} is not an operation other hives may run here (allowed: {', '.join(OPS)})"
        )
    if call.op in APPROVAL_OPS:
        if call.id is None or not 0 <= call.id < MAX_APPROVAL_ID:
            raise BadInput(f"{call.op} needs an approval id")
    elif call.name is None:
        raise BadInput(f"{call.op} needs an agent name")
    else:
        validate_name(call.name)
    if call.note is not None and len(call.note) > MAX_TEXT:
        raise BadInput(f"note is longer than {MAX_TEXT} characters")
    return call


def verb_of(call: OpCall) -> tuple[str, dict[str, Any]]:
    """The verb-table row a (checked) call runs here and its request fields (as host.sock's JSON)."""
    key = OPS[call.op]
    if call.op == "start":
        return key, {"scope": {"agent_names": [call.name]}}
    if call.op == "stop":
        return key, {"scope": {"agent_names": [call.name]}, "graceful": call.graceful}
    if call.op in ("pause", "resume"):
        return key, {"name": call.name, "paused": call.op == "pause"}
    if call.op == "approve":
        return key, {"id": call.id}
    if call.op == "deny":
        return key, {"id": call.id, "note": call.note}
    return key, {"name": call.name}


def far_actor(asking: str, operator: RemoteOperator) -> Actor:
    """The far hive's audit :class:`Actor`: principal ``operator``, via ``hive:<asking>/<surface>``,
    and the asking hive's own account of who it was (uid, user, session …)."""
    return Actor(
        "operator",
        f"hive:{asking}/{operator.via}",
        uid=operator.uid,
        user=operator.user,
        session=operator.session,
        session_login=operator.session_login,
        client=operator.client,
        token=operator.token,
    )


# --- the asking side ------------------------------------------------------------------------------------


def _target_check(value: str) -> str:
    """``NAME@HIVE`` or ``ID@HIVE`` (the op decides which; :func:`parse_target` checks the rest)."""
    what, sep, hive = value.partition("@")
    if not sep or not what:
        raise BadInput(f"{value[:60]!r} is not NAME@HIVE (or ID@HIVE for an approval)")
    try:
        validate_hive_name(hive)
    except InvalidName as exc:
        raise BadInput(f"{value[:60]!r}: {exc}") from None
    return value


def _op_check(value: str) -> str:
    if value not in OPS:
        raise BadInput(f"op must be one of {', '.join(OPS)}; got {value[:40]!r}")
    return value


def _timeout_check(value: float | None) -> float | None:
    if value is not None and not 0 < value <= MAX_TIMEOUT:
        raise BadInput(f"timeout is seconds, more than 0 and at most {MAX_TIMEOUT:g}")
    return value


def _note_check(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_TEXT:
        raise BadInput(f"note is longer than {MAX_TEXT} characters")
    return value


def parse_target(op: str, target: str) -> tuple[str, str | None, int | None]:
    """``(hive, agent name, approval id)`` of a checked ``target`` for ``op``; :class:`BadInput`
    when it does not fit (an agent op needs ``NAME@HIVE``, approve/deny ``ID@HIVE``)."""
    what, _, hive = target.partition("@")
    if op in APPROVAL_OPS:
        if not _ID_RE.fullmatch(what) or int(what) >= MAX_APPROVAL_ID:
            raise BadInput(f"{op} {target[:60]!r}: give the approval as ID@HIVE (e.g. 7@{hive})")
        return hive, None, int(what)
    try:
        return hive, validate_name(what), None
    except HiveError as exc:
        raise BadInput(f"{op} {target[:60]!r}: {exc}") from None


def timeout_for(op: str, asked: float | None) -> float:
    """Seconds to wait for the far hive's answer."""
    if asked is not None:
        return asked
    return REBUILD_TIMEOUT if op == "rebuild" else DEFAULT_TIMEOUT


def remote_text(text: str, hive: str) -> str:
    """Text from ``hive`` as the operator sees it: on one line, cut, and saying where it is from."""
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "…"
    return f"hive {hive}: {text}"


def error_text(reply: OpReply, hive: str) -> str:
    """The operator's error line for a refusal from ``hive``."""
    return remote_text(reply.error or "refused (no reason given)", hive)


class RemoteNotFound(HiveError):
    """The far hive has no such agent or approval."""

    http_status = 404


class RemoteUnanswered(HiveError):
    """The far hive did not answer (down, not connected, or too slow)."""

    http_status = 504


def error_for(reply: OpReply, hive: str) -> HiveError:
    """The local error for a refusal from ``hive`` (so every surface answers with its status)."""
    text = error_text(reply, hive)
    if reply.status == 400:
        return BadInput(text)
    if reply.status == 404:
        return RemoteNotFound(text)
    return Refused(text)


# --- the far side's rate limit --------------------------------------------------------------------------


class TokenBucket:
    """Per key (an asking hive): a burst of ``burst`` requests, refilled at ``rate`` a second.
    Synchronous: trio runs it between checkpoints, so it needs no lock."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]) -> None:
        self.burst, self.rate, self._clock = burst, rate, clock
        self._tokens: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> bool:
        now = self._clock()
        tokens, then = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        if tokens < 1:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1, now)
        return True


# --- the settings ----------------------------------------------------------------------------------------


def operator_hives(text: str | None, flag: str = "--swarm-operator-hives") -> tuple[str, ...]:
    """``a,b`` → the hive names (validated, de-duplicated); empty or None → none."""
    if not text:
        return ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        try:
            validate_hive_name(name)
        except InvalidName as exc:
            raise HiveError(f"{flag}: {exc}") from None
        if name not in out:
            out.append(name)
    return tuple(out)


TARGET = check(_target_check)
OP = check(_op_check)
TIMEOUT = check(_timeout_check)
NOTE = check(_note_check)
