"""The swarm's trio↔asyncio bridge (hivecore/aiobridge.py) and its NATS calls, in one run:

1. bridge round trip: trio awaits a no-op coroutine on the asyncio thread, against
   ``trio.to_thread.run_sync`` of a no-op (the other way across a thread) and a bare ``await`` of
   nothing (``trio.lowlevel.checkpoint``);
2. a JetStream KV put (acked) through the bridge, against the same put in a bare asyncio program
   (nats-py alone, no trio): what the bridge adds to a real NATS call;
3. presence: a KV put by one link until another link sees the row (publish → watch → trio), against
   a bare nats-py put → watch in one asyncio loop;
4. mail: send→recv through one broker, against send to ``coder@beta`` → recv on the other hive
   (outbox, JetStream publish, the far hive's consumer, its broker).

Needs ``nats-server`` (``.ci/setup.sh`` installs it); starts its own on a free loopback port.

    .venv/bin/python bench/swarm.py [--n N] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivecore.aiobridge import asyncio_thread
from tests.nats_server import NATS_SERVER, NatsServer, free_port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, values: list[float]) -> None:
    us = [v * 1e6 for v in values]
    print(f"  {label:<44} p50 {pct(us, 0.5):8.1f} µs   p99 {pct(us, 0.99):8.1f} µs   (n={len(us)})")


async def noop() -> None:
    return None


async def bridge_part(n: int, url: str) -> None:
    import nats

    async with asyncio_thread("bench") as bridge:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await bridge.call(noop)
            times.append(time.perf_counter() - t)
        line("bridge.call(no-op coroutine)", times)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await trio.to_thread.run_sync(lambda: None)
            times.append(time.perf_counter() - t)
        line("trio.to_thread.run_sync(no-op)", times)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await trio.lowlevel.checkpoint()
            times.append(time.perf_counter() - t)
        line("trio checkpoint (nothing crosses)", times)

        nc = await bridge.call(lambda: nats.connect(url))
        js = nc.jetstream()
        kv = await bridge.call(lambda: js.create_key_value(bucket="bench_bridge", history=1))
        times = []
        for i in range(n):
            t = time.perf_counter()
            await bridge.call(lambda i=i: kv.put(f"k{i % 50}", b'{"name":"x","running":true}'))
            times.append(time.perf_counter() - t)
        line("KV put (acked) through the bridge", times)
        await bridge.call(nc.close)


async def bare_part(n: int, url: str) -> list[float]:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="bench_bare", history=1)
    times = []
    for i in range(n):
        t = time.perf_counter()
        await kv.put(f"k{i % 50}", b'{"name":"x","running":true}')
        times.append(time.perf_counter() - t)
    # presence baseline: put → a watcher in the same loop sees it
    watcher = await kv.watchall()
    while (await watcher.updates(5)) is not None:
        pass
    seen = []
    for i in range(n):
        t = time.perf_counter()
        await kv.put("w", str(i).encode())
        while True:
            entry = await watcher.updates(5)
            if entry is not None and entry.key == "w" and entry.value == str(i).encode():
                break
        seen.append(time.perf_counter() - t)
    await nc.close()
    line("KV put (acked), bare asyncio (no trio)", times)
    return seen


async def presence_part(n: int, url: str, bare_seen: list[float]) -> None:
    """One link's views change → the other link's status shows it (two links, one process)."""
    from actors.swarm_link import SwarmLink
    from hivecore import swarm as sw
    from hivecore.models import ContainerView
    from tests.test_swarm_link import RowsStandIn

    roots = [Path(tempfile.mkdtemp(prefix="bsw", dir="/tmp")) for _ in range(2)]
    try:
        views_a, views_b = RowsStandIn(), RowsStandIn()
        a = SwarmLink(sw.SwarmSettings(url=url, hive_name="alpha"), views_a, roots[0])  # type: ignore[arg-type]
        b = SwarmLink(sw.SwarmSettings(url=url, hive_name="beta"), views_b, roots[1])  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            with trio.fail_after(30):
                await a.wait_for(lambda s: s.state == "connected")
                await b.wait_for(lambda s: s.state == "connected")
            seen = []
            for i in range(n):
                text = f"step {i}"
                t = time.perf_counter()
                views_b.set("coder", ContainerView(name="coder", container="h-coder", status_text=text))

                def shows(link: SwarmLink, text: str = text) -> bool:
                    beta = next((h for h in link.status().hives if h.name == "beta"), None)
                    return beta is not None and any(r.status_text == text for r in beta.agents)

                with trio.fail_after(10):
                    await a.wait_for(shows)
                seen.append(time.perf_counter() - t)
            nursery.cancel_scope.cancel()
        line("row change on b → a's swarm status (2 links)", seen)
        line("KV put → watch sees it, bare nats-py", bare_seen)
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)


async def mail_part(n: int, url: str) -> None:
    """send→recv: local (one broker) against cross-hive (hive a's outbox → JetStream → hive b's
    broker), two links with real stores and brokers in one process."""
    from actors.event_bus import EventBus
    from actors.swarm_link import SwarmLink
    from hivecore import swarm as sw
    from hivecore.models import ContainerView
    from hivecore.services.broker import Broker
    from hivecore.store import Store
    from tests.test_swarm_link import RowsStandIn

    roots = [Path(tempfile.mkdtemp(prefix="bsm", dir="/tmp")) for _ in range(2)]
    try:
        async with trio.open_nursery() as nursery:
            hives = []
            for name, root in zip(("gamma", "delta"), roots, strict=True):
                bus, store = EventBus(), Store(root / "hive.sqlite")
                views = RowsStandIn()
                views.set("coder", ContainerView(name="coder", container="h-coder"))
                broker = Broker(store, bus, lambda v=views: v.rows().keys())
                await nursery.start(bus.run)
                await nursery.start(store.run)
                await broker.begin_incarnation("coder")
                link = SwarmLink(
                    sw.SwarmSettings(url=url, hive_name=name),
                    views,
                    root,
                    store=store,
                    broker=broker,  # type: ignore[arg-type]
                )
                nursery.start_soon(link.run)
                hives.append((link, broker))
            (a, a_broker), (b, b_broker) = hives
            with trio.fail_after(30):
                await a.wait_for(lambda s: s.state == "connected")
                await b.wait_for(lambda s: s.state == "connected")

            async def one(sender: Broker, to: str, receiver: Broker, lease: int) -> float:
                t = time.perf_counter()
                await sender.send("peer", to, "ping")
                got = await receiver.recv("coder", lease=lease, wait_seconds=10)
                assert len(got) == 1, got
                await receiver.ack_turn("coder", lease=lease)
                return time.perf_counter() - t

            local_lease, remote_lease = a_broker.open_lease(), b_broker.open_lease()
            local, remote = [], []
            for _ in range(n):  # interleaved: the machine's load hits both alike
                local.append(await one(a_broker, "coder", a_broker, local_lease))
                remote.append(await one(a_broker, "coder@delta", b_broker, remote_lease))
            nursery.cancel_scope.cancel()
        line("send→recv, local broker", local)
        line("send→recv, cross-hive (outbox→JetStream→broker)", remote)
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    n = 20 if args.smoke else args.n
    if NATS_SERVER is None:
        sys.exit("bench/swarm.py: nats-server is not installed (.ci/setup.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="nats", dir="/tmp"))
    server = NatsServer(free_port(), root / "store", root / "nats.log")
    server.start()
    try:
        print(f"swarm bridge and NATS calls, n={n} (nats-server on {server.url})")
        trio.run(bridge_part, n, server.url)
        bare_seen: list[Any] = asyncio.run(bare_part(n, server.url))
        trio.run(presence_part, min(n, 200), server.url, bare_seen)
        trio.run(mail_part, min(n, 200), server.url)
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
