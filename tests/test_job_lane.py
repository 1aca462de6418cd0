"""The job lane on real agent processes and a real sqlite journal.

The cancellation sweep simulates a shutdown at every runtime/store call a job makes: the lane is
cancelled there (as ``hive-c0re`` stopping would), a new lane starts on the same journal and
replays the job, and the agent must be left in a state an operator would call consistent.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import signal
import socket
import sqlite3
import threading
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors.rebuild_queue import JobLane, LaneClosed
from hivecore import store as st
from hivecore.errors import Busy
from hivecore.jobkinds import REGISTRY
from hivecore.models import Job, JobKind
from hivecore.services.lifecycle import Lifecycle
from hivecore.wire.events import RebuildQueueChanged
from hivecore.wire.helper import helper_from_body
from tests.conftest import Parts
from tests.waiting import eventually


async def start_lane(
    parts: Parts, scope: trio.CancelScope | None = None, store: Any = None
) -> tuple[JobLane, trio.CancelScope]:
    """A fresh lane on the parts' journal (as a restarted daemon would have), in its own scope."""
    lane = JobLane(parts.store, parts.bus, parts.daemon.jobs)
    scope = scope or trio.CancelScope()

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await lane.run(task_status=task_status)

    await parts.nursery.start(run)
    return lane, scope


async def journal(parts: Parts) -> list[tuple[int, str, str, str | None]]:
    rows = await parts.store.call(
        lambda c: c.execute("SELECT id, kind, state, agent FROM jobs ORDER BY id").fetchall()
    )
    return [tuple(r) for r in rows]


# --- rules -------------------------------------------------------------------------------------------


async def test_two_rebuilds_never_overlap_while_light_verbs_of_others_proceed(parts: Parts) -> None:
    c = parts.coordinator
    for name in ("a", "b", "c"):
        await c.spawn(name)
    log: list[tuple[str, str]] = []
    gates = {"a": trio.Event(), "b": trio.Event()}

    async def stand_in_build(name: str) -> None:
        log.append(("start", name))
        await gates[name].wait()
        log.append(("end", name))

    parts.daemon.lifecycle.build = stand_in_build
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.rebuild, "a")
        await eventually(lambda: log == [("start", "a")])
        nursery.start_soon(c.rebuild, "b")
        await eventually(lambda: [j.state for j in c.jobs() if j.kind == "rebuild"] == ["running", "queued"])
        # a light verb for another agent is not held up by the build lane
        await c.stop("c")
        await c.start("c")
        assert c.views()["c"].running
        assert log == [("start", "a")]  # b still waits for a
        gates["a"].set()
        await eventually(lambda: ("start", "b") in log)
        gates["b"].set()
    assert log == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    kinds = [(j.kind, j.agent, j.state) for j in c.jobs() if j.agent in ("a", "b")]
    assert ("rebuild", "a", "done") in kinds
    assert ("rebuild", "b", "done") in kinds
    # the manager heard of both rebuilds and the agents got their kick
    events = [helper_from_body(b).EVENT for _, _, b in await parts.inbox("manager")]
    assert events.count("rebuilt") == 2


async def test_a_rebuild_requested_while_one_is_queued_joins_it(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("a")
    await c.spawn("b")
    gate = trio.Event()

    async def stand_in_build(name: str) -> None:
        if name == "a":
            await gate.wait()

    parts.daemon.lifecycle.build = stand_in_build
    results: list[Job] = []

    async def rebuild(name: str) -> None:
        results.append(await parts.lane.submit("rebuild", name, source="dashboard"))

    def running(name: str) -> bool:
        job = parts.lane.busy_with(name)
        return job is not None and job.state == "running"

    with trio.fail_after(60):  # a join of a's rebuild would wait for the gate below forever
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rebuild, "a")
            await eventually(lambda: running("a"))  # accepted is not enough: queued, it could be joined
            nursery.start_soon(rebuild, "b")
            await eventually(lambda: parts.lane.busy_with("b") is not None)
            nursery.start_soon(rebuild, "b")  # joins the queued one
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Busy, match=r'agent "a" is rebuilding \(job \d+, \d+ s\)'):
                await parts.lane.submit("rebuild", "a", source="host_sock")  # running: no join
            with pytest.raises(Busy, match=r'agent "b" has a rebuild queued \(job \d+'):
                await parts.lane.submit("stop", "b", source="host_sock")
            gate.set()
    ids = sorted(j.id for j in results if j.agent == "b")
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert [j.kind for j in c.jobs() if j.agent == "b"].count("rebuild") == 1


