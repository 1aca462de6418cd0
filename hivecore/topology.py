"""Topology: who an agent may address, and who asked for it (issue 18 item 7).

* **Allowed recipients.** ``hyperhive.allowedRecipients = [ "bob" ];`` in an agent's ``agent.nix``
  limits whom it may ``send`` to (and ``ask``): the manager and the operator are always allowed.
  The daemon never reads that text: the value comes out of the agent's *confined* evaluation
  (``hiveAgents.<n>.allowedRecipients``, :meth:`hivecore.meta.MetaRepo.evaluate`), and is recorded
  here when that evaluation is deployed (:meth:`hivecore.services.meta_build.MetaBuild`). No list
  (``null``, the default) means no limit.
* **Parent.** Who requested an agent's spawn: ``hm1nd`` (a manager's ``request_spawn`` the operator
  approved) or ``operator`` (the operator's own request or ``spawn``); the manager has none. The
  dashboard's SW4RM tree shows agents under their parents.

Both live in the ``topology`` table (store migration 18), one row per agent, dropped at purge.
The functions taking a connection run on the store's thread (inside the caller's transaction when
there is one). :func:`check_recipient` is the one gate every addressing verb calls.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from hivecore.errors import Refused
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME, is_manager

ALWAYS_ALLOWED = frozenset({MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME})
"""Recipients no ``allowedRecipients`` can exclude."""
MAX_ALLOWED = 256
"""Entries of one ``allowedRecipients`` list."""


class RecipientNotAllowed(Refused):
    """A send (or ask) to a recipient its sender's ``allowedRecipients`` leaves out; nothing was written."""


def refusal(sender: str, recipient: str, allowed: Sequence[str] | None) -> str | None:
    """Why ``sender`` may not address ``recipient`` under ``allowed`` (its list), or ``None``. Pure."""
    if allowed is None or recipient in ALWAYS_ALLOWED or recipient in allowed:
        return None
    listed = ", ".join(allowed) if allowed else "nobody else"
    return (
        f"{sender} may not address {recipient}: hyperhive.allowedRecipients in the agent.nix of "
        f"{sender} allows {listed} (the manager and the operator are always allowed)"
    )


def parse_allowed(value: object) -> tuple[str, ...] | None:
    """``allowedRecipients`` as the evaluation gave it: ``None``, or a list of strings (de-duplicated,
    order kept); :class:`TypeError` otherwise."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("hyperhive.allowedRecipients must be a list of agent names")
    if len(value) > MAX_ALLOWED:
        raise TypeError(f"hyperhive.allowedRecipients lists more than {MAX_ALLOWED} names")
    return tuple(dict.fromkeys(value))


# --- the store (run on its thread) ---------------------------------------------------------------


def _upsert(conn: sqlite3.Connection, agent: str, column: str, value: str | None) -> None:
    assert column in ("parent", "allowed_recipients")
    conn.execute(
        f"INSERT INTO topology(agent, {column}) VALUES (?, ?) "
        f"ON CONFLICT(agent) DO UPDATE SET {column}=excluded.{column}",
        (agent, value),
    )


def set_parent(conn: sqlite3.Connection, agent: str, parent: str | None) -> None:
    """Record who requested ``agent``'s spawn (a later spawn of the name replaces it)."""
    _upsert(conn, agent, "parent", parent)


def set_allowed(conn: sqlite3.Connection, agent: str, allowed: Sequence[str] | None) -> None:
    """Record ``agent``'s deployed ``allowedRecipients`` (``None``: no limit)."""
    _upsert(conn, agent, "allowed_recipients", None if allowed is None else json.dumps(list(allowed)))


def forget(conn: sqlite3.Connection, agent: str) -> None:
    """A purged agent's row goes with its state."""
    conn.execute("DELETE FROM topology WHERE agent=?", (agent,))


def allowed(conn: sqlite3.Connection, agent: str) -> tuple[str, ...] | None:
    """``agent``'s recorded ``allowedRecipients`` (``None``: no limit, or nothing recorded)."""
    row = conn.execute("SELECT allowed_recipients FROM topology WHERE agent=?", (agent,)).fetchone()
    if row is None or row[0] is None:
        return None
    return tuple(json.loads(row[0]))


def parents(conn: sqlite3.Connection, agents: Iterable[str]) -> dict[str, str]:
    """``agent → parent`` for those of ``agents`` that have one recorded."""
    wanted = list(agents)
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT agent, parent FROM topology WHERE parent IS NOT NULL AND agent IN ({marks})", chunk
        )
        out.update({row[0]: row[1] for row in rows})
    return out


def check_recipients(conn: sqlite3.Connection, sender: str, recipients: Iterable[str]) -> None:
    """:class:`RecipientNotAllowed` (naming the rule) unless ``sender`` may address every one of
    ``recipients`` (broker inbox names: ``manager``, ``operator`` or an agent)."""
    if is_manager(sender):
        return  # the manager's socket is not limited (it must reach every agent it manages)
    limit = allowed(conn, sender)
    if limit is None:
        return
    for recipient in recipients:
        why = refusal(sender, recipient, limit)
        if why is not None:
            raise RecipientNotAllowed(why)


def check_recipient(conn: sqlite3.Connection, sender: str, recipient: str) -> None:
    """:func:`check_recipients` for one recipient: the gate for ``ask`` (and any verb that
    addresses another agent). Call it on the store's thread, in the transaction that writes."""
    check_recipients(conn, sender, (recipient,))


def broadcast_targets(conn: sqlite3.Connection, sender: str, inboxes: Sequence[str]) -> list[str]:
    """The inboxes of a ``*`` broadcast ``sender`` may reach (all of them without a limit)."""
    limit = allowed(conn, sender)
    return [i for i in inboxes if refusal(sender, i, limit) is None]
