"""The reminder scheduler's own logic (actors/reminder_scheduler.py) on a MockClock: it sleeps until
the next due time (no polling), a new reminder wakes it, a failed delivery is retried with backoff
and given up after MAX_ATTEMPTS, a purged caller's reminder is dropped, and every bad input gets one
clear error. Real sqlite, run inline (no thread: the MockClock's autojump needs none)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from actors.reminder_scheduler import MAX_SLEEP, ReminderScheduler
from hivecore import reminders as rm
from hivecore import store as st
from hivecore.errors import BadInput, Refused
from hivecore.store import QuotaExceeded
from hivecore.wire.agent import RemindRequest, parse_agent_request
from hivecore.wire.events import Event, ReminderAdded, ReminderFailed, ReminderRemoved, ReminderSent
from hivecore.wire.request import checked

T = TypeVar("T")
BASE = 1_800_000_000.0


class InlineStore:
    """The store's ``call`` on an in-memory database, in the caller's thread."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        st.migrate(self.conn)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn(self.conn)


class Bus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Any) -> Any:
        self.events.append(event)
        return event


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, str, float]] = []
        self.fail: list[Exception] = []

    async def post(self, sender: str, inbox: str, body: str) -> int:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise self.fail.pop(0)
        self.got.append((sender, inbox, body, trio.current_time()))
        return len(self.got)


def clock() -> float:
    return BASE + trio.current_time()


def make(tmp_path: Path, **kw: Any) -> tuple[ReminderScheduler, InlineStore, Inbox, Bus]:
    store, inbox, bus = InlineStore(), Inbox(), Bus()
    rescans: list[list[str]] = []
    sched = ReminderScheduler(
        store,  # type: ignore[arg-type]  # the store's call, inline
        inbox.post,
        bus,
        tmp_path,
        lambda name: f"/agents/{name}/state",
        clock=clock,
        rescan=rescans.append,
        **kw,
    )
    return sched, store, inbox, bus


def live(store: InlineStore, agent: str) -> int:
    return st.begin_incarnation(store.conn, agent, int(BASE))


async def test_it_sleeps_until_the_due_time_and_a_new_reminder_wakes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, inbox, bus = make(tmp_path)
    live(store, "coder")
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(100)  # nothing pending: one long sleep, not a poll
        assert sched.wakeups == 1
        r = await sched.remind("coder", "check the build", delay_seconds=60)
        assert r.due_at == BASE + 100 + 60
        await trio.sleep(59.9)
        assert inbox.got == []
        await trio.sleep(0.2)
        assert [(s, i, b) for s, i, b, _ in inbox.got] == [("reminder", "coder", "check the build")]
        assert inbox.got[0][3] == pytest.approx(160, abs=1e-6)
        assert sched.wakeups <= 4  # start, the remind's wake, the fire (and the one after it)
        row = (await sched.listed("coder", done=True))[0]
        assert (row.status, row.attempt_count) == ("sent", 1)
        assert row.sent_at == pytest.approx(BASE + 160)
        assert await sched.count_pending("coder") == 0
        kinds = [type(e) for e in bus.events]
        assert kinds == [ReminderAdded, ReminderSent]
        nursery.cancel_scope.cancel()


