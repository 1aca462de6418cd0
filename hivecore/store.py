"""sqlite store: approvals (the audit trail) and broker messages.

One connection, one writer: the :class:`Store` actor owns the connection and runs every call in a
worker thread, strictly one after another, in the order requests arrived. A request that has been
sent runs to completion even if its caller is cancelled meanwhile (the caller just never sees the
answer), so a cancelled caller never leaves a half-applied transaction.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` are applied forward, each
in its own transaction, at open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import outcome
import trio

from hivecore.errors import HiveError, Refused
from hivecore.models import Approval, Job
from hivecore.wire.converter import converter

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: approvals (reference §2.3) and broker messages (reference §10.1)
    """
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        kind TEXT NOT NULL,
        commit_ref TEXT NOT NULL DEFAULT '',
        fetched_sha TEXT,
        requested_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        resolved_at TEXT,
        note TEXT,
        description TEXT
    );
    CREATE INDEX approvals_agent_status ON approvals(agent, status);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        body TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        delivered_at INTEGER,
        acked_at INTEGER,
        in_reply_to INTEGER REFERENCES messages(id)
    );
    CREATE INDEX messages_inbox ON messages(recipient, delivered_at, id);
    """,
    # 2: the job lane's journal (actors/rebuild_queue.py)
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        agent TEXT,
        source TEXT NOT NULL,
        state TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        queued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        parent_id INTEGER
    );
    CREATE INDEX jobs_state ON jobs(state);
    """,
    # 3: broker leases (hivecore/services/broker.py): which connection a delivered row was handed
    # to (``lease``) and whether it has been handed out more than once (``redelivered``)
    """
    ALTER TABLE messages ADD COLUMN lease INTEGER;
    ALTER TABLE messages ADD COLUMN redelivered INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_unacked ON messages(recipient, acked_at, id);
    """,
    # 4: the per-sender quota on queued messages (hivecore/services/broker.py) counts a sender's
    # unacked rows on every send
    """
    CREATE INDEX messages_sender_unacked ON messages(sender) WHERE acked_at IS NULL;
    """,
    # 5: the stored review of an approval (computed once, at request time: hivecore/review.py) and
    # who asked (the pending quota is per requester); rows from before have none of them
    """
    ALTER TABLE approvals ADD COLUMN requester TEXT;
    ALTER TABLE approvals ADD COLUMN review_files TEXT;
    ALTER TABLE approvals ADD COLUMN review_diff TEXT;
    ALTER TABLE approvals ADD COLUMN commit_message TEXT;
    ALTER TABLE approvals ADD COLUMN agent_nix TEXT;
    CREATE INDEX approvals_requester_status ON approvals(requester, status);
    """,
    # 6: intent (hivecore/jobkinds.py): the agents the operator stopped on purpose, so a restart, a
    # rebuild or a meta update leaves them stopped
    """
    CREATE TABLE stopped_on_purpose (
        agent TEXT PRIMARY KEY,
        since REAL NOT NULL
    );
    """,
    # 7: incarnations (hivecore/services/broker.py): every spawn of a name is one; queued messages to an
    # agent and its pending apply_commit approvals are bound to the one they were sent/made for, and
    # ``undelivered_at`` marks the rows its end (a purge) took from the queue. Rows from before go to
    # one incarnation per agent recipient (ended at the next start if that agent is gone).
    """
    CREATE TABLE incarnations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER
    );
    CREATE UNIQUE INDEX incarnations_live ON incarnations(agent) WHERE ended_at IS NULL;
    ALTER TABLE messages ADD COLUMN incarnation INTEGER;
    ALTER TABLE messages ADD COLUMN undelivered_at INTEGER;
    ALTER TABLE approvals ADD COLUMN incarnation INTEGER;
    INSERT INTO incarnations(agent, started_at)
        SELECT DISTINCT recipient, 0 FROM messages
        WHERE recipient NOT IN ('operator', 'manager') ORDER BY recipient;
    UPDATE messages SET incarnation = (
        SELECT i.id FROM incarnations i WHERE i.agent = messages.recipient AND i.ended_at IS NULL
    ) WHERE recipient NOT IN ('operator', 'manager');
    UPDATE approvals SET incarnation = (
        SELECT i.id FROM incarnations i WHERE i.agent = approvals.agent AND i.ended_at IS NULL
    ) WHERE kind = 'apply_commit' AND status = 'pending'
    """,
    # 8: usage per agent (hivecore/usage.py): one row per reported turn (capped per agent) and
    # running totals that outlive the cap
    """
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        ended_at REAL NOT NULL,
        duration REAL NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_creation_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        tool_calls INTEGER NOT NULL,
        status TEXT NOT NULL
    );
    CREATE INDEX turns_agent_ended ON turns(agent, ended_at);
    CREATE TABLE usage_totals (
        agent TEXT PRIMARY KEY,
        turns INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL
    );
    """,
    # 9: usage rows by agent and id: the per-agent cap's prune and the last turn's lookup walk this
    # index instead of every row of the agent (a report took 18 ms with 5,000 rows kept, 0.3 ms with it)
    """
    CREATE INDEX turns_agent_id ON turns(agent, id);
    """,
    # 10: questions (hivecore/services/questions.py; reference §10.1 ``operator_questions``): to the
    # operator (target NULL) or to a peer; bound to the asker's (and target's) incarnation
    """
    CREATE TABLE operator_questions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        asker TEXT NOT NULL,
        question TEXT NOT NULL,
        options_json TEXT NOT NULL DEFAULT '[]',
        multi INTEGER NOT NULL DEFAULT 0,
        asked_at INTEGER NOT NULL,
        deadline_at INTEGER,
        answered_at INTEGER,
        answer TEXT,
        target TEXT,
        cancelled INTEGER NOT NULL DEFAULT 0,
        answerer TEXT,
        asker_incarnation INTEGER,
        target_incarnation INTEGER
    );
    CREATE INDEX operator_questions_open ON operator_questions(answered_at, deadline_at);
    CREATE INDEX operator_questions_asker ON operator_questions(asker, answered_at);
    """,
    # 11: alarms (actors/alarms.py): agents held stopped after a crash loop, until the operator
    # releases them
    """
    CREATE TABLE held_agents (
        agent TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    );
    """,
    # 12: reminders (hivecore/reminder_store.py, reference §10.1): one row per ``remind``, bound to
    # the caller's incarnation; ``fire_at`` is when the next delivery is tried (``due_at``, then the
    # retries' backoff)
    """
    CREATE TABLE reminders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        message TEXT NOT NULL,
        file_path TEXT,
        due_at REAL NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        fire_at REAL NOT NULL,
        incarnation INTEGER
    );
    CREATE INDEX reminders_fire ON reminders(fire_at) WHERE status = 'pending';
    CREATE INDEX reminders_agent ON reminders(agent, status);
    """,
    # 13: the open (unacked) rows per inbox, which every /metrics scrape counts
    # (hivecore/metrics.py::read_db_facts): a walk over the open rows only, not every row kept 30 days
    """
    CREATE INDEX messages_open ON messages(recipient, sent_at)
        WHERE acked_at IS NULL AND undelivered_at IS NULL;
    """,
    # 14: scheduled prompts (hivecore/schedule_store.py, reference §10.1 ``scheduled_prompts``): the
    # operator's (or an approved request's) prompts to one or more agents, and each target's last result
    """
    CREATE TABLE scheduled_prompts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        body TEXT NOT NULL,
        interval_seconds INTEGER,
        next_fire_at REAL,
        created_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT 'operator',
        cancelled_at REAL,
        description TEXT,
        state TEXT NOT NULL DEFAULT 'active'
    );
    CREATE INDEX scheduled_prompts_due ON scheduled_prompts(next_fire_at) WHERE state = 'active';
    CREATE TABLE scheduled_prompt_targets (
        schedule_id INTEGER NOT NULL REFERENCES scheduled_prompts(id) ON DELETE CASCADE,
        target TEXT NOT NULL,
        cancelled_at REAL,
        last_fired_at REAL,
        last_result TEXT,
        fired INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (schedule_id, target)
    );
    """,
    # 15: the audit trail (hivecore/audit.py): one hash-chained row per state-changing verb and per
    # automatic action of the daemon; ``seq`` is explicit (a retention checkpoint takes a dropped seq)
    """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        principal TEXT NOT NULL,
        via TEXT NOT NULL,
        uid INTEGER,
        user TEXT,
        agent TEXT,
        session TEXT,
        session_login TEXT,
        client TEXT,
        token TEXT,
        verb TEXT NOT NULL,
        subject TEXT,
        args TEXT NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        jobs TEXT NOT NULL,
        approvals TEXT NOT NULL,
        checkpoint INTEGER NOT NULL DEFAULT 0,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_subject ON audit(subject);
    CREATE INDEX audit_resolutions ON audit(approvals, seq) WHERE verb IN ('approve', 'deny');
    """,
    # 16: swarm mail (issue 20 item 3; hivecore/swarm_mail.py): the sender's outbox until JetStream acked
    # the publish, and the receiver's de-dup of JetStream redeliveries (one row per envelope id)
    """
    CREATE TABLE swarm_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        hive TEXT NOT NULL,
        recipient TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE swarm_received (
        envelope TEXT PRIMARY KEY,
        message_id INTEGER,
        received_at INTEGER NOT NULL
    );
    """,
    # 17: the background evaluation of a proposal (hivecore/review_eval.py): status, nix's
    # error, the runtime changes (JSON of RuntimeChange rows), when it finished
    """
    ALTER TABLE approvals ADD COLUMN eval_status TEXT;
    ALTER TABLE approvals ADD COLUMN eval_error TEXT;
    ALTER TABLE approvals ADD COLUMN eval_changes TEXT;
    ALTER TABLE approvals ADD COLUMN evaluated_at TEXT;
    """,
    # 18: topology (hivecore/topology.py): who requested each agent's spawn, and the
    # allowedRecipients its deployed agent.nix evaluated to (JSON list; NULL: no limit); replies by
    # the message they answer (loose ends' threads)
    """
    CREATE TABLE topology (
        agent TEXT PRIMARY KEY,
        parent TEXT,
        allowed_recipients TEXT
    );
    -- loose ends (hivecore/loose_ends.py): has anyone answered this message yet?
    CREATE INDEX messages_in_reply_to ON messages(in_reply_to) WHERE in_reply_to IS NOT NULL;
    """,
    # 19: ask across hives (hivecore/swarm_ask.py): an outbox row of an ask or an answer carries the
    # question's part of the envelope (JSON; NULL: plain mail); a question another hive asked here
    # maps to its id on the asking hive
    """
    ALTER TABLE swarm_outbox ADD COLUMN question TEXT;
    CREATE TABLE swarm_questions (
        question_id INTEGER PRIMARY KEY,
        hive TEXT NOT NULL,
        remote_id INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    pass


class StoreUnavailable(HiveError):
    """The store actor stopped while a request was in flight."""


class StoreFull(HiveError):
    """sqlite answered "database or disk is full": nothing was written."""

    http_status = 507


@attrs.frozen
class StoreStatistics:
    calls: int
    queued: int


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


DB_FILE_MODE = 0o600
"""The database (and its -wal/-shm, which sqlite creates with the database's mode): owner only."""


def _owner_only(path: Path) -> None:
    """Create ``path`` 0600 if missing; take group/other bits off an existing one of ours."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, DB_FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)
            log.warning(
                "store: %s was open to group/others (%#o); tightened to %#o",
                path,
                stat.S_IMODE(st.st_mode),
                stat.S_IMODE(st.st_mode) & ~0o077,
            )
    finally:
        os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the database with WAL, a busy timeout and the current schema."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(path)
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists():
            _owner_only(side)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # each commit is on disk before it returns (see no_fsync)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


@contextlib.contextmanager
def no_fsync(conn: sqlite3.Connection) -> Iterator[None]:
    """Commit what runs inside without waiting for the disk (``PRAGMA synchronous=NORMAL``).

    With WAL, such a commit survives the daemon's death (``kill -9``: it is in the OS's page cache)
    but not a power loss until the next full commit (any send, approval or migration) or a WAL
    checkpoint syncs it. For writes that can be redone: delivery and ack marks, the job journal.
    Run outside any open transaction (sqlite ignores the pragma inside one)."""
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=FULL")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on any error, ``ROLLBACK`` and the error itself is raised.

    sqlite ends a transaction by itself on some errors (``database or disk is full``, an I/O
    error): then there is nothing to roll back, and a ``ROLLBACK`` would raise "cannot rollback - no
    transaction is active" in place of the real error. A rollback that fails is logged, never
    raised over the error that caused it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("store: rollback failed", exc_info=True)
        raise


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is sqlite's "database or disk is full" (``SQLITE_FULL``)."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the resulting schema version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this hive-c0re understands ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
        log.info("store: migrated schema to version %d", target)
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT implicitly; split so a migration stays one transaction
    return [s.strip() for s in script.split(";") if s.strip()]


# --- approvals (sync, run on the store thread) ---------------------------------------------------


_RESOLVED_BY = (
    # who approved or denied it: the newest approve/deny row of the audit trail (hivecore/audit.py)
    # naming this approval that did not just refuse (NULL: none kept, or retention dropped it)
    "(SELECT principal || ' via ' || via || coalesce(' uid ' || uid, '') || coalesce(' ' || user, '') "
    "|| coalesce(' session ' || session, '') || coalesce(' ' || token, '') "
    "|| coalesce(' from ' || client, '') FROM audit "
    "WHERE verb IN ('approve', 'deny') AND audit.approvals = '[' || approvals.id || ']' "
    "AND outcome IN ('ok', 'failed') AND approvals.status != 'pending' "
    "ORDER BY seq DESC LIMIT 1) AS resolved_by"
)
_BASE = (
    "id, agent, kind, commit_ref, fetched_sha, requested_at, status, resolved_at, note, description, "
    f"requester, eval_status, eval_error, eval_changes, evaluated_at, {_RESOLVED_BY}"
)


class QuotaExceeded(Refused):
    """A requester already has as many pending approvals as its quota allows."""


def _approval(row: sqlite3.Row) -> Approval:
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118  # Row has no iter
    files = fields.pop("review_files", None)
    diff = fields.pop("review_diff", None)
    if files is not None:
        fields["files"] = json.loads(files)
    fields["diff"] = diff
    status = fields.pop("eval_status", None)
    error = fields.pop("eval_error", None)
    changes = fields.pop("eval_changes", None)
    evaluated_at = fields.pop("evaluated_at", None)
    if status is not None:
        fields["evaluation"] = {
            "status": status,
            "error": error,
            "changes": json.loads(changes) if changes is not None else None,
            "evaluated_at": evaluated_at,
        }
    return converter.structure(fields, Approval)


_REVIEW = "review_files, review_diff, commit_message, agent_nix"


def list_approvals(
    conn: sqlite3.Connection, *, review: bool = False, only_pending: bool = False
) -> list[Approval]:
    """Every row (``only_pending``: the pending ones), oldest first; with ``review``, pending rows
    carry their stored review fields."""
    where = " WHERE status='pending'" if only_pending else ""
    if not review:
        return [_approval(r) for r in conn.execute(f"SELECT {_BASE} FROM approvals{where} ORDER BY id")]
    query = (
        f"SELECT {_BASE}, CASE WHEN status='pending' THEN review_files END AS review_files, "
        "CASE WHEN status='pending' THEN review_diff END AS review_diff, "
        "CASE WHEN status='pending' THEN commit_message END AS commit_message, "
        f"CASE WHEN status='pending' THEN agent_nix END AS agent_nix FROM approvals{where} ORDER BY id"
    )
    return [_approval(r) for r in conn.execute(query)]


def _insert(
    conn: sqlite3.Connection,
    agent: str,
    kind: str,
    commit_ref: str,
    description: str | None,
    requester: str | None,
    fetched_sha: str | None,
    agent_nix: str | None,
) -> Approval:
    cur = conn.execute(
        "INSERT INTO approvals(agent, kind, commit_ref, requested_at, description, requester, fetched_sha,"
        " agent_nix, incarnation) VALUES (?,?,?,?,?,?,?,?,"
        " (SELECT id FROM incarnations WHERE agent=? AND ended_at IS NULL))",
        (agent, kind, commit_ref, now_rfc3339(), description, requester, fetched_sha, agent_nix, agent),
    )
    row = conn.execute(f"SELECT {_BASE} FROM approvals WHERE id=?", (cur.lastrowid,)).fetchone()
    return _approval(row)


def _check_quota(conn: sqlite3.Connection, requester: str | None, quota: int | None) -> None:
    if quota is None or requester is None:
        return
    (count,) = conn.execute(
        "SELECT count(*) FROM approvals WHERE requester=? AND status='pending'", (requester,)
    ).fetchone()
    if count >= quota:
        raise QuotaExceeded(
            f"the {requester} already has {count} pending approvals (quota: {quota} per requester); "
            "wait for the operator to approve or deny some"
        )


def insert_approval(
    conn: sqlite3.Connection,
    agent: str,
    kind: str,
    commit_ref: str = "",
    description: str | None = None,
    **kw: Any,
) -> Approval:
    """Insert a pending approval (see :func:`insert_approval_unless_pending` for the options)."""
    approval = _insert_checked(conn, agent, kind, commit_ref, description, **kw)
    assert approval is not None
    return approval


def _insert_checked(
    conn: sqlite3.Connection,
    agent: str,
    kind: str,
    commit_ref: str = "",
    description: str | None = None,
    *,
    requester: str | None = None,
    quota: int | None = None,
    fetched_sha: str | None = None,
    agent_nix: str | None = None,
    unless_pending: bool = False,
) -> Approval | None:
    """Insert a pending approval; :class:`QuotaExceeded` when ``requester`` already has ``quota``
    pending ones; ``None`` (nothing inserted) when ``unless_pending`` and ``agent`` already has a
    pending one of ``kind``."""
    with transaction(conn):
        busy = (
            unless_pending
            and conn.execute(
                "SELECT 1 FROM approvals WHERE agent=? AND kind=? AND status='pending'", (agent, kind)
            ).fetchone()
        )
        approval = None
        if not busy:
            _check_quota(conn, requester, quota)
            approval = _insert(conn, agent, kind, commit_ref, description, requester, fetched_sha, agent_nix)
    return approval


def fail_pending_for_agent(conn: sqlite3.Connection, agent: str, note: str) -> list[Approval]:
    """Mark every pending approval of ``agent`` failed with ``note``; the failed rows (one transaction)."""
    with transaction(conn):
        ids = [
            r[0]
            for r in conn.execute("SELECT id FROM approvals WHERE agent=? AND status='pending'", (agent,))
        ]
        out = [a for a in (resolve_approval(conn, i, "failed", note) for i in ids) if a is not None]
    return out


def get_approval(conn: sqlite3.Connection, approval_id: int, *, review: bool = False) -> Approval | None:
    """The row (None if there is none); with ``review``, its stored review fields whatever its status."""
    columns = f"{_BASE}, {_REVIEW}" if review else _BASE
    row = conn.execute(f"SELECT {columns} FROM approvals WHERE id=?", (approval_id,)).fetchone()
    return _approval(row) if row is not None else None


def insert_approval_unless_pending(
    conn: sqlite3.Connection,
    agent: str,
    kind: str,
    commit_ref: str = "",
    description: str | None = None,
    **kw: Any,
) -> Approval | None:
    """Insert a pending approval unless ``agent`` already has a pending one of ``kind`` (then None).

    Options: ``requester`` and ``quota`` (:class:`QuotaExceeded` when the requester already has
    ``quota`` pending rows), ``fetched_sha`` and ``agent_nix`` (a spawn's review).
    """
    return _insert_checked(conn, agent, kind, commit_ref, description, unless_pending=True, **kw)


def set_fetched_sha(conn: sqlite3.Connection, approval_id: int, sha: str) -> None:
    conn.execute("UPDATE approvals SET fetched_sha=? WHERE id=?", (sha, approval_id))


def set_review(
    conn: sqlite3.Connection,
    approval_id: int,
    sha: str,
    files: str,
    diff: str,
    commit_message: str,
    agent_nix: str | None = None,
) -> None:
    """Store the pinned sha and the review of an apply_commit or of a spawn of a prepared config
    (``files``: JSON of ``ReviewFile`` rows; ``agent_nix``: the spawn's)."""
    conn.execute(
        "UPDATE approvals SET fetched_sha=?, review_files=?, review_diff=?, commit_message=?, "
        "agent_nix=coalesce(?, agent_nix) WHERE id=?",
        (sha, files, diff, commit_message, agent_nix, approval_id),
    )


def set_evaluation(
    conn: sqlite3.Connection,
    approval_id: int,
    status: str,
    error: str | None = None,
    changes: str | None = None,
    *,
    only_pending: bool = True,
) -> bool:
    """Store an approval's review evaluation (``changes``: JSON of ``RuntimeChange`` rows); with
    ``only_pending`` only while the row is pending. Whether a row changed."""
    where = " AND status='pending'" if only_pending else ""
    evaluated = None if status == "pending" else now_rfc3339()
    cur = conn.execute(
        f"UPDATE approvals SET eval_status=?, eval_error=?, eval_changes=?, evaluated_at=? WHERE id=?{where}",
        (status, error, changes, evaluated, approval_id),
    )
    return cur.rowcount == 1


def unevaluated_approvals(conn: sqlite3.Connection) -> list[tuple[int, str | None]]:
    """``(id, requester)`` of every pending approval whose evaluation has not finished, oldest first."""
    return [
        (int(r[0]), r[1])
        for r in conn.execute(
            "SELECT id, requester FROM approvals WHERE status='pending' AND eval_status='pending' ORDER BY id"
        )
    ]


def resolve_approval(
    conn: sqlite3.Connection, approval_id: int, status: str, note: str | None = None
) -> Approval | None:
    """Move a *pending* approval to ``status`` (with ``resolved_at`` and ``note``); None if it was not
    pending (already resolved, or unknown): a row resolves exactly once."""
    cur = conn.execute(
        "UPDATE approvals SET status=?, resolved_at=?, note=? WHERE id=? AND status='pending'",
        (status, now_rfc3339(), note, approval_id),
    )
    return get_approval(conn, approval_id) if cur.rowcount == 1 else None


def approval_for_live_incarnation(conn: sqlite3.Connection, approval_id: int) -> bool:
    """Whether the agent incarnation approval ``approval_id`` was made for is still the live one (a
    row from before incarnations, bound to none, counts as live)."""
    row = conn.execute(
        "SELECT a.incarnation IS NULL OR a.incarnation = "
        "(SELECT i.id FROM incarnations i WHERE i.agent = a.agent AND i.ended_at IS NULL) "
        "FROM approvals a WHERE a.id=?",
        (approval_id,),
    ).fetchone()
    return row is not None and bool(row[0])


# --- incarnations (sync, run on the store thread) ---------------------------------------------------


def live_incarnation(conn: sqlite3.Connection, agent: str) -> int | None:
    """The id of ``agent``'s live incarnation (spawned, not purged), if it has one."""
    row = conn.execute("SELECT id FROM incarnations WHERE agent=? AND ended_at IS NULL", (agent,)).fetchone()
    return None if row is None else int(row[0])


def begin_incarnation(conn: sqlite3.Connection, agent: str, now: int) -> int:
    """``agent``'s live incarnation: the one a destroy kept (a revive), else a new one."""
    with transaction(conn):
        live = live_incarnation(conn, agent)
        if live is not None:
            return live
        cur = conn.execute("INSERT INTO incarnations(agent, started_at) VALUES (?, ?)", (agent, now))
        assert cur.lastrowid is not None
        return cur.lastrowid


@attrs.frozen
class Undelivered:
    """A message an ended incarnation never acked (``delivered``: it was handed out, not acked)."""

    id: int
    sender: str
    recipient: str
    body: str
    delivered: bool


def end_incarnation(conn: sqlite3.Connection, agent: str, now: int) -> tuple[int | None, list[Undelivered]]:
    """End ``agent``'s live incarnation (one transaction): every message to it not acked yet (queued
    or in flight) is marked ``undelivered_at`` and never handed out again, and so is any row to
    ``agent`` bound to no live incarnation. The ended id (None: there was none) and those rows."""
    with transaction(conn):
        live = live_incarnation(conn, agent)
        if live is not None:
            conn.execute("UPDATE incarnations SET ended_at=? WHERE id=?", (now, live))
        rows = conn.execute(
            "SELECT id, sender, recipient, body, delivered_at FROM messages WHERE recipient=? "
            "AND acked_at IS NULL AND undelivered_at IS NULL ORDER BY id",
            (agent,),
        ).fetchall()
        conn.execute(
            "UPDATE messages SET undelivered_at=? WHERE recipient=? AND acked_at IS NULL "
            "AND undelivered_at IS NULL",
            (now, agent),
        )
    return live, [Undelivered(r[0], r[1], r[2], r[3], r[4] is not None) for r in rows]


def live_incarnations(conn: sqlite3.Connection) -> list[str]:
    """The agents with a live incarnation."""
    return [
        r[0] for r in conn.execute("SELECT agent FROM incarnations WHERE ended_at IS NULL ORDER BY agent")
    ]


def fail_unfetched_apply_commits(conn: sqlite3.Connection, note: str) -> list[int]:
    """Pending apply_commit rows without a ``fetched_sha`` (their request was interrupted) → failed."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM approvals WHERE kind='apply_commit' AND status='pending' AND fetched_sha IS NULL"
        )
    ]
    for approval_id in ids:
        resolve_approval(conn, approval_id, "failed", note)
    return ids


class Reader:
    """Read-only connections to the store's database for worker threads (WAL: a reader never waits
    for the writer, nor the writer for it), so a thread that gathers other facts reads the database
    in its own hop instead of queueing a store call: the views actor's scans read each agent's usage
    this way (:meth:`hivecore.services.usage.Usage.read_activity`). ``PRAGMA query_only``: nothing
    is ever written through one. Blocking; safe from several threads at once (one connection each,
    kept for the next read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one read transaction (one snapshot of the database); its result. Raises
        :class:`sqlite3.Error` (the database is missing, locked past the busy timeout, broken)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
            finally:
                conn.execute("COMMIT")
        except BaseException:
            conn.close()  # whatever state it is in, it is not reused
            raise
        with self._lock:
            self._idle.append(conn)
        return result

    def _open(self) -> sqlite3.Connection:
        # mode=rw: never create the database (the store does, with its mode and schema)
        uri = f"{self.path.absolute().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn


QUEUE_LIMIT = 64
"""Requests sent and not yet answered before a caller waits for room (backpressure)."""


class _Request:
    """One call: ``fn`` and, once the store thread ran it, its outcome (``None``: never ran)."""

    __slots__ = ("done", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[Any] | None = None
        self.done = trio.Event()


_STOP = object()
"""Put on the queue by :meth:`Store.run` when it is cancelled: the store thread ends after it."""


class Store:
    """The store actor: owns the connection; ``await store.call(fn)`` runs ``fn(conn)`` in order.

    The connection lives on one thread of its own (started by :meth:`run`, on a thread token of its
    own: a slow file walk elsewhere never delays the database) that takes requests from a FIFO
    queue. A caller puts its request on the queue and waits for the answer, which the store thread
    hands straight back to the trio loop (``run_sync_soon``): one thread hop per call and no task
    hand-off in between (``bench/broker.py``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._unanswered = 0
        self._room = trio.Event()
        self._calls = 0
        self._thread = trio.CapacityLimiter(1)
        self._stopped = False
        """Set when :meth:`run` ends: later calls fail at once instead of waiting for an answer."""
        self.reader = Reader(path)
        """Reads from worker threads without a store call (:class:`Reader`)."""
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        """Held by whichever thread uses the connection: the store thread, or :meth:`write_here`."""

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the store thread after every earlier request; return its result.

        Cancellation while waiting abandons the answer, not the work: once sent, ``fn`` still runs.
        Raises :class:`StoreUnavailable` when the store has stopped (shutdown) or stops before
        answering: a caller never waits on an answer that cannot come.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # a caller cancelled already sends nothing
        while self._unanswered >= QUEUE_LIMIT and not self._stopped:
            await self._room.wait()
        if self._stopped:
            raise StoreUnavailable("the database is closed: the daemon is stopping")
        request = _Request(fn)
        self._unanswered += 1
        self._queue.put(request)  # sent: from here on it runs, whatever happens to this caller
        await request.done.wait()
        result: outcome.Outcome[T] | None = request.result
        if result is None:
            raise StoreUnavailable("the database stopped before answering; try again")
        if isinstance(result, outcome.Error) and is_full(result.error):
            raise StoreFull(
                f"the database cannot be written: {result.error} ({self.path}); nothing was saved. "
                "Free space on its filesystem and try again"
            ) from result.error
        return result.unwrap()

    def _answer(self, request: _Request, result: outcome.Outcome[Any] | None) -> None:
        """On the trio thread: hand ``result`` to the caller (gone, if it was cancelled: the work is
        done regardless)."""
        self._unanswered -= 1
        if result is not None:
            self._calls += 1
        request.result = result
        request.done.set()
        if self._unanswered < QUEUE_LIMIT:
            self._room.set()
            self._room = trio.Event()

    def write_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in *this* worker thread (blocking: never on the trio thread), between two
        requests of the store thread: a step that already has a thread hop of its own writes without
        a second one (an atomic job's journal row beside its one file write). It does not queue
        behind requests sent earlier: only for a write no earlier request needs to precede. Raises
        :class:`StoreUnavailable` when the store is not running, or what ``fn`` raises."""
        with self._conn_lock:
            if self._conn is None:
                raise StoreUnavailable("the database is closed: the daemon is stopping")
            return fn(self._conn)

    def _serve(self, conn: sqlite3.Connection, token: trio.lowlevel.TrioToken) -> None:
        """The store thread: run requests in the order they were sent until :data:`_STOP`."""
        while (request := self._queue.get()) is not _STOP:
            assert isinstance(request, _Request)
            with self._conn_lock:
                result = outcome.capture(request.fn, conn)
            token.run_sync_soon(self._answer, request, result)

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stopped = True  # before _STOP: nothing is sent after it
            self._queue.put(_STOP)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = False
        conn = await trio.to_thread.run_sync(connect, self.path)
        log.info("store: opened %s (schema %d, WAL)", self.path, SCHEMA_VERSION)
        self._conn = conn
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                task_status.started(self)
                # not abandoned on cancel: a request in flight finishes (and is answered) first
                token = trio.lowlevel.current_trio_token()
                await trio.to_thread.run_sync(self._serve, conn, token, limiter=self._thread)
        finally:
            with self._conn_lock:  # a write_here under way finishes first (one statement's wait)
                self._conn = None
            conn.close()
            self._stopped = True
            while True:  # requests sent but never run: their callers get StoreUnavailable
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(request, _Request):
                    self._answer(request, None)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(calls=self._calls, queued=self._queue.qsize())


# --- broker messages (sync, run on the store thread) ----------------------------------------------


def undelivered_for(conn: sqlite3.Connection, recipient: str) -> list[tuple[int, str, str]]:
    """``(id, sender, body)`` of messages not yet delivered to ``recipient``, oldest first."""
    return [
        (r["id"], r["sender"], r["body"])
        for r in conn.execute(
            "SELECT id, sender, body FROM messages WHERE recipient=? AND delivered_at IS NULL ORDER BY id",
            (recipient,),
        )
    ]


# --- the job journal (sync, run on the store thread) -----------------------------------------------

_JOB_FIELDS = (
    "id",
    "kind",
    "agent",
    "source",
    "state",
    "queued_at",
    "started_at",
    "finished_at",
    "error",
    "parent_id",
)


def journal_job(
    conn: sqlite3.Connection,
    job: Job,
    args: str = "{}",
    *,
    fsync: bool = True,
    stopped_on_purpose: bool | None = None,
) -> None:
    """Insert or update one job row (``args`` is written only on insert).

    ``stopped_on_purpose`` (``True``/``False``; ``None``: unchanged) records the job's agent's
    intent in the same transaction (:func:`set_stopped_on_purpose`).
    ``fsync=False`` (:func:`no_fsync`) for jobs a power loss makes moot: a row lost with the power is
    a job not replayed at the next start, and every agent is down after a power loss anyway."""
    values = [getattr(job, f) for f in _JOB_FIELDS]
    if fsync:
        _journal_job(conn, values, args, job, stopped_on_purpose)
        return
    with no_fsync(conn):
        _journal_job(conn, values, args, job, stopped_on_purpose)


def _journal_job(
    conn: sqlite3.Connection, values: list[object], args: str, job: Job, stopped: bool | None
) -> None:
    with transaction(conn):
        conn.execute(
            f"INSERT INTO jobs({', '.join(_JOB_FIELDS)}, args) "
            f"VALUES ({', '.join('?' * len(_JOB_FIELDS))}, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, started_at=excluded.started_at, "
            "finished_at=excluded.finished_at, error=excluded.error",
            (*values, args),
        )
        if stopped is not None and job.agent is not None:
            set_stopped_on_purpose(conn, job.agent, stopped, job.queued_at)


def set_stopped_on_purpose(conn: sqlite3.Connection, agent: str, stopped: bool, at: float) -> None:
    """Record (``stopped``) or clear that ``agent`` was stopped on purpose (since ``at``, epoch s)."""
    if stopped:
        conn.execute(
            "INSERT INTO stopped_on_purpose(agent, since) VALUES (?, ?) "
            "ON CONFLICT(agent) DO UPDATE SET since=excluded.since",
            (agent, at),
        )
    else:
        conn.execute("DELETE FROM stopped_on_purpose WHERE agent=?", (agent,))


def stopped_on_purpose(conn: sqlite3.Connection) -> list[str]:
    """The agents recorded as stopped on purpose, by name."""
    return [r[0] for r in conn.execute("SELECT agent FROM stopped_on_purpose ORDER BY agent")]


def set_job_args(conn: sqlite3.Connection, job_id: int, args: str) -> None:
    """Replace a job's ``args`` JSON (a job that records its progress for its replay)."""
    with no_fsync(conn):
        conn.execute("UPDATE jobs SET args=? WHERE id=?", (args, job_id))


def _job(row: sqlite3.Row) -> Job:
    return converter.structure({f: row[f] for f in _JOB_FIELDS}, Job)


def unfinished_jobs(conn: sqlite3.Connection) -> list[tuple[Job, str]]:
    """Jobs a shutdown or a kill left ``queued``/``running``, oldest first, with their args JSON."""
    rows = conn.execute("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
    return [(_job(r), r["args"]) for r in rows]


def recent_jobs(conn: sqlite3.Connection, limit: int) -> list[Job]:
    """The newest ``limit`` finished jobs, oldest first."""
    rows = conn.execute(
        "SELECT * FROM jobs WHERE state NOT IN ('queued', 'running') ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_job(r) for r in reversed(rows)]


def max_job_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0])


MessageRow = tuple[int, str, str, str, int, int | None]
"""``(id, sender, recipient, body, sent_at, delivered_at)`` of a broker message."""


def recent_messages(conn: sqlite3.Connection, limit: int, recipient: str | None = None) -> list[MessageRow]:
    """The newest ``limit`` messages (to ``recipient`` only, when given), oldest first."""
    where, args = ("WHERE recipient = ?", (recipient,)) if recipient is not None else ("", ())
    cur = conn.execute(
        "SELECT id, sender, recipient, body, sent_at, delivered_at FROM messages "
        f"{where} ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in reversed(cur.fetchall())]


# --- crash-loop holds (actors/alarms.py; sync, run on the store thread) ----------------------------


def read_holds(conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
    """``(agent, reason, since)`` of every agent held stopped, by name."""
    return [
        (r["agent"], r["reason"], r["since"])
        for r in conn.execute("SELECT agent, reason, since FROM held_agents ORDER BY agent")
    ]


def write_hold(conn: sqlite3.Connection, agent: str, reason: str, since: float) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO held_agents(agent, reason, since) VALUES (?,?,?)", (agent, reason, since)
        )


def delete_hold(conn: sqlite3.Connection, agent: str) -> int:
    """Forget ``agent``'s hold; how many rows went (0 or 1)."""
    with transaction(conn):
        return conn.execute("DELETE FROM held_agents WHERE agent = ?", (agent,)).rowcount
