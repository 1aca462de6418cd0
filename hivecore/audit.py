"""The audit trail: who did what, appended to one hash-chained sqlite table (``audit``, store migration 10).

Every state-changing verb (a verb-table row without ``read_only``) is recorded where verbs are
dispatched (:func:`hivecore.verbs.bind.run_checked`), once, whatever the surface; the daemon's own
automatic actions are recorded through :meth:`hivecore.services.audit.AuditLog.record`. A row holds:

* ``at`` (epoch seconds, float), ``principal`` (``operator``/``manager``/``agent``/``daemon``) and
  ``via`` (``host_sock``/``dashboard``/``manager_sock``/``agent_sock``/``daemon``);
* who exactly (:class:`Actor`): a socket peer's ``uid``/``user`` (``SO_PEERCRED``); a dashboard
  session's identifier (``session``: a hash of the cookie, never the cookie), its ``session_login``
  time and ``client`` address; a bearer client's ``token`` identifier (a hash prefix, never the token);
  an agent socket's ``agent``;
* ``verb``, ``subject`` (the agent the request names, when it names one), ``args`` (the request's
  fields; secrets redacted: :func:`redacted_args`), ``outcome`` (``ok``/``refused``/``failed``/
  ``abandoned``) and ``error``, and the ``jobs``/``approvals`` ids it produced or acted on.

Tamper evidence: ``hash = sha256(prev_hash + "\\n" + canonical content)`` where the content is every
column but the two hashes, as sorted-key compact JSON (:func:`canonical`); the first row's
``prev_hash`` is :data:`GENESIS`. :func:`verify` recomputes the chain and names the first row that does
not match. Retention (:func:`vacuum`) drops old rows and puts one *checkpoint* row in their place
(the dropped rows' last ``seq``, ``hash`` = the last dropped row's hash): the chain of what is kept
starts from it. Anyone who can write the database can recompute a whole chain; what the chain gives
is that an edit of a row (or a deletion inside the chain) is caught unless every later hash is
rewritten too: note the last hash ``--verify`` prints somewhere else to pin the past.

Pure functions plus the sync SQL the store thread runs; the async service is
:mod:`hivecore.services.audit`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import pwd
import sqlite3
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Literal

import attrs

from hivecore.store import no_fsync, transaction

GENESIS = ""
"""The ``prev_hash`` of the first row of a chain that was never vacuumed."""
REDACTED = "<redacted>"
MAX_ARG_CHARS = 4096
"""A string argument is cut to what this many bytes of the row's ASCII JSON hold (4096 plain
characters; fewer where each is an escape: a message body is at most 4096 bytes)."""
DEFAULT_RETENTION_DAYS = 180.0
MAX_READ = 1000
"""The most rows one read returns (host.sock's 64 KiB line bounds nothing on the way out)."""

Outcome = Literal["ok", "refused", "failed", "abandoned"]


@attrs.frozen
class Actor:
    """Who exactly asked (decided by the surface, never by the request)."""

    principal: str
    """``operator``, ``manager``, ``agent`` or ``daemon``."""
    via: str
    """``host_sock``, ``dashboard``, ``manager_sock``, ``agent_sock`` or ``daemon``."""
    uid: int | None = None
    """A socket peer's uid (``SO_PEERCRED``)."""
    user: str | None = None
    """That uid's user name (``None``: no passwd entry)."""
    agent: str | None = None
    """An agent socket's agent (the manager socket: the manager's name)."""
    session: str | None = None
    """A dashboard session's identifier (``s:`` + 16 hex digits of a hash of its cookie)."""
    session_login: str | None = None
    """When that session logged in (RFC 3339, UTC)."""
    client: str | None = None
    """The dashboard client's address."""
    token: str | None = None
    """A bearer client's token identifier (``operator-token sha256:`` + 12 hex digits)."""

    def label(self) -> str:
        """One short line naming the actor (``operator via host_sock (uid 0 root)``)."""
        bits = [f"{self.principal} via {self.via}"]
        if self.uid is not None:
            bits.append(f"uid {self.uid}" + (f" {self.user}" if self.user else ""))
        for what in ("agent", "session", "token", "client"):
            value = getattr(self, what)
            if value is not None:
                bits.append(f"{what} {value}")
        return bits[0] + (f" ({', '.join(bits[1:])})" if len(bits) > 1 else "")


DAEMON = Actor("daemon", "daemon")
"""The daemon's own automatic actions (auto_update, crash recovery, expiries)."""


@attrs.frozen
class AuditRow:
    """One row as read back (``hivectl audit --json`` rows have these fields)."""

    seq: int
    at: float
    principal: str
    via: str
    verb: str
    outcome: str
    uid: int | None = None
    user: str | None = None
    agent: str | None = None
    session: str | None = None
    session_login: str | None = None
    client: str | None = None
    token: str | None = None
    subject: str | None = None
    args: dict[str, Any] = attrs.field(factory=dict)
    error: str | None = None
    jobs: list[int] = attrs.field(factory=list)
    approvals: list[int] = attrs.field(factory=list)
    checkpoint: bool = False
    """A retention checkpoint: the rows up to ``seq`` were dropped; ``hash`` is the last one's."""
    prev_hash: str = GENESIS
    hash: str = ""


@attrs.frozen
class Verified:
    """What :func:`verify` found: ``bad_seq`` is the first row that does not match (``None``: all do)."""

    rows: int
    bad_seq: int | None = None
    reason: str | None = None
    last_hash: str = GENESIS
    checkpoint_seq: int | None = None
    """The chain starts from this checkpoint (rows up to it were dropped by retention)."""

    @property
    def ok(self) -> bool:
        return self.bad_seq is None


# --- who: socket peers ----------------------------------------------------------------------------

_UCRED = struct.Struct("3i")


def peer_uid(sock: Any) -> int | None:
    """The uid of a Unix socket's peer (``SO_PEERCRED``), ``None`` if the socket cannot say."""
    import socket

    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str | None:
    """The passwd name of ``uid`` (cached: one lookup per uid per daemon), ``None`` if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def socket_actor(principal: str, via: str, sock: Any, *, agent: str | None = None) -> Actor:
    """The :class:`Actor` of a request on a Unix socket whose peer is ``sock``'s."""
    uid = peer_uid(sock)
    return Actor(principal, via, uid=uid, user=user_name(uid) if uid is not None else None, agent=agent)


def secret_id(secret: str, prefix: str, digits: int) -> str:
    """An identifier for ``secret`` that does not reveal it (a sha256 prefix)."""
    return prefix + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:digits]