async def test_the_manager_gets_it_in_the_manager_inbox_and_several_fire_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, _store, inbox, _ = make(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await sched.remind("hm1nd", "second", delay_seconds=20)
        await sched.remind("hm1nd", "first", at=BASE + 10)
        assert await sched.count_pending("hm1nd") == 2
        await trio.sleep(30)
        assert [(i, b) for _, i, b, _ in inbox.got] == [("manager", "first"), ("manager", "second")]
        nursery.cancel_scope.cancel()


async def test_a_failed_delivery_is_retried_with_backoff_then_given_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, inbox, bus = make(tmp_path)
    live(store, "coder")
    inbox.fail = [OSError(28, "No space left on device")]
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await sched.remind("coder", "one", delay_seconds=1)
        await trio.sleep(1.5)
        [row] = await sched.listed("coder")
        assert (row.status, row.attempt_count) == ("pending", 1)
        assert row.last_error == "OSError: No space left on device"
        assert row.next_attempt_at == pytest.approx(BASE + 1 + rm.backoff(1))
        await trio.sleep(rm.backoff(1))
        assert [b for _, _, b, _ in inbox.got] == ["one"]
        [row] = await sched.listed("coder", done=True)
        assert (row.status, row.attempt_count) == ("sent", 2)

        inbox.fail = [RuntimeError(f"down {n}") for n in range(rm.MAX_ATTEMPTS)]
        await sched.remind("coder", "two", delay_seconds=1)
        await trio.sleep(1 + sum(rm.backoff(n) for n in range(1, rm.MAX_ATTEMPTS)) + 1)
        [failed] = [r for r in await sched.listed("coder", done=True) if r.message == "two"]
        assert (failed.status, failed.attempt_count) == ("failed", rm.MAX_ATTEMPTS)
        assert failed.last_error == f"RuntimeError: down {rm.MAX_ATTEMPTS - 1}"
        assert await sched.count_pending("coder") == 0
        fails = [e for e in bus.events if isinstance(e, ReminderFailed)]
        assert len(fails) == 1 + rm.MAX_ATTEMPTS
        assert fails[-1].reminder.status == "failed"
        nursery.cancel_scope.cancel()
    assert [rm.backoff(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert rm.backoff(50) == rm.BACKOFF_MAX


async def test_a_purged_callers_reminder_is_dropped_not_delivered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, inbox, bus = make(tmp_path)
    live(store, "coder")
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await sched.remind("coder", "old life", delay_seconds=10)
        st.end_incarnation(store.conn, "coder", int(BASE))
        live(store, "coder")  # a new agent of the same name
        assert await sched.count_pending("coder") == 0
        assert await sched.listed() == []
        await trio.sleep(20)
        assert inbox.got == []
        assert sched.dropped == 1
        assert [(e.reason, e.agent) for e in bus.events if isinstance(e, ReminderRemoved)] == [
            ("dropped", "coder")
        ]
        nursery.cancel_scope.cancel()


async def test_cancel_deletes_it_and_an_unknown_id_is_one_clear_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, inbox, _bus = make(tmp_path)
    live(store, "coder")
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        r = await sched.remind("coder", "never", delay_seconds=5)
        assert (await sched.cancel(r.id)).id == r.id
        with pytest.raises(rm.UnknownReminder, match=f"^no pending reminder {r.id}$"):
            await sched.cancel(r.id)
        with pytest.raises(rm.UnknownReminder, match=r"^no pending reminder 999$"):
            await sched.cancel(999)
        await trio.sleep(10)
        assert inbox.got == []
        nursery.cancel_scope.cancel()


async def test_a_cancel_during_a_failing_delivery_is_not_an_actor_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # the operator cancelled a reminder while its delivery was failing: mark_failed read back the
    # deleted row (None) and raised, so fire_due failed ("could not read or deliver due reminders",
    # a traceback) and every other due reminder waited 10 s
    sched, store, inbox, bus = make(tmp_path)
    live(store, "coder")
    first = await sched.remind("coder", "cancelled meanwhile", delay_seconds=0)
    await sched.remind("coder", "next", delay_seconds=0)

    async def post(sender: str, to: str, body: str) -> int:
        if body == "cancelled meanwhile":
            await sched.cancel(first.id)
            raise OSError("the inbox is full")
        return await inbox.post(sender, to, body)

    sched._post = post
    assert await sched.fire_due() is False
    assert [b for _, _, b, _ in inbox.got] == ["next"]
    assert not [e for e in bus.events if isinstance(e, ReminderFailed)]
    assert [r.message for r in await sched.listed("coder", done=True)] == ["next"]


async def test_the_pending_quota_is_per_agent(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    sched, store, _, _ = make(tmp_path, max_pending=3)
    live(store, "coder")
    live(store, "other")
    for n in range(3):
        await sched.remind("coder", f"r{n}", delay_seconds=100)
    with pytest.raises(QuotaExceeded, match=r"^pending-reminder quota: coder has 3 reminders waiting"):
        await sched.remind("coder", "one too many", delay_seconds=100)
    assert await sched.count_pending("coder") == 3
    await sched.remind("other", "mine", delay_seconds=100)  # another agent is not affected


async def test_bad_times_and_paths_are_refused_with_one_clear_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, _, _ = make(tmp_path)
    live(store, "coder")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "give exactly one of delay_seconds (seconds from now) and at (Unix seconds), got neither"),
        (
            {"delay_seconds": 5, "at": BASE + 50},
            "give exactly one of delay_seconds (seconds from now) and at (Unix seconds), not both",
        ),
        ({"at": BASE - 60}, f"at {BASE - 60:.0f} is in the past (now is {BASE:.0f}); give a later time"),
        ({"at": BASE + 2 * rm.MAX_DELAY}, "is more than a year ahead"),
        ({"delay_seconds": 5, "file_path": "/etc/passwd"}, "is outside your state dir (/agents/coder/state)"),
    ]
    for fields, error in cases:
        with pytest.raises(BadInput, match=error.replace("(", r"\(").replace(")", r"\)")):
            await sched.remind("coder", "x", **fields)
    assert await sched.count_pending("coder") == 0


async def test_the_longest_file_name_accepted_can_be_written_and_a_longer_one_is_refused(
    tmp_path: Path,
) -> None:
    # a 250-byte name was accepted but never written: the temp file beside it (".<name>.<pid>.tmp")
    # is longer than NAME_MAX, so every delivery failed with "File name too long" until given up
    sched, store, inbox, _ = make(tmp_path)
    live(store, "coder")
    (tmp_path / "coder" / "state").mkdir(parents=True)
    name = "n" * rm.MAX_NAME_BYTES
    r = await sched.remind("coder", "hello", delay_seconds=0, file_path=checked_path(f"d/{name}"))
    await sched.deliver(r)
    assert (tmp_path / "coder" / "state" / "d" / name).read_bytes() == b"hello"
    assert inbox.got[0][2] == rm.pointer(f"/agents/coder/state/d/{name}", 5)
    with pytest.raises(BadInput, match=f"^file_path: a name is at most {rm.MAX_NAME_BYTES} bytes"):
        checked_path("d/" + "n" * (rm.MAX_NAME_BYTES + 1))
    with pytest.raises(BadInput, match="a name is at most"):
        checked_path("é" * (rm.MAX_NAME_BYTES // 2 + 1))


async def test_a_directory_at_the_file_path_is_named_in_the_error(tmp_path: Path) -> None:
    # last_error named the temp file beside it: "Is a directory (.adir.1234.tmp)"
    sched, store, _, _ = make(tmp_path)
    live(store, "coder")
    (tmp_path / "coder" / "state" / "adir").mkdir(parents=True)
    await sched.remind("coder", "x", delay_seconds=0, file_path=checked_path("adir"))
    await sched.fire_due()
    [row] = await sched.listed("coder")
    assert row.last_error == "IsADirectoryError: Is a directory (adir)"


def checked_path(path: str) -> str:
    got = rm.file_path(path)
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"cmd":"remind","message":"x","delay_seconds":-1}', "delay_seconds must be 0 or more, got -1"),
        (b'{"cmd":"remind","message":"x","delay_seconds":1e12}', "delay_seconds is at most 31622400"),
        (b'{"cmd":"remind","message":"x","at":-5}', "at is a time in Unix seconds, got -5"),
        (b'{"cmd":"remind","message":"  ","delay_seconds":1}', "message is empty"),
        (
            b'{"cmd":"remind","message":"' + b"x" * (rm.MAX_MESSAGE_BYTES + 1) + b'","delay_seconds":1}',
            f"message is {rm.MAX_MESSAGE_BYTES + 1} bytes; the limit is {rm.MAX_MESSAGE_BYTES}",
        ),
        (
            b'{"cmd":"remind","message":"x","delay_seconds":1,"file_path":"../x"}',
            "file_path must name a file",
        ),
        (b'{"cmd":"remind","message":"x","delay_seconds":1,"file_path":"/"}', "file_path must name a file"),
    ],
)
def test_bad_fields_are_refused_by_the_record(line: bytes, error: str) -> None:
    request = parse_agent_request(line)
    assert isinstance(request, RemindRequest), request
    with pytest.raises(BadInput) as got:
        checked(request)
    assert str(got.value).startswith(error), str(got.value)


def test_split_due_for_loose_ends() -> None:
    def r(i: int, due: float, status: str = "pending") -> rm.Reminder:
        return rm.Reminder(id=i, agent="a", message="m", size=1, due_at=due, created_at=0, status=status)

    loose = rm.split_due([r(3, 50), r(1, 5), r(2, 10, "sent"), r(4, 20)], now=20)
    assert [x.id for x in loose.due] == [1, 4]
    assert [x.id for x in loose.pending] == [3]


async def test_it_sleeps_at_most_max_sleep_then_reads_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, _store, inbox, _ = make(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await sched.remind("hm1nd", "far", delay_seconds=3 * MAX_SLEEP)
        await trio.sleep(3 * MAX_SLEEP - 1)
        assert inbox.got == []
        assert sched.wakeups <= 5
        await trio.sleep(2)
        assert [b for _, _, b, _ in inbox.got] == ["far"]
        nursery.cancel_scope.cancel()


async def test_a_purge_drops_its_reminders_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, _, bus = make(tmp_path)
    live(store, "coder")
    live(store, "other")
    await sched.remind("coder", "mine", delay_seconds=3600)
    await sched.remind("other", "theirs", delay_seconds=3600)
    st.end_incarnation(store.conn, "coder", int(BASE))
    await sched.incarnation_ended("coder")
    assert [r.agent for r in await sched.listed()] == ["other"]
    assert [(e.id, e.reason) for e in bus.events if isinstance(e, ReminderRemoved)] == [(1, "dropped")]
    loose = await sched.loose_ends("other")  # the viewers' query: due and still to come
    assert ([r.message for r in loose.due], [r.message for r in loose.pending]) == ([], ["theirs"])


async def test_remind_is_rate_limited_per_agent(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sched, store, _, _ = make(tmp_path, max_pending=1000)
    live(store, "coder")
    for n in range(rm.MAX_REMINDS_PER_MINUTE):
        await sched.remind("coder", f"r{n}", delay_seconds=3600)
    with pytest.raises(
        Refused, match=r"^remind: at most 60 reminders a minute per agent; this one was not set"
    ):
        await sched.remind("coder", "one more", delay_seconds=3600)
    await sched.remind("hm1nd", "the manager is not affected", delay_seconds=3600)
    await trio.sleep(61)
    await sched.remind("coder", "a minute later", delay_seconds=3600)
