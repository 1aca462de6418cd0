"""crash_watch: the pure decisions, the tick schedule on a fake views actor (virtual time, exact),
and real agent processes (real clock; ticks driven by the test)."""

from __future__ import annotations

import signal
from typing import Any

import trio
import trio.testing

from actors.crash_watch import Baseline, CrashWatch, decide
from hivecore.models import ContainerView
from hivecore.wire.helper import helper_from_body
from tests.conftest import Parts
from tests.procs import exited, group_alive
from tests.waiting import eventually


async def tick(watch: CrashWatch, n: int = 1) -> None:
    """Run ``n`` full ticks now, one after another; each returns once its helper events are in the
    manager's inbox. (The real clock runs: the actor's own interval ticks may come in between, which
    changes nothing a test asserts, since a tick reports each transition once.)"""
    for _ in range(n):
        await watch.tick()


async def killed(pgid: int) -> None:
    """SIGKILL the agent's whole process group and wait (real time, bounded) until no member is left
    alive: the runtime counts an agent running while any member of its group lives."""
    await exited(pgid, kill=signal.SIGKILL, group=True)
    await eventually(lambda: not group_alive(pgid), what=f"group {pgid} gone")


async def after_ticks(parts: Parts, n: int = 1) -> None:
    await tick(parts.crash_watch, n)


async def manager_events(parts: Parts) -> list[tuple[str, str]]:
    out = []
    for _, _, body in await parts.inbox("manager"):
        ev = helper_from_body(body)
        out.append((ev.EVENT, getattr(ev, "agent", "")))
    return out


