"""sqlite store: WAL, versioned schema, forward migration, serialized calls off the trio thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from hivecore import store
from hivecore.models import Approval


async def test_open_sets_wal_busy_timeout_and_schema(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "db" / "hive.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"approvals", "messages"} <= tables


async def test_reopen_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    path = tmp_path / "hive.sqlite"
    conn = store.connect(path)
    a = store.insert_approval(conn, "coder", "spawn", description="a coder")
    conn.close()
    conn = store.connect(path)
    assert store.list_approvals(conn) == [a]


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "hive.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={store.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(store.SchemaTooNew, match="newer than this hive-c0re understands"):
        store.connect(path)


async def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = store.SCHEMA_VERSION
    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, "CREATE TABLE x(a); SELECT nonsense("))
    monkeypatch.setattr(store, "SCHEMA_VERSION", len(store.MIGRATIONS))
    path = tmp_path / "hive.sqlite"
    with pytest.raises(sqlite3.OperationalError):
        store.connect(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == current
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name='x'").fetchone()[0] == 0


async def test_approvals_roundtrip_and_fail_pending(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "hive.sqlite")
    a1 = store.insert_approval(conn, "coder", "spawn")
    a2 = store.insert_approval(conn, "coder", "apply_commit", "abc1234")
    store.insert_approval(conn, "other", "spawn")
    assert a1.status == "pending"
    assert a1.requested_at.endswith("Z")
    assert [a.id for a in store.fail_pending_for_agent(conn, "coder", "agent destroyed")] == [a1.id, a2.id]
    rows = {a.id: a for a in store.list_approvals(conn)}
    assert rows[a1.id].status == "failed"
    assert rows[a1.id].note == "agent destroyed"
    assert rows[a1.id].resolved_at is not None
    assert rows[3].status == "pending"


async def test_store_actor_runs_calls_in_order_off_the_trio_thread(tmp_path: Path) -> None:
    s = store.Store(tmp_path / "hive.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        results: list[int] = []

        async def one(i: int) -> None:
            a = await s.call(lambda c: store.insert_approval(c, f"a{i}", "spawn"))
            results.append(a.id)

        async with trio.open_nursery() as inner:
            for i in range(20):
                inner.start_soon(one, i)
        ids = await s.call(lambda c: [a.id for a in store.list_approvals(c)])
        store_thread = await s.call(lambda c: threading.get_ident())
        with pytest.raises(sqlite3.OperationalError):
            await s.call(lambda c: c.execute("SELECT * FROM nope"))
        assert await s.call(lambda c: 42) == 42  # an error in one call does not break the actor
        nursery.cancel_scope.cancel()
    assert sorted(results) == ids == list(range(1, 21))
    assert store_thread != threading.get_ident()


async def test_cancelled_caller_does_not_abandon_the_write(tmp_path: Path) -> None:
    s = store.Store(tmp_path / "hive.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        with trio.CancelScope() as scope:
            scope.cancel()
            await s.call(lambda c: store.insert_approval(c, "late", "spawn"))
        # the request was cancelled before it was sent, so nothing ran
        assert await s.call(store.list_approvals) == []
        started = trio.Event()

        def slow_insert(c: sqlite3.Connection) -> Approval:
            trio.from_thread.run_sync(started.set)
            return store.insert_approval(c, "kept", "spawn")

        async with trio.open_nursery() as inner:
            inner.start_soon(s.call, slow_insert)
            await started.wait()
            inner.cancel_scope.cancel()
        assert [a.agent for a in await s.call(store.list_approvals)] == ["kept"]
        nursery.cancel_scope.cancel()


async def test_a_request_in_flight_when_the_store_stops_still_gets_its_answer(tmp_path: Path) -> None:
    s = store.Store(tmp_path / "hive.sqlite")
    answers: list[int] = []
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as actor_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(s.run)
                in_flight = trio.Event()

                def slow(c: sqlite3.Connection) -> int:
                    trio.from_thread.run_sync(in_flight.set)
                    return store.insert_approval(c, "late", "spawn").id

                async def caller() -> None:
                    answers.append(await s.call(slow))

                outer.start_soon(caller)
                await in_flight.wait()
                actor_scope.cancel()  # shutdown while the write runs on the store thread
    assert answers == [1]  # the write finished and its caller was answered, not left waiting
    conn = store.connect(tmp_path / "hive.sqlite")
    assert [a.agent for a in store.list_approvals(conn)] == ["late"]


async def test_the_reader_sees_commits_never_writes_and_never_creates_the_database(tmp_path: Path) -> None:
    """Worker threads read through :class:`store.Reader` (the views' scans read usage so, in their own
    thread hop): each read sees what the store committed before it, writes are refused, and a
    database the store has not created yet is an error, not an empty file."""
    missing = store.Reader(tmp_path / "none.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        missing.read(lambda c: c.execute("SELECT 1").fetchone())
    assert not (tmp_path / "none.sqlite").exists()
    s = store.Store(tmp_path / "hive.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        count = "SELECT count(*) FROM approvals"
        assert await trio.to_thread.run_sync(s.reader.read, lambda c: c.execute(count).fetchone()[0]) == 0
        await s.call(lambda c: store.insert_approval(c, "a", "spawn"))
        assert await trio.to_thread.run_sync(s.reader.read, lambda c: c.execute(count).fetchone()[0]) == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.reader.read(lambda c: c.execute("DELETE FROM approvals"))
        assert await s.call(lambda c: c.execute(count).fetchone()[0]) == 1
        nursery.cancel_scope.cancel()


async def test_write_here_runs_in_the_callers_thread_between_requests_and_not_after_a_stop(
    tmp_path: Path,
) -> None:
    s = store.Store(tmp_path / "hive.sqlite")
    with pytest.raises(store.StoreUnavailable):  # not running yet: no connection to lend
        s.write_here(lambda c: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        here = await trio.to_thread.run_sync(
            s.write_here, lambda c: (store.insert_approval(c, "a", "spawn").id, threading.get_ident())
        )
        assert here[0] == 1
        assert here[1] not in (threading.get_ident(), await s.call(lambda c: threading.get_ident()))
        assert [a.agent for a in await s.call(store.list_approvals)] == ["a"]
        nursery.cancel_scope.cancel()
    with pytest.raises(store.StoreUnavailable):
        s.write_here(lambda c: None)
