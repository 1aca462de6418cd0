"""The views actor's scans run in its own tasks: callers join scans, and a cancelled caller never
strands another one. Real clock (facts are read in worker threads); the runtime is a gated stand-in
so a scan can be held in flight."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Collection, Mapping
from functools import partial
from pathlib import Path

import pytest
import trio

from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from actors.views import Views, ViewsStopped
from hivecore.config import StatePaths
from hivecore.runtime.base import AgentRuntimeState
from hivecore.usage import Activity, ActivityRows, Liveness, Summary
from tests.waiting import eventually

AGENTS = ("x", "y", "z")


class GatedRuntime:
    """``list`` answers from a fixed set of running agents; while ``gate`` is closed it waits there
    (the scan is in flight), recording each call's names."""

    def __init__(self) -> None:
        self.calls: list[list[str] | None] = []
        self.gate = trio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        self.calls.append(None if names is None else sorted(names))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        wanted = AGENTS if names is None else [n for n in names if n in AGENTS]
        return {n: AgentRuntimeState(name=n, running=True) for n in wanted}

    def hold(self) -> None:
        self.gate = trio.Event()


@pytest.fixture
async def views(tmp_path: Path) -> AsyncIterator[tuple[Views, GatedRuntime]]:
    runtime = GatedRuntime()
    bus = EventBus()
    actor = Views(StatePaths(tmp_path), runtime, TransientRegistry(bus), bus)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        runtime.calls.clear()  # the tombstone walk's
        yield actor, runtime
        nursery.cancel_scope.cancel()


async def test_a_cancelled_first_caller_strands_no_one(views: tuple[Views, GatedRuntime]) -> None:
    actor, runtime = views
    runtime.hold()
    answers: dict[str, set[str]] = {}

    async def caller(label: str) -> None:
        answers[label] = set(await actor.rescan())

    first = trio.CancelScope()

    async def cancellable_first() -> None:
        with first:
            await caller("first")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancellable_first)
        nursery.start_soon(caller, "same")  # joins the scan the first caller asked for
        await eventually(lambda: runtime.calls == [None])  # that scan is in flight
        nursery.start_soon(caller, "later")  # arrived during the scan: joins the next one
        await eventually(lambda: actor._next_full is not None)
        first.cancel()  # the caller that started it all hangs up
        runtime.gate.set()
    assert "first" not in answers
    assert answers == {"same": set(AGENTS), "later": set(AGENTS)}
    assert runtime.calls == [None, None]  # the later caller's facts are newer than its request
    assert actor.statistics().full_scans == 2


async def test_per_agent_requests_share_one_scan_and_survive_a_cancelled_caller(
    views: tuple[Views, GatedRuntime],
) -> None:
    actor, runtime = views
    runtime.hold()
    answers: dict[str, set[str]] = {}
    first = trio.CancelScope()

    async def caller(label: str, names: list[str], scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            answers[label] = set(await actor.rescan(names))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, "x", ["x"], first)
        nursery.start_soon(caller, "y", ["y"])
        await eventually(lambda: runtime.calls == [["x", "y"]])  # one scan of both names
        first.cancel()
        runtime.gate.set()
    assert answers == {"y": {"x", "y"}}
    assert actor.statistics().targeted_scans == 1


async def test_a_failed_scan_fails_every_caller_of_it_and_the_next_one_works(
    views: tuple[Views, GatedRuntime],
) -> None:
    actor, runtime = views
    runtime.hold()
    runtime.fail = OSError("probe failed")
    errors: list[BaseException] = []

    async def caller() -> None:
        with pytest.raises(OSError, match="probe failed") as info:
            await actor.rescan()
        errors.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        nursery.start_soon(caller)
        await eventually(lambda: runtime.calls == [None])
        runtime.gate.set()
    assert len(errors) == 2
    runtime.fail = None
    assert set(await actor.rescan()) == set(AGENTS)


async def test_a_request_to_a_stopped_actor_is_refused_at_once(tmp_path: Path) -> None:
    bus = EventBus()
    actor = Views(StatePaths(tmp_path), GatedRuntime(), TransientRegistry(bus), bus)  # type: ignore[arg-type]
    with pytest.raises(ViewsStopped):
        await actor.rescan(["x"])
    actor.request_rescan()  # fire and forget: nothing happens, nothing raises
    runtime = GatedRuntime()
    actor = Views(StatePaths(tmp_path), runtime, TransientRegistry(bus), bus)  # type: ignore[arg-type]
    told: list[str] = []

    async def caller() -> None:
        try:
            await actor.rescan()
        except ViewsStopped as exc:
            told.append(str(exc))

    actor_scope = trio.CancelScope()

    async def run_actor(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with actor_scope:
            await actor.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_actor)
        runtime.calls.clear()
        runtime.hold()
        nursery.start_soon(caller)
        await eventually(lambda: runtime.calls == [None])
        nursery.start_soon(caller)  # joins the next scan, which never starts
        await eventually(lambda: actor._next_full is not None)
        actor_scope.cancel()  # the daemon stops
    # neither caller is left waiting: each is told
    assert sorted(told) == [
        "hive-c0re stopped before the scan finished",
        "hive-c0re stopped before the scan started",
    ]


