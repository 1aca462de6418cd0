"""Mail between hives (issue 20 item 3; docs/swarm.md): addresses, the envelope, and the store side.

``name@hive`` in ``send`` goes to the sender's outbox (store table ``swarm_outbox``); the swarm link
publishes each row to the JetStream stream :data:`STREAM` on subject ``hive.<to>.mail.<from>`` with the
header ``Nats-Msg-Id: <envelope id>`` (JetStream drops a duplicate within its window) and deletes
the row only once JetStream acknowledged it. The receiving hive's durable consumer
(``mail-<hive>``, explicit acks) inserts the message into its broker and records the envelope id in
``swarm_received`` in the same transaction, and only then acks: a redelivery after a crash finds the
envelope recorded and is acked without a second row. An unknown recipient is bounced to the sender
as a message from ``system@<hive>``.

The sender hive is the subject's last token, never the payload's word: with per-hive NATS users a
hive may publish only ``hive.*.mail.<itself>`` (docs/swarm.md), so the subject is what NATS vouches
for; an envelope whose ``from_hive`` differs is refused (:func:`origin_ok`).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import attrs

from hivecore import store as st
from hivecore.errors import BadInput, HiveError
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, SYSTEM_SENDER, validate_name
from hivecore.store import transaction
from hivecore.swarm import validate_hive_name

STREAM = "HIVE_MAIL"
STREAM_SUBJECTS = "hive.*.mail.*"
"""The mail stream's one subject filter: ``hive.<to>.mail.<from>``."""
LEGACY_SUBJECTS = "hive.mail.*"
"""The first scheme's subjects (``hive.mail.<to>``); a stream with them is moved on join."""
MAX_OUTBOX_PER_SENDER = 1000
"""Rows one sender may have in the outbox (not yet acked by JetStream): NATS being down for long
must not let an agent fill the database."""
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_QUEUED_PER_HIVE = 1000
"""Messages from one other hive (all its senders together) that may wait here unacked by their
recipients; past it its mail is bounced (:class:`InboxFull`): another hive must not fill the
database or the disk by mailing an agent that does not read (a local sender has the broker's quota)."""


class InboxFull(BadInput):
    """Mail from a hive past :data:`MAX_QUEUED_PER_HIVE`; nothing was written."""
BOUNCER = SYSTEM_SENDER
"""A bounce comes from ``system@<hive>``; a bounce is never bounced."""


def subject(to_hive: str, from_hive: str) -> str:
    """``hive.<to>.mail.<from>``: the subject mail from ``from_hive`` to ``to_hive`` is published on."""
    return f"hive.{to_hive}.mail.{from_hive}"


def inbox_filter(hive: str) -> str:
    """The filter of ``hive``'s mail consumer: everything addressed to it."""
    return f"hive.{hive}.mail.*"


def consumer_name(hive: str) -> str:
    return f"mail-{hive}"