# --- what: arguments ------------------------------------------------------------------------------


def _stored_size(char: str) -> int:
    """Bytes ``char`` takes in a row's ASCII JSON (:func:`dumps`): ``\\uXXXX`` escapes are 6 each."""
    code = ord(char)
    if code < 0x20:
        return 2 if char in "\b\f\n\r\t" else 6
    if code < 0x80:
        return 2 if char in '"\\' else 1
    return 6 if code < 0x10000 else 12


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        # cut by the stored size, not characters: 4096 emoji are 48 KiB of escapes
        size = 0
        for i, char in enumerate(value):
            size += _stored_size(char)
            if size > MAX_ARG_CHARS:
                return value[:i] + f"…(+{len(value) - i} chars)"
        return value
    if isinstance(value, list):
        return [_cut(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cut(v) for k, v in value.items()}
    return value


def redacted_args(request: Any) -> dict[str, Any]:
    """A request record's fields as JSON would carry them, secrets redacted.

    A secret is a field declared ``repr=False`` (the house rule for secrets: the login ``secret``,
    ``agent_env``'s ``set``): a mapping keeps its keys with every value redacted, anything else is
    :data:`REDACTED`. Long strings are cut to :data:`MAX_ARG_CHARS`.
    """
    from hivecore.wire.converter import converter

    out: dict[str, Any] = {}
    fields = attrs.fields(type(request)) if attrs.has(type(request)) else ()
    for a in fields:
        value = getattr(request, a.name)
        if not a.repr:
            if isinstance(value, Mapping):
                out[a.name] = {str(k): REDACTED for k in value}
            else:
                out[a.name] = None if value is None else REDACTED
            continue
        out[a.name] = _cut(converter.unstructure(value))
    return out


def subject_of(args: Mapping[str, Any]) -> str | None:
    """The one agent a request names (``name``, ``agent``, ``to``, ``target``: another hive's
    ``NAME@HIVE``, a one-name scope), if any."""
    for key in ("name", "agent", "to", "target"):
        value = args.get(key)
        if isinstance(value, str) and value:
            return value
    scope = args.get("scope")
    if isinstance(scope, Mapping):
        names = scope.get("agent_names")
        if isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
            return names[0]
    return None


# --- which jobs a verb produced (the lane notes each job it accepts) ------------------------------

_produced: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("audit_produced", default=None)


def note_job(job_id: int) -> None:
    """Called by the job lane for every job it accepts (or joins) in the caller's task: the verb
    being audited there (if any) produced it."""
    jobs = _produced.get()
    if jobs is not None and job_id not in jobs:
        jobs.append(job_id)


@contextlib.contextmanager
def collecting_jobs() -> Iterator[list[int]]:
    """The ids of the jobs accepted inside (in this task and tasks it starts)."""
    jobs: list[int] = []
    token = _produced.set(jobs)
    try:
        yield jobs
    finally:
        _produced.reset(token)


# --- who is asking, for a verb that passes it on (swarm_op: the far hive audits it too) -------------

_acting: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor", default=None)


def current_actor() -> Actor | None:
    """The :class:`Actor` of the verb running in this task (set by the verb table's server half)."""
    return _acting.get()


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


# --- the chain (pure) -----------------------------------------------------------------------------

CONTENT = (
    "seq",
    "at",
    "principal",
    "via",
    "uid",
    "user",
    "agent",
    "session",
    "session_login",
    "client",
    "token",
    "verb",
    "subject",
    "args",
    "outcome",
    "error",
    "jobs",
    "approvals",
    "checkpoint",
)
"""The columns a row's hash covers (``args``, ``jobs`` and ``approvals`` as their stored JSON text)."""


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no blanks, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical(content: Mapping[str, Any]) -> str:
    return dumps({k: content[k] for k in CONTENT})


def row_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    return hashlib.sha256(f"{prev_hash}\n{canonical(content)}".encode()).hexdigest()


def check_chain(rows: Iterator[Mapping[str, Any]], start: Verified | None = None) -> Verified:
    """Walk stored rows in ``seq`` order; the first one whose link or content does not match.
    ``start``: the result of the rows before these (a chunked walk), else the chain's beginning."""
    expected = start.last_hash if start is not None else GENESIS
    count = start.rows if start is not None else 0
    checkpoint: int | None = start.checkpoint_seq if start is not None else None
    for row in rows:
        count += 1
        seq = int(row["seq"])
        if row["checkpoint"]:
            if count != 1:
                return Verified(count, seq, "a checkpoint row inside the chain (only the first may be one)")
            checkpoint = seq
            expected = str(row["hash"])
            continue
        if row["prev_hash"] != expected:
            why = (
                "its prev_hash is not the previous row's hash (a row before it was removed or edited)"
                if count > 1
                else "the first row is not the start of the chain (rows before it were removed)"
            )
            return Verified(count, seq, why, expected, checkpoint)
        if row_hash(expected, row) != row["hash"]:
            return Verified(count, seq, "its content does not match its hash (the row was edited)", expected)
        expected = str(row["hash"])
    return Verified(count, None, None, expected, checkpoint)


# --- sql (sync, on the store thread) --------------------------------------------------------------

_COLUMNS = (*CONTENT, "prev_hash", "hash")


def append(conn: sqlite3.Connection, content: Mapping[str, Any], *, fsync: bool = True) -> int:
    """Append one row (``content`` without ``seq``; ``args``/``jobs``/``approvals`` as values): its seq.
    ``fsync=False``: committed without waiting for the disk (:func:`hivecore.store.no_fsync`)."""
    if not fsync:
        with no_fsync(conn):
            return append(conn, content)
    with transaction(conn):
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev = GENESIS if last is None else str(last[1])
        row = dict(content)
        row["seq"] = 1 if last is None else int(last[0]) + 1
        row["args"] = dumps(row.get("args") or {})
        row["jobs"] = dumps(sorted(row.get("jobs") or []))
        row["approvals"] = dumps(sorted(row.get("approvals") or []))
        row["checkpoint"] = 0
        row["prev_hash"] = prev
        row["hash"] = row_hash(prev, row)
        conn.execute(
            f"INSERT INTO audit({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [row[c] for c in _COLUMNS],
        )
        return int(row["seq"])


def content_of(
    actor: Actor,
    verb: str,
    args: Mapping[str, Any],
    outcome: Outcome,
    *,
    error: str | None = None,
    jobs: list[int] | None = None,
    approvals: list[int] | None = None,
    subject: str | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """The columns of one new row (for :func:`append`)."""
    return {
        "at": float(time.time() if at is None else at),  # REAL: an int would read back as a float
        **attrs.asdict(actor),
        "verb": verb,
        "subject": subject if subject is not None else subject_of(args),
        "args": dict(args),
        "outcome": outcome,
        "error": error,
        "jobs": list(jobs or []),
        "approvals": list(approvals or []),
    }


VERIFY_CHUNK = 500
"""Rows one :func:`verify_chunk` checks (~0.1 s of the store thread on a busy machine)."""


def verify_chunk(conn: sqlite3.Connection, after: int, start: Verified | None) -> tuple[Verified, int | None]:
    """Check the next :data:`VERIFY_CHUNK` rows after seq ``after``, continuing ``start``; the result
    so far and the seq to continue after (``None``: done, or a row did not match)."""
    rows = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, VERIFY_CHUNK)
    ).fetchall()
    found = check_chain(iter(rows), start)
    if not found.ok or len(rows) < VERIFY_CHUNK:
        return found, None
    return found, int(rows[-1]["seq"])


