"""Event bus: seq stamping, fan-out, lag dropping, replay, close."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.event_bus import EventBus, RefetchRequired
from hivecore.wire.events import ContainerRemoved, Event, TransientCleared


def removed(name: str) -> ContainerRemoved:
    return ContainerRemoved(name=name)


async def test_publish_stamps_strictly_increasing_seq() -> None:
    bus = EventBus()
    seqs = [bus.publish(removed(f"a{i}")).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert bus.current_seq() == 5


async def test_publish_never_checkpoints() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    with trio.testing.assert_no_checkpoints():
        for i in range(10):
            bus.publish(removed(f"a{i}"))
    assert sub is not None


async def test_subscribers_receive_in_order_with_kind_filter() -> None:
    bus = EventBus()
    with bus.subscribe() as every, bus.subscribe(kinds=["transient_cleared"]) as only:
        bus.publish(removed("a"))
        bus.publish(TransientCleared(name="b"))
        bus.close()
        got_all = [e async for e in every]
        got_filtered = [e async for e in only]
    assert [e.KIND for e in got_all] == ["container_removed", "transient_cleared"]
    assert [e.seq for e in got_all] == [1, 2]
    assert got_filtered == [TransientCleared(name="b", seq=2)]


async def test_slow_subscriber_is_dropped_without_delaying_a_fast_one() -> None:
    bus = EventBus(buffer=4)
    fast_got: list[Event] = []
    with bus.subscribe() as slow, bus.subscribe() as fast:

        async def consume_fast() -> None:
            async for e in fast:
                fast_got.append(e)  # noqa: PERF401  # must observe each delivery as it lands

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume_fast)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(20):
                bus.publish(removed(f"a{i}"))
                await trio.testing.wait_all_tasks_blocked()
                # the fast reader has everything published so far: nobody waited on the slow one
                assert len(fast_got) == i + 1
            bus.close()
        slow_got = [e async for e in slow]
    assert slow.lagged
    assert len(slow_got) == 4  # its buffer, then the stream ended
    assert not fast.lagged
    assert [e.seq for e in fast_got] == list(range(1, 21))
    assert bus.statistics().dropped_subscribers == 1


async def test_replay_after_seq_when_ring_covers_the_gap() -> None:
    bus = EventBus(ring_size=8)
    for i in range(6):
        bus.publish(removed(f"a{i}"))
    with bus.subscribe(after_seq=3) as sub:
        bus.publish(removed("live"))
        bus.close()
        seqs = [e.seq async for e in sub]
    assert seqs == [4, 5, 6, 7]


async def test_replay_says_refetch_when_the_ring_no_longer_covers() -> None:
    bus = EventBus(ring_size=4)
    for i in range(10):
        bus.publish(removed(f"a{i}"))
    with pytest.raises(RefetchRequired, match="refetch"):
        bus.subscribe(after_seq=2)
    # exactly at the edge is still covered
    bus.subscribe(after_seq=6).close()


async def test_seq_from_before_a_restart_needs_refetch() -> None:
    bus = EventBus()
    bus.publish(removed("a"))
    with pytest.raises(RefetchRequired):
        bus.subscribe(after_seq=500)


async def test_unsubscribe_stops_delivery() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    sub.close()
    bus.publish(removed("a"))
    assert bus.statistics().subscribers == 0
    with pytest.raises(trio.EndOfChannel):
        await sub.receive()
