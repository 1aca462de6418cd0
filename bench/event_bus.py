"""Event bus: publish→deliver latency for 1, 100 and 1000 subscribers, against a bare fan-out.

The baseline is the same fan-out done by hand: one ``trio.open_memory_channel`` per subscriber and
a ``send_nowait`` loop, with identical consumer tasks. Both run in this process, in this run, so
the ratio says what the bus's bookkeeping (seq stamping, ring, kind filter, lag check) costs.

    .venv/bin/python bench/event_bus.py [--events N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.event_bus import EventBus
from hivecore.wire.events import ContainerRemoved, Event


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(n_subs: int, n_events: int, use_bus: bool) -> list[float]:
    stamps: list[float] = []
    sink: list[float] = []
    receivers: list[trio.MemoryReceiveChannel[Event]] = []
    publish: Callable[[Event], object]
    if use_bus:
        bus = EventBus(buffer=256)
        subs = [bus.subscribe() for _ in range(n_subs)]
        publish = bus.publish

        async def consume_sub(i: int) -> None:
            async for _ in subs[i]:
                sink.append(time.perf_counter())  # noqa: PERF401  # timestamp per delivery
    else:
        sends = []
        for _ in range(n_subs):
            s, r = trio.open_memory_channel[Event](256)
            sends.append(s)
            receivers.append(r)

        def publish(ev: Event) -> None:
            for s in sends:
                s.send_nowait(ev)

        async def consume_sub(i: int) -> None:
            async for _ in receivers[i]:
                sink.append(time.perf_counter())  # noqa: PERF401  # timestamp per delivery

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for i in range(n_subs):
            nursery.start_soon(consume_sub, i)
        await trio.testing.wait_all_tasks_blocked()
        event = ContainerRemoved(name="bench")
        for _ in range(n_events):
            sink.clear()
            t0 = time.perf_counter()
            publish(event)
            await trio.testing.wait_all_tasks_blocked()
            stamps.append(t0)
            latencies.extend(t - t0 for t in sink)
        nursery.cancel_scope.cancel()
    return latencies


async def main(n_events: int, sizes: tuple[int, ...] = (1, 100, 1000)) -> None:
    print(f"publish→deliver latency, {n_events} events per row (µs)")
    cols = ("subscribers", "bus p50", "bus p99", "bare p50", "bare p99", "p50 ratio", "p99 ratio")
    print(f"{cols[0]:>11} " + " ".join(f"{c:>9}" for c in cols[1:]))
    for n in sizes:
        events = max(20, n_events // max(1, n // 100))
        bus = await measure(n, events, use_bus=True)
        bare = await measure(n, events, use_bus=False)
        b50, b99, r50, r99 = (pct(bus, 0.5), pct(bus, 0.99), pct(bare, 0.5), pct(bare, 0.99))
        print(
            f"{n:>11} {b50 * 1e6:>9.1f} {b99 * 1e6:>9.1f} {r50 * 1e6:>9.1f} {r99 * 1e6:>9.1f} "
            f"{b50 / r50:>9.2f} {b99 / r99:>9.2f}"
        )
    print("ratio = bus / bare trio memory-channel fan-out (same consumers, same run); 1.0 = no overhead")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        trio.run(main, 20, (1, 100))
    else:
        trio.run(main, args.events)