async def test_a_step_before_a_rescan_runs_first_and_fails_only_its_own_caller(
    views: tuple[Views, GatedRuntime],
) -> None:
    """A verb's file write rides the rescan's thread hop (set_paused): it runs after the probe, with
    the probe's states (so it can refuse an agent the runtime does not have), and what it raises
    reaches that caller alone."""
    actor, runtime = views
    ran: list[tuple[str, list[str]]] = []

    def step(label: str, states: Mapping[str, AgentRuntimeState]) -> None:
        ran.append((label, sorted(states)))
        if label == "bad":
            raise ValueError("this step failed")

    answers: dict[str, set[str]] = {}

    async def good() -> None:
        answers["good"] = set(await actor.rescan(["x"], before=partial(step, "good")))

    async def bad() -> None:
        with pytest.raises(ValueError, match="this step failed"):
            await actor.rescan(["y", "nobody"], before=partial(step, "bad"))
        answers["bad"] = set()

    runtime.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(good)
        nursery.start_soon(bad)
        await eventually(lambda: runtime.calls == [["nobody", "x", "y"]])  # one scan for both
        assert ran == []  # the probe is still under way: no step ran before it
        runtime.gate.set()
    assert sorted(ran) == [("bad", ["x", "y"]), ("good", ["x", "y"])]
    assert answers == {"good": {"x", "y"}, "bad": set()}
    assert actor.statistics().targeted_scans == 1
    with pytest.raises(ValueError, match="needs the names"):
        await actor.rescan(before=lambda states: None)
    with pytest.raises(ValueError, match="needs the names"):
        await actor.rescan(usage=False)


class BrokenActivity:
    """An activity source whose database read fails (the database is stopping, or broken)."""

    def __init__(self) -> None:
        self.reads: list[list[str]] = []

    def read_activity(self, names: Collection[str]) -> ActivityRows:
        self.reads.append(sorted(names))
        raise sqlite3.OperationalError("disk I/O error")

    def activity_from(self, names: Collection[str], rows: ActivityRows) -> dict[str, Activity]:
        raise AssertionError("never called without rows")


async def test_a_failed_usage_read_gives_rows_without_usage(tmp_path: Path) -> None:
    """Usage is read in the scan's own thread hop (no store call after it): when that read fails the
    scan still answers, its rows showing no usage, and the next scan reads again."""
    runtime = GatedRuntime()
    bus = EventBus()
    activity = BrokenActivity()
    actor = Views(StatePaths(tmp_path), runtime, TransientRegistry(bus), bus, activity=activity)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        rows = await actor.rescan(["x"])
        assert rows["x"].running
        assert rows["x"].turns_today == 0
        await actor.rescan()
        assert activity.reads == [["x"], list(AGENTS)]
        nursery.cancel_scope.cancel()


class CountingActivity:
    """An activity source that counts its database reads; each read gives ``turns`` turns today."""

    def __init__(self) -> None:
        self.reads: list[list[str]] = []
        self.turns = 1

    def read_activity(self, names: Collection[str]) -> ActivityRows:
        self.reads.append(sorted(names))
        summaries = {n: Summary(turns_today=self.turns) for n in names}
        return ActivityRows(now=0.0, summaries=summaries, waiting={}, reminders={}, parents={})

    def activity_from(self, names: Collection[str], rows: ActivityRows) -> dict[str, Activity]:
        return {n: Activity(summary=rows.summaries[n], live=Liveness(now=rows.now)) for n in names}


async def test_a_rescan_without_usage_keeps_the_last_read_and_joins_without_weakening(
    tmp_path: Path,
) -> None:
    """``usage=False`` (set_paused: a pause changes no usage) skips the database read and keeps each
    row's last read activity; a scan that another caller joined without saying so still reads, and
    a name never read before is read."""
    runtime = GatedRuntime()
    bus = EventBus()
    activity = CountingActivity()
    actor = Views(StatePaths(tmp_path), runtime, TransientRegistry(bus), bus, activity=activity)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        rows = await actor.rescan(["x"], usage=False)  # never read: read now
        assert activity.reads == [["x"]]
        assert rows["x"].turns_today == 1
        activity.turns = 5
        rows = await actor.rescan(["x"], usage=False)
        assert activity.reads == [["x"]]
        assert rows["x"].turns_today == 1
        runtime.hold()
        async with trio.open_nursery() as callers:
            callers.start_soon(partial(actor.rescan, ["x"], usage=False))
            callers.start_soon(partial(actor.rescan, ["y"]))
            await eventually(lambda: len(runtime.calls) == 3)  # one scan, joined by both
            runtime.gate.set()
        assert activity.reads == [["x"], ["x", "y"]]
        assert actor.rows()["x"].turns_today == 5
        nursery.cancel_scope.cancel()
