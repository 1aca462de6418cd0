"""The prompt scheduler's own logic (actors/prompt_scheduler.py) on a MockClock, with real sqlite run
inline: recurring and one-shot firings, a result per target (a stopped or unknown target is
recorded, not an error), cancel per schedule and per target, approval states, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.prompt_scheduler import PromptScheduler
from hivecore import schedules as sc
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.store import QuotaExceeded
from hivecore.wire.events import ScheduleAdded, ScheduleCancelled, ScheduleFired
from hivecore.wire.host import ScheduleRequest, UnscheduleRequest, parse_request
from hivecore.wire.request import checked
from tests.test_reminder_scheduler import BASE, Bus, InlineStore, clock


class Hive:
    """Agents and whether they run; the messages sent to them."""

    def __init__(self, **agents: bool) -> None:
        self.agents = dict(agents)
        self.sent: list[tuple[str, str, str, float]] = []
        self.fail: list[Exception] = []

    def running(self, name: str) -> bool | None:
        return self.agents.get(name)

    async def send(self, sender: str, to: str, body: str) -> list[int]:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append((sender, to, body, trio.current_time()))
        return [len(self.sent)]


def make(hive: Hive, **kw: Any) -> tuple[PromptScheduler, Bus]:
    bus = Bus()
    sched = PromptScheduler(InlineStore(), hive.send, bus, hive.running, clock=clock, **kw)  # type: ignore[arg-type]
    return sched, bus


async def test_a_recurring_schedule_fires_on_its_interval_with_a_result_per_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hive = Hive(alice=True, bob=False)
    sched, bus = make(hive)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        s = await sched.schedule(["alice", "bob"], "standup?", every="10m", at=None, description="daily")
        assert (s.interval_seconds, s.next_fire_at, s.state) == (600, BASE + 600, "active")
        await trio.sleep(599)
        assert hive.sent == []
        await trio.sleep(2)
        assert [(f, t, b) for f, t, b, _ in hive.sent] == [("operator", "alice", "standup?")]
        [row] = await sched.listed()
        results = {t.target: (t.last_result, t.fired) for t in row.targets}
        assert results == {"alice": ("sent (message 1)", 1), "bob": ("not sent: bob is not running", 1)}
        assert row.next_fire_at == BASE + 1200
        hive.agents["bob"] = True
        await trio.sleep(600)
        assert [(t, at) for _, t, _, at in hive.sent] == [("alice", 600), ("alice", 1200), ("bob", 1200)]
        assert sched.wakeups <= 5  # no polling between firings
        nursery.cancel_scope.cancel()
    kinds = [type(e) for e in bus.events]
    assert kinds == [ScheduleAdded, ScheduleFired, ScheduleFired]


async def test_a_one_shot_fires_once_and_is_done_and_a_failed_send_is_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hive = Hive(alice=True, manager=True, hm1nd=True)
    hive.fail = [HiveError("disk full")]
    sched, _ = make(hive)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await sched.schedule(["alice", "hm1nd"], "once", every=None, at=str(BASE + 30))
        await trio.sleep(100)
        assert [(t, b) for _, t, b, _ in hive.sent] == [("manager", "once")]  # the manager's inbox
        assert await sched.listed() == []
        [row] = await sched.listed(done=True)
        assert row.state == "done"
        assert {t.target: t.last_result for t in row.targets} == {
            "alice": "failed: disk full",
            "hm1nd": "sent (message 1)",
        }
        nursery.cancel_scope.cancel()


async def test_cancel_a_target_then_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    hive = Hive(alice=True, bob=True)
    sched, bus = make(hive)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        s = await sched.schedule(["alice", "bob"], "hi", every="1m", at=None)
        after = await sched.cancel(s.id, "bob")
        assert after.state == "active"
        assert [t.target for t in after.targets if t.cancelled_at is None] == ["alice"]
        await trio.sleep(61)
        assert [t for _, t, _, _ in hive.sent] == ["alice"]
        with pytest.raises(sc.UnknownSchedule, match=f"^no schedule {s.id} targeting carol$"):
            await sched.cancel(s.id, "carol")
        gone = await sched.cancel(s.id, "alice")  # the last target: the schedule ends
        assert (gone.state, gone.next_fire_at) == ("cancelled", None)
        with pytest.raises(Refused, match=f"^schedule {s.id} is already cancelled$"):
            await sched.cancel(s.id)
        with pytest.raises(sc.UnknownSchedule, match=r"^no schedule 99$"):
            await sched.cancel(99)
        await trio.sleep(300)
        assert len(hive.sent) == 1
        nursery.cancel_scope.cancel()
    assert [type(e) for e in bus.events].count(ScheduleCancelled) == 2


async def test_a_requested_schedule_waits_for_its_approval(autojump_clock: trio.testing.MockClock) -> None:
    hive = Hive(alice=True)
    sched, _ = make(hive)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        s = await sched.schedule(["alice"], "hi", every="1m", at=None, owner="hm1nd", state="requested")
        await trio.sleep(600)
        assert hive.sent == []
        active = await sched.activate(s.id)
        assert (active.state, active.next_fire_at) == ("active", BASE + 600 + 60)
        with pytest.raises(Refused, match="is not waiting for approval"):
            await sched.activate(s.id)
        await trio.sleep(61)
        assert len(hive.sent) == 1
        nursery.cancel_scope.cancel()


async def test_bad_input_is_one_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    hive = Hive(alice=True)
    sched, _ = make(hive, max_active=2)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"every": None, "at": None}, BadInput, "give exactly one of every (a duration: 1h, 30m) and at"),
        ({"every": "1h", "at": str(BASE + 60)}, BadInput, "not both"),
        ({"every": None, "at": str(BASE - 100)}, BadInput, f"at {BASE - 100:.0f} is in the past"),
    ]
    for fields, cls, error in cases:
        with pytest.raises(cls, match=error.replace("(", r"\(").replace(")", r"\)")):
            await sched.schedule(["alice"], "x", **fields)
    with pytest.raises(HiveError, match=r'^no agent "ghost" in this hive to schedule a prompt to$'):
        await sched.schedule(["alice", "ghost"], "x", every="1h", at=None)
    await sched.schedule(["alice"], "x", every="1h", at=None)
    await sched.schedule(["alice"], "y", every="1h", at=None)
    with pytest.raises(QuotaExceeded, match=r"^schedule quota: 2 schedules are active or waiting"):
        await sched.schedule(["alice"], "z", every="1h", at=None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("3600", 3600),
        (" 1H ", 3600),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert sc.duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("5x", "not a duration: '5x'; write e.g. 90s, 5m, 1h30m, 2d or 1w (or plain seconds)"),
        ("", "not a duration: ''"),
        ("-5m", "not a duration: '-5m'"),
        ("1.5h", "not a duration: '1.5h'"),
        ("0s", "the interval must be 1 s to a year, got 0 s"),
        ("400d", "the interval must be 1 s to a year, got 34560000 s"),
        ("\u0663s", "not a duration: '\u0663s'"),  # an Arabic-Indic 3 was read as 3 s (\\d is Unicode)
        ("\uff15m", "not a duration: '\uff15m'"),  # a fullwidth 5
        ("9999999999", "the interval must be 1 s to a year, got 9999999999 s"),  # not "not a duration"
    ],
)
def test_bad_durations(text: str, error: str) -> None:
    with pytest.raises(BadInput) as got:
        sc.duration(text)
    assert str(got.value).startswith(error), str(got.value)


def test_times() -> None:
    assert sc.when("1764590400") == 1764590400.0
    assert sc.when("2025-12-01T12:00:00Z") == 1764590400.0
    assert sc.when("2025-12-01T12:00:00") == 1764590400.0  # no offset: UTC
    assert sc.when("2025-12-01T13:00:00+01:00") == 1764590400.0
    with pytest.raises(BadInput, match=r"^not a time: 'tomorrow'"):
        sc.when("tomorrow")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"cmd":"schedule","to":[],"body":"x","every":"1h"}', "name at least one target agent (to)"),
        (b'{"cmd":"schedule","to":["Bad..Name"],"body":"x","every":"1h"}', "invalid agent name 'Bad..Name'"),
        (b'{"cmd":"schedule","to":["a"],"body":" ","every":"1h"}', "body is empty"),
        (b'{"cmd":"schedule","to":["a"],"body":"' + b"x" * 4097 + b'","every":"1h"}', "body is 4097 bytes"),
        (b'{"cmd":"schedule","to":["a"],"body":"x","every":"soon"}', "not a duration: 'soon'"),
        (b'{"cmd":"schedule","to":["a"],"body":"x","at":"noon"}', "not a time: 'noon'"),
        (b'{"cmd":"unschedule","id":0}', "a schedule id is a number from 1"),
    ],
)
def test_bad_fields_are_refused_by_the_record(line: bytes, error: str) -> None:
    request = parse_request(line)
    assert isinstance(request, ScheduleRequest | UnscheduleRequest), request
    with pytest.raises(BadInput) as got:
        checked(request)
    assert str(got.value).startswith(error), str(got.value)


def test_targets_are_split_deduplicated_and_the_manager_is_hm1nd() -> None:
    assert sc.targets(["a,b", "@a", " manager "]) == ["a", "b", "hm1nd"]


async def test_it_restarts_from_the_store(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A second scheduler on the same rows (a daemon restart) fires what the first one stored."""
    hive = Hive(alice=True)
    first, _ = make(hive)
    await first.schedule(["alice"], "later", every=None, at=str(BASE + 3600))
    second = PromptScheduler(first._store, hive.send, Bus(), hive.running, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await trio.sleep(3601)
        assert [b for _, _, b, _ in hive.sent] == ["later"]
        nursery.cancel_scope.cancel()


def test_hivectl_marks_a_body_cut_to_its_first_line() -> None:
    # a body "b\nline2" was listed as "body: b": nothing said the rest was left out
    from hivecore.cli.hivectl import render_schedules

    row = {"id": 1, "state": "active", "interval_seconds": 60, "body": "b\nline2", "targets": []}
    assert "  body: b …" in render_schedules({"schedules": [row]}).splitlines()
    row["body"] = "one line"
    assert "  body: one line" in render_schedules({"schedules": [row]}).splitlines()