async def test_a_cancelled_caller_abandons_the_answer_not_the_job(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.stop, "coder")
        await eventually(lambda: parts.lane.busy_with("coder") is not None)
        nursery.cancel_scope.cancel()  # the caller hangs up once its job was accepted
    await eventually(lambda: parts.lane.busy_with("coder") is None)
    assert not c.views()["coder"].running
    assert c.views()["coder"].pending is None
    assert not c.views()["coder"].failed
    assert parts.transients.snapshot() == {}
    jobs = [(j.kind, j.state) for j in c.jobs() if j.agent == "coder"]
    assert jobs[-1] == ("stop", "done")


async def test_an_atomic_job_journals_in_its_own_hop_and_falls_back_to_a_store_call(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """set_paused's running row is written in the job's one thread hop (beside its marker), not by
    a second thread woken at the same time; when that write fails (injected) the lane writes the
    row through a store call before answering, and the job still does its work."""
    c = parts.coordinator
    await c.spawn("coder")
    real = parts.store.write_here
    calls: list[int] = []

    def write_here(fn: Any) -> Any:
        calls.append(threading.get_ident())
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(fn)

    monkeypatch.setattr(parts.store, "write_here", write_here)
    await c.set_paused("coder", True)
    assert len(calls) == 1
    assert calls[0] != threading.get_ident()  # a worker thread's, never the trio thread's
    assert c.views()["coder"].paused
    await c.set_paused("coder", False)  # its in-hop write fails
    assert len(calls) == 2
    assert not c.views()["coder"].paused
    rows = [r for r in await journal(parts) if r[1] == "set_paused"]
    assert [r[2] for r in rows] == ["done", "done"]


async def test_the_journal_keeps_history_across_a_restart(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.set_paused("coder", True)
    lane, scope = await start_lane(parts)
    assert [(j.kind, j.state, j.source) for j in lane.snapshot()] == [
        ("spawn", "done", "host_sock"),
        ("set_paused", "done", "host_sock"),
    ]
    scope.cancel()


async def test_the_snapshot_is_published_as_rebuild_queue_changed(parts: Parts) -> None:
    with parts.bus.subscribe(kinds=["rebuild_queue_changed"]) as sub:
        await parts.coordinator.spawn("coder")
        states = []
        while sub._recv.statistics().current_buffer_used:
            event = sub._recv.receive_nowait()
            assert isinstance(event, RebuildQueueChanged)
            states.append([(j.kind, j.state) for j in event.jobs])
    assert states[0] == [("spawn", "queued")]
    assert ("spawn", "running") in states[-2]
    assert states[-1] == [("spawn", "done")]


# --- the cancellation sweep ----------------------------------------------------------------------------


class CancelAt:
    """Wraps an object; the k-th call of any of its async methods cancels ``scope`` first."""

    def __init__(self, target: object, counter: list[int], k: int, scope: trio.CancelScope) -> None:
        self._target = target
        self._counter = counter
        self._k = k
        self._scope = scope

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if not inspect.iscoroutinefunction(value) or attr.startswith("_"):
            return value

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._counter[0] += 1
            if self._counter[0] == self._k:
                self._scope.cancel()
                await trio.lowlevel.checkpoint()
            return await value(*args, **kwargs)

        return call


SWEEP: list[tuple[JobKind, dict[str, Any], str, int]] = [
    # (kind, its args, the agent's state before it, shards: the cancellation points are split
    # between that many tests, k = shard+1, shard+1+shards, ..., so xdist runs them side by side)
    ("spawn", {}, "absent", 2),
    ("start", {}, "stopped", 1),
    ("stop", {"graceful": True}, "running", 1),
    ("restart", {}, "running", 1),
    ("kill", {}, "running", 1),
    ("destroy", {"purge": False}, "running", 1),
    ("destroy", {"purge": True}, "running", 1),
    ("set_paused", {"paused": True}, "running", 1),
    ("rebuild", {}, "running", 2),
]
SWEEP_CASES = [
    pytest.param(
        kind, args, before, shard, shards, id=f"{kind}{args}" + (f"-{shard + 1}of{shards}" * (shards > 1))
    )
    for kind, args, before, shards in SWEEP
    for shard in range(shards)
]


async def prepare(parts: Parts, name: str, before: str) -> None:
    """Bring agent ``name`` to ``before`` (``running`` or ``stopped``) with the cheap verbs, spawning
    it only when it does not exist, and check it is then as a fresh spawn would leave it: the sweep
    reuses one agent across cancellation points (a spawn costs ~20 starts), so nothing an earlier
    point left may carry over."""
    c = parts.coordinator
    if name not in await parts.runtime.list([name]):
        await c.spawn(name)
    running = (await parts.runtime.list([name]))[name].running
    if before == "running" and not running:
        await c.start(name)
    elif before == "stopped" and running:
        await c.stop(name)
    if (await parts.views.rescan([name]))[name].paused:
        await parts.lane.submit("set_paused", name, source="host_sock", args={"paused": False})
    row = (await parts.views.rescan([name]))[name]
    assert (row.running, row.paused, row.failed, row.pending) == (before == "running", False, False, None)
    assert name not in [t.name for t in parts.views.tombstones()]
    assert [r for r in await journal(parts) if r[2] in ("queued", "running")] == []


@pytest.mark.parametrize(("kind", "args", "before", "shard", "shards"), SWEEP_CASES)
async def test_cancellation_sweep(
    parts: Parts, kind: JobKind, args: dict[str, Any], before: str, shard: int, shards: int
) -> None:
    life: Lifecycle = parts.daemon.lifecycle
    jobs = parts.daemon.jobs
    env = jobs.env  # what every job's context reaches (its store among them)
    runtime, store = life.runtime, env.store
    notifier = env.notify
    broker = notifier._broker
    views = env.views
    cancelled = 0
    for k in itertools.count(shard + 1, shards):
        # a fresh name for each spawn; one agent, brought back to ``before``, for the other kinds
        name = f"s{k}" if before == "absent" else "s"
        if before != "absent":
            await prepare(parts, name, before)
        mark = max((row[0] for row in await journal(parts)), default=0)
        with parts.bus.subscribe(kinds=["transient_set", "transient_cleared"], buffer=10_000) as sub:
            lane, scope = await start_lane(parts)
            counter = [0]
            wrapped = CancelAt(store, counter, k, scope)
            life.runtime = CancelAt(runtime, counter, k, scope)
            life.builder.runtime = life.runtime  # the build path's runtime calls count too
            # the store and the rescans every job's context reaches
            rescans = CancelAt(views, counter, k, scope)
            jobs.env = attrs.evolve(env, store=wrapped, views=rescans)  # type: ignore[arg-type]
            lane._store = wrapped  # type: ignore[assignment]  # the journal writes count too
            notifier._broker = CancelAt(broker, counter, k, scope)  # type: ignore[assignment]  # kicks, events
            try:
                await lane.submit(kind, name, source="host_sock", args=args)
                finished = True
            except LaneClosed:
                finished = False
            finally:
                life.runtime, notifier._broker = runtime, broker
                life.builder.runtime = runtime
                jobs.env = env
            scope.cancel()
            # the daemon restarts: the journal's unfinished job is replayed before anything else
            lane, scope = await start_lane(parts)
            assert [row for row in await journal(parts) if row[2] in ("queued", "running")] == []
            assert parts.transients.snapshot() == {}
            kinds = [e.KIND for e in sub._backlog]
            while sub._recv.statistics().current_buffer_used:
                kinds.append(sub._recv.receive_nowait().KIND)
            assert kinds.count("transient_set") == kinds.count("transient_cleared"), kinds
        # rows match the runtime
        rows = {n: r for n, r in (await parts.views.rescan([name])).items() if n == name}
        actual = await runtime.list([name])
        assert set(rows) == set(actual)
        if name in actual:
            assert rows[name].running == actual[name].running
            assert rows[name].pending is None
        # what the job promised holds after the replay (a job cancelled before its journal row was
        # written never happened: the caller was told it was cancelled, and nothing changed)
        journaled = any(r[0] > mark and r[1] == kind and r[3] == name for r in await journal(parts))
        if not journaled:
            assert not finished
            assert (name in actual) == (before != "absent")
        elif kind == "destroy":
            assert name not in actual
            assert (name in [t.name for t in parts.views.tombstones()]) != args["purge"]
        elif kind in ("stop", "kill"):
            assert not actual[name].running
        elif kind == "set_paused":
            assert rows[name].paused
        else:
            assert actual[name].running
        # and the next verb on that agent succeeds
        if name in actual:
            await lane.submit("stop", name, source="host_sock")
            assert not (await runtime.list([name]))[name].running
        else:
            await lane.submit("spawn", name, source="host_sock")
            assert (await runtime.list([name]))[name].running
        scope.cancel()
        if finished:
            break
        cancelled += 1
    # at least two points of every kind landed inside the job (k = 1 and 2, whichever shard has them);
    # an atomic kind (set_paused) is one await by design: its journal row, its marker and the probe
    # share the rescan's one thread hop, so that rescan is the one point inside it
    least = 1 if REGISTRY[kind].atomic else 2
    assert cancelled >= least // shards, f"{kind}: the job finished before a cancellation landed inside it"


async def test_a_client_that_hangs_up_mid_destroy_does_not_stop_the_destroy(hive: Any) -> None:
    c = hive.coordinator
    await c.spawn("coder")
    approval = await hive.store.call(lambda conn: st.insert_approval(conn, "coder", "spawn"))
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(hive.config.host_socket_path))
    sock.sendall(json.dumps({"cmd": "destroy", "name": "coder"}).encode() + b"\n")
    sock.close()  # gone before the answer
    await eventually(lambda: [t.name for t in c.tombstones()] == ["coder"])
    assert "coder" not in c.views()
    rows = {a.id: a for a in await c.approvals()}
    assert rows[approval.id].status == "failed"
    events = [
        helper_from_body(b).EVENT
        for _, _, b in await hive.store.call(lambda conn: st.undelivered_for(conn, "manager"))
    ]
    assert "destroyed" in events


# --- crash_watch baseline from intent ---------------------------------------------------------------


async def test_an_agent_killed_right_after_spawn_is_reported(parts: Parts) -> None:
    from tests.test_crash_watch import killed, manager_events

    parts.crash_watch.interval = 3600.0  # only the ticks this test runs
    await parts.nursery.start(parts.crash_watch.run)  # seeded with no agents
    await parts.coordinator.spawn("alpha")
    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    await killed(pid)  # before any tick has seen alpha running
    # by the exit watcher or by this tick, whichever comes first; by the tick's end at the latest
    await parts.crash_watch.tick()
    assert ("container_crash", "alpha") in await manager_events(parts)


async def test_request_rescan_ticks_without_waiting_for_the_interval(parts: Parts) -> None:
    parts.crash_watch.interval = 3600.0  # no tick of its own while the test runs
    await parts.nursery.start(parts.crash_watch.run)
    ticks = parts.crash_watch.statistics().ticks
    parts.crash_watch.request_rescan()
    await eventually(lambda: parts.crash_watch.statistics().ticks > ticks)


async def test_a_killed_agent_is_reported_well_before_a_tick(parts: Parts) -> None:
    """Real time, real processes: the exit watcher (a pidfd) reports the crash, not a tick."""
    from tests.test_crash_watch import manager_events

    parts.crash_watch.interval = 3600.0  # no tick while the test runs
    await parts.nursery.start(parts.crash_watch.run)
    await parts.coordinator.spawn("alpha")
    await eventually(lambda: parts.crash_watch.statistics().exit_watchers == 1)
    ticks = parts.crash_watch.statistics().ticks
    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)

    async def reported() -> bool:
        return ("container_crash", "alpha") in await manager_events(parts)

    await eventually(reported)
    assert parts.crash_watch.statistics().ticks == ticks  # no tick was involved
    assert parts.coordinator.views()["alpha"].failed
