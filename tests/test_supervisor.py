"""Supervisor: start order, one-for-one restart with backoff, siblings unaffected, escalation."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors.event_bus import EventBus
from actors.supervisor import ChildSpec, RestartPolicy, Supervisor, SupervisorEscalation
from hivecore.wire.events import ActorCrashed


class Pinger:
    """A healthy actor: answers pings through its channel while running."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[trio.MemorySendChannel[str]](0)
        self.starts = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        task_status.started()
        async for reply in self.recv:
            reply.send_nowait("pong")

    async def ping(self) -> str:
        s, r = trio.open_memory_channel[str](1)
        await self.send.send(s)
        return await r.receive()


class Crasher:
    def __init__(self, crashes: int) -> None:
        self.crashes_left = crashes
        self.starts: list[float] = []
        self.up = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(trio.current_time())
        task_status.started()
        await trio.sleep(1)
        if self.crashes_left:
            self.crashes_left -= 1
            raise ValueError(f"injected crash, {self.crashes_left} left")
        self.up.set()
        await trio.sleep_forever()


async def test_crashing_actor_is_restarted_with_backoff_while_others_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus()
    sup = Supervisor(bus, RestartPolicy(initial_backoff=0.5, max_backoff=2.0, healthy_after=100))
    pinger, crasher = Pinger(), Crasher(crashes=4)
    with bus.subscribe(kinds=["actor_crashed"]) as crashes:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [ChildSpec("pinger", pinger.run), ChildSpec("crasher", crasher.run)])
            while not crasher.up.is_set():
                assert await pinger.ping() == "pong"  # the sibling keeps serving throughout
                await trio.sleep(0.25)
            stats = {c.name: c for c in sup.statistics()}
            nursery.cancel_scope.cancel()
        bus.close()
        events = [e async for e in crashes]
    assert pinger.starts == 1
    assert len(crasher.starts) == 5
    gaps = [b - a for a, b in zip(crasher.starts, crasher.starts[1:], strict=False)]
    # 1 s of running before each crash, then backoff 0.5, 1, 2, 2 (capped)
    assert gaps == pytest.approx([1.5, 2.0, 3.0, 3.0])
    assert [e.restarts for e in events if isinstance(e, ActorCrashed)] == [0, 1, 2, 3]
    assert all(isinstance(e, ActorCrashed) and "injected crash" in e.error for e in events)
    assert stats["crasher"].restarts == 4
    assert stats["crasher"].state == "running"
    assert stats["pinger"].restarts == 0


async def test_actors_start_in_order_each_ready_before_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[str] = []

    def make(name: str) -> ChildSpec:
        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            order.append(f"{name}:init")
            await trio.sleep(1)
            order.append(f"{name}:ready")
            task_status.started()
            await trio.sleep_forever()

        return ChildSpec(name, run)

    sup = Supervisor(EventBus())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [make("a"), make("b"), make("c")])
        nursery.cancel_scope.cancel()
    assert order == ["a:init", "a:ready", "b:init", "b:ready", "c:init", "c:ready"]


async def test_too_many_crashes_escalate(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    sup = Supervisor(bus, RestartPolicy(initial_backoff=0.1, max_backoff=0.1, max_restarts=3, window=60))
    with pytest.RaisesGroup(
        pytest.RaisesExc(SupervisorEscalation, match="crasher crashed 4 times"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [ChildSpec("crasher", Crasher(crashes=100).run)])
    assert {c.name: c.state for c in sup.statistics()} == {"crasher": "failed"}


async def test_failure_during_first_start_propagates() -> None:
    async def broken(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("cannot bind")

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="cannot bind"), flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor(EventBus()).run, [ChildSpec("broken", broken)])