def subject_hives(subject: str) -> tuple[str, str] | None:
    """``(to, from)`` of a mail subject ``hive.<to>.mail.<from>`` with valid hive names, else None."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "hive" or parts[2] != "mail":
        return None
    try:
        return validate_hive_name(parts[1]), validate_hive_name(parts[3])
    except HiveError:
        return None


def origin_ok(envelope: Envelope, subject: str, me: str) -> str | None:
    """None when ``envelope`` arrived on ``hive.<me>.mail.<its from_hive>``; else why it is refused
    (the payload claims a hive the subject does not show, or the subject is not this hive's mail)."""
    hives = subject_hives(subject)
    if hives is None or hives[0] != me:
        return f"on subject {subject[:80]!r}, not this hive's mail"
    if hives[1] != envelope.from_hive:
        return f"published by hive {hives[1]!r} but claims to come from {envelope.from_hive[:20]!r}"
    return None


def parse_address(to: str) -> tuple[str, str]:
    """``name@hive`` → ``(name, hive)``: ``name`` an agent name, ``manager`` or ``operator``; else
    :class:`BadInput`."""
    name, sep, hive = to.partition("@")
    if not sep:
        raise BadInput(f"{to[:60]!r} is not name@hive")
    try:
        validate_hive_name(hive)
        if name not in (MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME):
            validate_name(name)
    except HiveError as exc:
        raise BadInput(f"{to[:60]!r} is not name@hive: {exc}") from None
    return (MANAGER_AGENT if name == MANAGER_NAME else name), hive


@attrs.frozen(kw_only=True)
class Envelope:
    """One message between hives, as published (JSON)."""

    id: str
    """``<sender hive>.<identity prefix>.<outbox id>``: the ``Nats-Msg-Id`` and the receiver's de-dup key."""
    from_hive: str
    sender: str
    to: str
    body: str
    kind: str = "mail"
    """``mail``; ``ask`` (``body`` the question) or ``answer`` (``body`` the answer) across hives
    (:mod:`hivecore.swarm_ask`); an older hive ignores the fields below."""
    ref: int | None = None
    """ask/answer: the question's id on the asking hive."""
    options: list[str] = attrs.field(factory=list)
    multi: bool = False
    deadline_at: int | None = None
    """ask: when the question expires (Unix seconds), None: never."""
    cancelled: bool = False
    """answer: the question was cancelled (or could not be asked) rather than answered."""


@attrs.frozen(kw_only=True)
class OutboxRow:
    id: int
    sender: str
    hive: str
    recipient: str
    body: str
    question: str | None = None
    """JSON of the envelope's ask/answer fields (:mod:`hivecore.swarm_ask`); None: plain mail."""


# --- store functions (sync, on the store thread) -------------------------------------------------------


def add_outbox(
    conn: sqlite3.Connection,
    sender: str,
    hive: str,
    recipient: str,
    body: str,
    now: int,
    question: str | None = None,
) -> int:
    """Queue one remote message; :class:`BadInput` past :data:`MAX_OUTBOX_PER_SENDER`."""
    with transaction(conn):
        return add_outbox_now(conn, sender, hive, recipient, body, now, question)


def add_outbox_now(
    conn: sqlite3.Connection,
    sender: str,
    hive: str,
    recipient: str,
    body: str,
    now: int,
    question: str | None = None,
    *,
    limit: bool = True,
) -> int:
    """:func:`add_outbox` inside the caller's transaction (an ask or an answer with its question row);
    ``limit=False``: no quota (an answer the hive owes, whoever gave it)."""
    (queued,) = conn.execute("SELECT count(*) FROM swarm_outbox WHERE sender=?", (sender,)).fetchone()
    if limit and queued >= MAX_OUTBOX_PER_SENDER:
        raise BadInput(
            f"swarm outbox quota: {sender} has {queued} messages waiting for NATS; wait until it is back"
        )
    cur = conn.execute(
        "INSERT INTO swarm_outbox(sender, hive, recipient, body, created_at, question) "
        "VALUES (?,?,?,?,?,?)",
        (sender, hive, recipient, body, now, question),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def pending_outbox(conn: sqlite3.Connection, limit: int = 100) -> list[OutboxRow]:
    rows = conn.execute(
        "SELECT id, sender, hive, recipient, body, question FROM swarm_outbox ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    return [
        OutboxRow(id=r[0], sender=r[1], hive=r[2], recipient=r[3], body=r[4], question=r[5]) for r in rows
    ]


def outbox_depth(conn: sqlite3.Connection) -> int:
    (n,) = conn.execute("SELECT count(*) FROM swarm_outbox").fetchone()
    return int(n)


def published(conn: sqlite3.Connection, outbox_id: int) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM swarm_outbox WHERE id=?", (outbox_id,))


def received_key(envelope: Envelope) -> str:
    """The de-dup key ``swarm_received`` records for ``envelope`` (its ``from_hive`` already checked
    against the subject, :func:`origin_ok`): its id when the id names that hive (``<hive>.…``, as
    every hive's own ids do), else ``<hive>/<id>``. So a hive can only ever mark as received the ids of
    its own envelopes: another hive publishing an envelope with ``alpha``'s next id on its own subject
    does not make alpha's real one look like a redelivery."""
    if envelope.id.startswith(f"{envelope.from_hive}."):
        return envelope.id
    return f"{envelope.from_hive}/{envelope.id}"


def receive(
    conn: sqlite3.Connection, now: int, *, envelope: Envelope, recipient: str, max_queued: int | None = None
) -> int | None:
    """Insert ``envelope`` for ``recipient`` (a resolved inbox) and record it, in one transaction; the
    new message id, or None when this envelope was received before (a redelivery). :class:`InboxFull`
    (nothing written) when ``envelope``'s hive has ``max_queued`` (default :data:`MAX_QUEUED_PER_HIVE`)
    messages here unacked."""
    with transaction(conn):
        key = received_key(envelope)
        if conn.execute("SELECT 1 FROM swarm_received WHERE envelope=?", (key,)).fetchone():
            return None
        quota = MAX_QUEUED_PER_HIVE if max_queued is None else max_queued
        unread = "SELECT count(*) FROM messages WHERE acked_at IS NULL AND sender GLOB ?"
        (queued,) = conn.execute(unread, (f"*@{envelope.from_hive}",)).fetchone()
        if queued >= quota:
            raise InboxFull(
                f"hive {envelope.from_hive!r} has {queued} messages here not yet read (the quota per hive); "
                "send again once they are"
            )
        bound = None if recipient in (MANAGER_AGENT, OPERATOR_NAME) else st.live_incarnation(conn, recipient)
        cur = conn.execute(
            "INSERT INTO messages(sender, recipient, body, sent_at, in_reply_to, incarnation) "
            "VALUES (?,?,?,?,?,?)",
            (f"{envelope.sender}@{envelope.from_hive}", recipient, envelope.body, now, None, bound),
        )
        assert cur.lastrowid is not None
        conn.execute(
            "INSERT INTO swarm_received(envelope, message_id, received_at) VALUES (?,?,?)",
            (key, cur.lastrowid, now),
        )
        return cur.lastrowid


def envelope_ok(data: Any) -> bool:
    """Shape checks beyond the converter's: names valid, sizes bounded."""
    if not isinstance(data, Envelope):
        return False
    try:
        validate_hive_name(data.from_hive)
        if data.sender not in (MANAGER_AGENT, OPERATOR_NAME, BOUNCER):
            validate_name(data.sender)  # hm1nd passes: the manager's own name
    except HiveError:
        return False
    return (
        0 < len(data.body.encode("utf-8", "surrogatepass")) <= MAX_ENVELOPE_BYTES
        and len(data.sender) <= 64
        and id_ok(data.id)
    )


MAX_ID_CHARS = 128
"""An envelope id is short printable ASCII without spaces (this hive's are ``<hive>.<16 hex>.<n>``, a bounce's
``bounce.`` + that): it is kept in ``swarm_received`` and a ``Nats-Msg-Id`` header."""


_ID_RE = re.compile(rf"[!-~]{{1,{MAX_ID_CHARS}}}")


def id_ok(envelope_id: str) -> bool:
    return _ID_RE.fullmatch(envelope_id) is not None
