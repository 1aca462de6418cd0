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
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import outcome
import trio

from hivecore.errors import HiveError
from hivecore.models import Approval
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
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    pass


class StoreUnavailable(HiveError):
    """The store actor stopped while a request was in flight."""


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
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the resulting schema version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this hive-c0re understands ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store: migrated schema to version %d", target)
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT implicitly; split so a migration stays one transaction
    return [s.strip() for s in script.split(";") if s.strip()]


# --- approvals (sync, run on the store thread) ---------------------------------------------------


def _approval(row: sqlite3.Row) -> Approval:
    return converter.structure({k: row[k] for k in row.keys()}, Approval)  # noqa: SIM118  # Row has no iter


def list_approvals(conn: sqlite3.Connection) -> list[Approval]:
    return [_approval(r) for r in conn.execute("SELECT * FROM approvals ORDER BY id")]


def insert_approval(
    conn: sqlite3.Connection, agent: str, kind: str, commit_ref: str = "", description: str | None = None
) -> Approval:
    cur = conn.execute(
        "INSERT INTO approvals(agent, kind, commit_ref, requested_at, description) VALUES (?,?,?,?,?)",
        (agent, kind, commit_ref, now_rfc3339(), description),
    )
    row = conn.execute("SELECT * FROM approvals WHERE id=?", (cur.lastrowid,)).fetchone()
    return _approval(row)


def fail_pending_for_agent(conn: sqlite3.Connection, agent: str, note: str) -> list[int]:
    """Mark every pending approval of ``agent`` failed with ``note``; returns their ids."""
    ids = [
        r[0] for r in conn.execute("SELECT id FROM approvals WHERE agent=? AND status='pending'", (agent,))
    ]
    if ids:
        conn.execute(
            "UPDATE approvals SET status='failed', resolved_at=?, note=? WHERE agent=? AND status='pending'",
            (now_rfc3339(), note, agent),
        )
    return ids


class Store:
    """The store actor: owns the connection; ``await store.call(fn)`` runs ``fn(conn)`` in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._send, self._recv = trio.open_memory_channel[
            tuple[Callable[[sqlite3.Connection], Any], trio.MemorySendChannel[outcome.Outcome[Any]]]
        ](64)
        self._calls = 0

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the store thread after every earlier request; return its result.

        Cancellation while waiting abandons the answer, not the work: once sent, ``fn`` still runs.
        """
        reply_send, reply_recv = trio.open_memory_channel[outcome.Outcome[Any]](1)
        with reply_recv:
            await self._send.send((fn, reply_send))
            try:
                result: outcome.Outcome[T] = await reply_recv.receive()
            except trio.EndOfChannel:
                raise StoreUnavailable("the database stopped before answering; try again") from None
        return result.unwrap()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        conn = await trio.to_thread.run_sync(connect, self.path)
        log.info("store: opened %s (schema %d, WAL)", self.path, SCHEMA_VERSION)
        try:
            task_status.started(self)
            while True:
                fn, reply = await self._recv.receive()
                # closing the reply on every path means a caller never waits on an answer that
                # cannot come (if this actor is cancelled or crashes mid-request it sees EndOfChannel)
                with reply:
                    self._calls += 1
                    result = await trio.to_thread.run_sync(outcome.capture, fn, conn)
                    # a cancelled caller closed its end; the work is done regardless
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        reply.send_nowait(result)
        finally:
            conn.close()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(calls=self._calls, queued=self._send.statistics().current_buffer_used)


# --- broker messages (sync, run on the store thread) ----------------------------------------------


def insert_message(
    conn: sqlite3.Connection, sender: str, recipient: str, body: str, in_reply_to: int | None = None
) -> int:
    cur = conn.execute(
        "INSERT INTO messages(sender, recipient, body, sent_at, in_reply_to) VALUES (?,?,?,?,?)",
        (sender, recipient, body, int(dt.datetime.now(dt.UTC).timestamp()), in_reply_to),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def undelivered_for(conn: sqlite3.Connection, recipient: str) -> list[tuple[int, str, str]]:
    """``(id, sender, body)`` of messages not yet delivered to ``recipient``, oldest first."""
    return [
        (r["id"], r["sender"], r["body"])
        for r in conn.execute(
            "SELECT id, sender, body FROM messages WHERE recipient=? AND delivered_at IS NULL ORDER BY id",
            (recipient,),
        )
    ]