async def test_sigkilled_agent_yields_exactly_one_crash_within_one_tick(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("alpha")
    await c.spawn("beta")
    for name in ("alpha", "beta"):  # logged in, so the login axis stays quiet
        (parts.config.paths.agent_claude(name) / ".credentials.json").write_text("x")
    await parts.nursery.start(parts.crash_watch.run)
    await after_ticks(parts, 2)  # two quiet ticks
    baseline = [e for e in await manager_events(parts) if e[0] != "spawned"]
    assert baseline == []

    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    await killed(pid)
    # reported by the exit watcher or by this tick, whichever comes first; by the tick's end at the latest
    await after_ticks(parts)
    assert ("container_crash", "alpha") in await manager_events(parts)
    await after_ticks(parts, 3)  # more ticks: no repeats
    crashes = [e for e in await manager_events(parts) if e[0] == "container_crash"]
    assert crashes == [("container_crash", "alpha")]
    assert c.views()["alpha"].failed
    assert c.views()["beta"].running
    assert parts.crash_watch.statistics().ticks >= 6


async def test_operator_stop_and_destroy_are_not_crashes(parts: Parts) -> None:
    c = parts.coordinator
    for name in ("alpha", "beta", "gamma"):
        await c.spawn(name)
    await parts.nursery.start(parts.crash_watch.run)
    await after_ticks(parts)
    await c.stop("alpha")
    await c.kill("beta")
    await c.destroy("gamma")
    await after_ticks(parts, 3)
    assert [e for e in await manager_events(parts) if e[0] == "container_crash"] == []


async def test_first_tick_only_seeds(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("alpha")
    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    await killed(pid)
    await parts.nursery.start(parts.crash_watch.run)  # a daemon restart after the agent died
    await after_ticks(parts, 3)
    events = [e for e in await manager_events(parts) if e[0] != "spawned"]
    assert events == []  # already down and already needing login at seed time: nothing fires


async def test_login_axis_fires_on_transitions(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("alpha")
    await parts.nursery.start(parts.crash_watch.run)
    token = parts.config.paths.agent_claude("alpha") / ".credentials.json"
    token.write_text("{}")
    await after_ticks(parts)
    token.unlink()
    await after_ticks(parts)
    events = [e for e in await manager_events(parts) if e[0] in ("needs_login", "logged_in")]
    assert events == [("logged_in", "alpha"), ("needs_login", "alpha")]


def row(name: str, **kw: object) -> ContainerView:
    return ContainerView(name=name, container=f"h-{name}", **kw)  # type: ignore[arg-type]


def test_decide_is_pure_and_covers_each_axis() -> None:
    prev = Baseline(running=frozenset({"a", "b", "c"}), needs_login=frozenset({"d"}), stale=frozenset({"e"}))
    views = {
        "a": row("a", running=False),  # crash
        "b": row("b", running=False, pending="stopping"),  # transient: not a crash
        "c": row("c", running=False),  # stopped on purpose
        "d": row("d", needs_login=False),  # logged in
        "e": row("e", needs_update=True, needs_login=False),  # still stale: nothing
        "f": row("f", needs_update=True, needs_login=False),  # newly stale
    }
    events = decide(prev, views, quiet=lambda n: n == "c")
    assert [(e.EVENT, e.agent) for e in events] == [  # type: ignore[attr-defined]
        ("container_crash", "a"),
        ("logged_in", "d"),
        ("needs_update", "f"),
    ]


async def test_a_restarted_daemon_readopts_running_agents_without_restart_or_crash(parts: Parts) -> None:
    from hivecore.daemon import build

    await parts.coordinator.spawn("alpha")
    await parts.coordinator.spawn("beta")
    pids = {n: s.pid for n, s in (await parts.runtime.list()).items()}
    inbox_before = await parts.inbox("manager")

    # a second daemon on the same state dir: fresh runtime, views, lane and crash_watch (same db)
    second = build(parts.config, store=parts.store)
    await parts.nursery.start(second.views.run)
    await parts.nursery.start(second.lane.run)
    watch = second.crash_watch
    await parts.nursery.start(watch.run)
    await tick(watch, 3)
    assert {n: s.pid for n, s in (await second.runtime.list()).items()} == pids
    coord = second.coordinator
    assert all(v.running for v in coord.views().values())
    assert await parts.inbox("manager") == inbox_before  # no crash, no spawn, nothing
    # and the adopted agents are fully manageable
    await coord.stop("alpha")
    assert not coord.views()["alpha"].running
    assert not coord.views()["alpha"].failed


# --- the schedule, on fakes (virtual time, asserted exactly) ----------------------------------------


class FakeViews:
    """What crash_watch uses of the views actor, in memory: every full rescan is recorded."""

    def __init__(self) -> None:
        self.full_scans: list[float] = []

    def observe(self, observer: Any) -> None:
        pass

    def rows(self) -> dict[str, ContainerView]:
        return {}

    def request_rescan(self, names: list[str] | None = None) -> None:
        raise AssertionError("crash_watch asked for a targeted rescan")

    async def refresh_tombstones(self) -> list[Any]:
        return []

    async def rescan(self, names: list[str] | None = None) -> dict[str, ContainerView]:
        assert names is None
        self.full_scans.append(trio.current_time())
        await trio.sleep(0.5)  # a scan takes time: the next interval starts after it
        return {}


class FakeNotifier:
    async def notify_manager(self, event: Any, agent: str, note: str | None = None) -> None:
        raise AssertionError("no rows, no transitions, no helper events")


async def test_ticks_every_interval_and_at_once_on_request(autojump_clock: trio.testing.MockClock) -> None:
    views = FakeViews()
    watch = CrashWatch(views, FakeNotifier(), lambda _: False, interval=10.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(watch.run)  # the seeding tick, before started()
        assert watch.statistics().ticks == 1
        # ticks at +10.5 and +21 (each an interval after the previous one ended); at +21.3 that
        # scan is in flight: two requests then make one more tick, right after it
        await trio.sleep(20.8)
        watch.request_rescan()
        watch.request_rescan()  # coalesced with the one already queued
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in views.full_scans] == [0.0, 10.5, 21.0, 21.5]
    assert watch.statistics().ticks == 4