def verify(conn: sqlite3.Connection) -> Verified:
    """Recompute the whole chain at once (tests; the daemon walks it in chunks: :func:`verify_chunk`)."""
    found, after = verify_chunk(conn, 0, None)
    while after is not None:
        found, after = verify_chunk(conn, after, found)
    return found


def _row(r: sqlite3.Row) -> AuditRow:
    fields = {k: r[k] for k in r.keys()}  # noqa: SIM118  # Row has no iter
    fields["args"] = json.loads(fields["args"])
    fields["jobs"] = json.loads(fields["jobs"])
    fields["approvals"] = json.loads(fields["approvals"])
    fields["checkpoint"] = bool(fields["checkpoint"])
    return AuditRow(**fields)


def read(
    conn: sqlite3.Connection,
    *,
    since: float | None = None,
    agent: str | None = None,
    before: int | None = None,
    limit: int = 200,
) -> list[AuditRow]:
    """The newest ``limit`` rows (oldest first) at or after ``since`` (epoch s) and below seq
    ``before``; ``agent``: rows by that agent's socket, naming it, or producing/acting on its jobs
    or approvals."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    if agent is not None:
        where.append(
            "(audit.agent = ? OR subject = ? "
            "OR EXISTS (SELECT 1 FROM json_each(audit.approvals) j JOIN approvals a ON a.id = j.value "
            "WHERE a.agent = ?) "
            "OR EXISTS (SELECT 1 FROM json_each(audit.jobs) j JOIN jobs b ON b.id = j.value "
            "WHERE b.agent = ?))"
        )
        params += [agent] * 4
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    cur = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit{clause} ORDER BY seq DESC LIMIT ?",
        (*params, max(1, min(limit, MAX_READ))),
    )
    return [_row(r) for r in reversed(cur.fetchall())]


@attrs.frozen
class Vacuumed:
    audit_rows: int
    jobs: int


def vacuum(conn: sqlite3.Connection, cutoff: float) -> Vacuumed:
    """Drop audit rows and finished jobs older than ``cutoff`` (epoch s), in one transaction.

    Audit rows up to the newest old one are replaced by one checkpoint row (that row's ``seq``,
    its ``hash``): the kept chain still verifies from it. The newest job row is always kept (job ids
    continue from the journal's largest). Queued/running jobs are never dropped."""
    with transaction(conn):
        last_old = conn.execute(
            "SELECT seq, hash, at FROM audit WHERE at < ? ORDER BY seq DESC LIMIT 1", (cutoff,)
        ).fetchone()
        dropped = 0
        if last_old is not None:
            seq, hash_, at = int(last_old[0]), str(last_old[1]), float(last_old[2])
            (dropped,) = conn.execute(
                "SELECT count(*) FROM audit WHERE seq <= ? AND checkpoint = 0", (seq,)
            ).fetchone()
            if dropped:
                (before,) = conn.execute(
                    "SELECT coalesce(sum(json_extract(args, '$.dropped_rows')), 0) FROM audit "
                    "WHERE seq <= ? AND checkpoint = 1",
                    (seq,),
                ).fetchone()
                conn.execute("DELETE FROM audit WHERE seq <= ?", (seq,))
                row = content_of(
                    DAEMON,
                    "checkpoint",
                    {"dropped_rows": int(dropped) + int(before), "through_seq": seq},
                    "ok",
                    at=at,
                )
                row.update(
                    seq=seq,
                    args=dumps(row["args"]),
                    jobs="[]",
                    approvals="[]",
                    checkpoint=1,
                    prev_hash=GENESIS,
                    hash=hash_,
                )
                conn.execute(
                    f"INSERT INTO audit({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    [row[c] for c in _COLUMNS],
                )
        jobs = conn.execute(
            "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') "
            "AND coalesce(finished_at, queued_at) < ? AND id < (SELECT max(id) FROM jobs)",
            (cutoff,),
        ).rowcount
    return Vacuumed(int(dropped), int(jobs))


def resolved_by(actor: Actor) -> str:
    """Who approved or denied an approval, as one line: the text :mod:`hivecore.store` derives in SQL
    from that verb's audit row (``resolved_by`` on approval rows), so the live event and a reload
    agree (``operator via host_sock uid 0 root``)."""
    parts = [f"{actor.principal} via {actor.via}"]
    if actor.uid is not None:
        parts.append(f"uid {actor.uid}")
    if actor.user is not None:
        parts.append(actor.user)
    if actor.session is not None:
        parts.append(f"session {actor.session}")
    if actor.token is not None:
        parts.append(actor.token)
    if actor.client is not None:
        parts.append(f"from {actor.client}")
    return " ".join(parts)


Recorder = Callable[[str, Mapping[str, Any]], Awaitable[object]]
"""``await record(action, args)``: the audit trail's hook for the daemon's own actions
(:meth:`hivecore.services.audit.AuditLog.record`); an actor holds one as an optional attribute the
daemon sets, so the actor needs no audit import and its tests need no trail."""


async def record_quietly(
    record: Recorder | None, action: str, args: Mapping[str, Any], logger: logging.Logger
) -> None:
    """``await record(action, args)`` if there is a hook; a failing hook is logged, never raised:
    an automatic action (an expiry, a delivery, an alarm pass) never fails for its audit row."""
    if record is None:
        return
    try:
        await record(action, args)
    except Exception:
        logger.warning("could not record %s in the audit trail", action, exc_info=True)
