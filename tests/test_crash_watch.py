"""crash_watch on real agent processes, with trio's MockClock driving the 10 s poll."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import trio
import trio.testing

from actors.crash_watch import Baseline, CrashWatch, decide
from hivecore.models import ContainerView
from hivecore.wire.helper import helper_from_body
from tests.conftest import Parts


def wait_dead(pid: int) -> None:
    """Wait (real time, bounded) for a SIGKILLed process to be dead or a zombie."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not die")


async def wait_ticks(watch: CrashWatch, n: int = 1) -> None:
    """Let crash_watch complete ``n`` more ticks (their helper events are then in the inbox).

    Bounded in *real* time: under the autojump clock virtual time races ahead whenever every task
    waits on a thread (the store), so a virtual-time bound would fire on a slow disk.
    """
    target = watch.statistics().ticks + n
    deadline = time.monotonic() + 30
    while watch.statistics().ticks < target:  # virtual time (MockClock)
        assert time.monotonic() < deadline, f"crash_watch stopped ticking at {watch.statistics().ticks}"
        await trio.sleep(1)


async def after_ticks(parts: Parts, n: int = 1) -> None:
    await wait_ticks(parts.crash_watch, n)


async def manager_events(parts: Parts) -> list[tuple[str, str]]:
    out = []
    for _, _, body in await parts.inbox("manager"):
        ev = helper_from_body(body)
        out.append((ev.EVENT, getattr(ev, "agent", "")))
    return out


async def test_sigkilled_agent_yields_exactly_one_crash_within_one_tick(
    parts: Parts, autojump_clock: trio.testing.MockClock
) -> None:
    c = parts.coordinator
    await c.spawn("alpha")
    await c.spawn("beta")
    for name in ("alpha", "beta"):  # logged in, so the login axis stays quiet
        (parts.config.paths.agent_claude(name) / "token").write_text("x")
    await parts.nursery.start(parts.crash_watch.run)
    await after_ticks(parts, 2)  # two quiet ticks
    baseline = [e for e in await manager_events(parts) if e[0] != "spawned"]
    assert baseline == []

    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_dead(pid)
    # reported by the exit watcher or the next tick, whichever comes first: under the autojump clock
    # ticks race ahead of the real process exit, so wait in real time (bounded)
    deadline = time.monotonic() + 10
    while ("container_crash", "alpha") not in await manager_events(parts):
        assert time.monotonic() < deadline, "the crash was never reported"
        await trio.sleep(1)
    await after_ticks(parts, 3)  # more ticks: no repeats
    crashes = [e for e in await manager_events(parts) if e[0] == "container_crash"]
    assert crashes == [("container_crash", "alpha")]
    assert c.views()["alpha"].failed
    assert c.views()["beta"].running
    assert parts.crash_watch.statistics().ticks >= 6


async def test_operator_stop_and_destroy_are_not_crashes(
    parts: Parts, autojump_clock: trio.testing.MockClock
) -> None:
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


async def test_first_tick_only_seeds(parts: Parts, autojump_clock: trio.testing.MockClock) -> None:
    c = parts.coordinator
    await c.spawn("alpha")
    pid = (await parts.runtime.list())["alpha"].pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_dead(pid)
    await parts.nursery.start(parts.crash_watch.run)  # a daemon restart after the agent died
    await after_ticks(parts, 3)
    events = [e for e in await manager_events(parts) if e[0] != "spawned"]
    assert events == []  # already down and already needing login at seed time: nothing fires


async def test_login_axis_fires_on_transitions(parts: Parts, autojump_clock: trio.testing.MockClock) -> None:
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


async def test_a_restarted_daemon_readopts_running_agents_without_restart_or_crash(
    parts: Parts, autojump_clock: trio.testing.MockClock
) -> None:
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
    await wait_ticks(watch, 3)
    assert {n: s.pid for n, s in (await second.runtime.list()).items()} == pids
    coord = second.coordinator
    assert all(v.running for v in coord.views().values())
    assert await parts.inbox("manager") == inbox_before  # no crash, no spawn, nothing
    # and the adopted agents are fully manageable
    await coord.stop("alpha")
    assert not coord.views()["alpha"].running
    assert not coord.views()["alpha"].failed
