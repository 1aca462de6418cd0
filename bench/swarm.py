"""The swarm's trio↔asyncio bridge (hivecore/aiobridge.py) and its NATS calls, in one run:

1. bridge round trip: trio awaits a no-op coroutine on the asyncio thread, against
   ``trio.to_thread.run_sync`` of a no-op (the other way across a thread) and a bare ``await`` of
   nothing (``trio.lowlevel.checkpoint``);
2. a JetStream KV put (acked) through the bridge, against the same put in a bare asyncio program
   (nats-py alone, no trio): what the bridge adds to a real NATS call;
3. presence: a KV put by one link until another link sees the row (publish → watch → trio), against
   a bare nats-py put → watch in one asyncio loop;
4. mail: send→recv through one broker, against send to ``coder@beta`` → recv on the other hive
   (outbox, JetStream publish, the far hive's consumer, its broker);
5. the swarm view (docs/swarm.md "Events", "Limits"), H hives x A agents (3 x 100; ``--hives 10
   --agents 200`` for the limits): how long until hive 0 has every row after the others join (its
   status and its dashboard stream), how long a restarted link takes to resync from the key-value
   buckets, the swarm part of ``/api/state`` and the stream's ``swarm_state`` frame (size, encode
   time) against the same rows as local ``containers``, and the feed's pass over the picture;
   against a bare nats-py watcher replaying the same keys.

Needs ``nats-server`` (``.ci/setup.sh`` installs it); starts its own on a free loopback port.

    .venv/bin/python bench/swarm.py [--n N] [--smoke] [--hives H --agents A] [--view-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
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


async def bare_join(url: str, hives: int, agents: int) -> float:
    """Bare nats-py: hives-1 clients put ``agents`` keys each into a fresh bucket (acked, one at a
    time, as a hive does) while a watcher counts them; until it has them all."""
    import nats

    row = b'{"name":"a000","running":true,"status_text":"on 0"}'
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="bench_join", history=1)
    watcher = await kv.watchall()
    while (await watcher.updates(5)) is not None:
        pass
    clients = [await nats.connect(url) for _ in range(hives - 1)]
    buckets = [await c.jetstream().key_value("bench_join") for c in clients]

    async def fill(i: int, bucket: Any) -> None:
        for j in range(agents):
            await bucket.put(f"h{i}.a{j}", row)

    t = time.perf_counter()
    tasks = [asyncio.ensure_future(fill(i, b)) for i, b in enumerate(buckets)]
    seen = 0
    while seen < (hives - 1) * agents:
        if (await watcher.updates(30)) is not None:
            seen += 1
    took = time.perf_counter() - t
    await asyncio.gather(*tasks)
    for c in [*clients, nc]:
        await c.close()
    return took


async def bare_replay(url: str, keys: int) -> float:
    """A fresh nats-py watcher replaying ``keys`` keys of ``hive_agents`` (bare asyncio, no trio)."""
    import nats

    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value("hive_agents")
    t = time.perf_counter()
    watcher = await kv.watchall()
    got = 0
    while (await watcher.updates(10)) is not None:
        got += 1
    took = time.perf_counter() - t
    await nc.close()
    assert got >= keys, (got, keys)
    return took


def timed(fn: Any, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return pct(times, 0.5)


async def view_part(hives: int, agents: int, urls: list[str]) -> None:
    """Hive 0 watches hives 1..H-1 join with A agents each (see the module docstring, part 5);
    hive i joins through ``urls[i % len(urls)]`` (one server, or each server of a cluster)."""
    import json

    from actors.event_bus import EventBus
    from actors.swarm_link import SwarmLink
    from hivecore import swarm as sw
    from hivecore import swarm_view as sv
    from hivecore.models import ContainerView
    from hivecore.wire.converter import converter
    from hivecore.wire.events import SWARM_VIEW_KINDS, SwarmStateEvent, event_to_dict
    from tests.test_swarm_link import RowsStandIn
    from web.stream import sse

    names = [f"hive{i}" for i in range(hives)]
    roots = [Path(tempfile.mkdtemp(prefix="bsv", dir="/tmp")) for _ in names]
    total, remote = hives * agents, (hives - 1) * agents

    url = urls[0]

    def make(name: str, root: Path, bus: EventBus | None) -> SwarmLink:
        views = RowsStandIn()
        for j in range(agents):
            agent = f"a{j:03d}"
            views.set(
                agent, ContainerView(name=agent, container=f"h-{agent}", running=True, status_text=f"on {j}")
            )
        settings = sw.SwarmSettings(
            url=urls[names.index(name) % len(urls)], hive_name=name, heartbeat_ttl=10.0
        )
        return SwarmLink(settings, views, root, bus=bus)  # type: ignore[arg-type]

    def rows(link: SwarmLink) -> int:
        # checked after every update the link takes: its cache, not status() (a sort per call)
        return sum(len(link._agents.get(n, {})) for n in names)

    async def follow(bus: EventBus, page: dict[tuple[str, str], Any], done: trio.Event) -> None:
        """What a page has: the swarm_* events applied as dashboard.js applies them."""
        with bus.subscribe(kinds=sorted(SWARM_VIEW_KINDS), buffer=4096) as sub:
            async for event in sub:
                data = event_to_dict(event)
                if data["kind"] == "swarm_state":
                    page.clear()
                    for h in data["swarm"]["hives"]:
                        page.update({(h["name"], a["name"]): a for a in h["agents"]})
                elif data["kind"] == "swarm_agent":
                    page[(data["hive"], data["agent"]["name"])] = data["agent"]
                elif data["kind"] == "swarm_agent_removed":
                    page.pop((data["hive"], data["name"]), None)
                if len(page) >= remote:
                    done.set()

    async def watch(
        link: SwarmLink, nursery: trio.Nursery
    ) -> tuple[dict[Any, Any], trio.Event, trio.CancelScope]:
        page: dict[Any, Any] = {}
        done = trio.Event()
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(follow, link.feed._bus, page, done)
                    inner.start_soon(link.run)

        nursery.start_soon(run)
        return page, done, scope

    try:
        async with trio.open_nursery() as nursery:
            a = make(names[0], roots[0], EventBus())
            _, a_done, a_scope = await watch(a, nursery)
            with trio.fail_after(60):
                await a.wait_for(lambda s: s.state == "connected")
            t = time.perf_counter()
            others = [make(n, r, None) for n, r in zip(names[1:], roots[1:], strict=True)]
            for link in others:
                nursery.start_soon(link.run)
            with trio.fail_after(300):
                for link in others:
                    await link.wait_for(lambda s: s.state == "connected")
                joined_at = time.perf_counter() - t
                await a.wait_for(lambda s: rows(s) >= total)
                status_at = time.perf_counter() - t
                await a_done.wait()
                page_at = time.perf_counter() - t
            print(f"  join: the other hives connected (claim, buckets, watches) {joined_at * 1e3:9.1f} ms")
            print(f"  join: hive 0 status has all {total} rows      {status_at * 1e3:9.1f} ms")
            print(f"  join: hive 0 dashboard stream has all {remote} remote rows {page_at * 1e3:9.1f} ms")
            bare = await trio.to_thread.run_sync(lambda: asyncio.run(bare_join(url, hives, agents)))
            label = f"baseline: bare nats-py, {hives - 1} writers, a watcher has {remote} keys"
            print(f"  {label} {bare * 1e3:8.1f} ms")
            # resync: hive 0's link restarts (a new session from nothing) and replays the buckets
            a_scope.cancel()
            t = time.perf_counter()
            again = make(names[0], roots[0], EventBus())
            _, again_done, _ = await watch(again, nursery)
            with trio.fail_after(300):
                await again.wait_for(lambda s: s.state == "connected" and rows(s) >= total)
                status_at = time.perf_counter() - t
                await again_done.wait()
                page_at = time.perf_counter() - t
            print(f"  resync after a restart: status has all rows    {status_at * 1e3:9.1f} ms")
            print(f"  resync after a restart: stream has all rows    {page_at * 1e3:9.1f} ms")
            replay = await trio.to_thread.run_sync(lambda: asyncio.run(bare_replay(url, total)))
            print(f"  baseline: bare nats-py watcher replays {total} keys {replay * 1e3:9.1f} ms")
            # what a page gets: /api/state's swarm part and the stream's first frame
            status = again.status()
            swarm_json = json.dumps(converter.unstructure(status))
            frame = sse(event_to_dict(SwarmStateEvent(swarm=sv.shown(status))))
            local = [
                ContainerView(name=f"a{j:03d}", container=f"h-a{j:03d}", running=True, status_text=f"on {j}")
                for j in range(total)
            ]
            local_json = json.dumps(converter.unstructure(local))
            enc_swarm = timed(lambda: json.dumps(converter.unstructure(again.status())))
            enc_frame = timed(lambda: sse(event_to_dict(SwarmStateEvent(swarm=sv.shown(again.status())))))
            enc_local = timed(lambda: json.dumps(converter.unstructure(local)))
            kib = len(swarm_json) / 1024
            print(f"  /api/state swarm part: {kib:8.1f} KiB, {enc_swarm * 1e3:7.2f} ms to build")
            print(f"  stream's swarm_state frame: {len(frame) / 1024:8.1f} KiB, {enc_frame * 1e3:7.2f} ms")
            kib = len(local_json) / 1024
            print(f"  baseline: {total} local containers: {kib:8.1f} KiB, {enc_local * 1e3:7.2f} ms")
            assert again.feed is not None
            feed = again.feed
            step = timed(lambda: feed.step(force=True))
            idle = timed(feed.step)
            print(f"  the feed's pass over {total} rows (after a change): {step * 1e3:7.2f} ms")
            print(f"  the feed's idle tick (no change, every 0.25 s): {idle * 1e6:7.1f} µs")
            nursery.cancel_scope.cancel()
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)


CLUSTER_CONF = """server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
cluster {{
  name: hives
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
"""


def cluster_part(hives: int, agents: int, root: Path) -> None:
    """Part 5 on three ``nats-server``s in one cluster (docs/swarm.md "Limits"): the buckets and
    the events stream made with three replicas before any hive joins, as the docs say; hive i joins
    through server i % 3."""
    import subprocess

    from hivecore import swarm as sw
    from hivecore import swarm_view as sv

    ports = [(free_port(), free_port()) for _ in range(3)]
    procs = []
    assert NATS_SERVER is not None
    for i, (port, route) in enumerate(ports):
        routes = ", ".join(f"nats://127.0.0.1:{r}" for j, (_, r) in enumerate(ports) if j != i)
        conf = root / f"n{i}.conf"
        conf.write_text(
            CLUSTER_CONF.format(name=f"n{i}", port=port, store=root / f"js{i}", route=route, routes=routes)
        )
        log = (root / f"n{i}.log").open("ab")
        procs.append(
            subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
        )
    urls = [f"nats://127.0.0.1:{p}" for p, _ in ports]

    async def replicated() -> float:
        import nats

        t = time.perf_counter()
        while True:  # until the cluster has a JetStream meta leader
            try:
                nc = await nats.connect(urls[0])
                js = nc.jetstream(timeout=5)
                await js.create_key_value(bucket=sw.CLAIMS_BUCKET, history=1, replicas=3)
                break
            except Exception:
                await nc.close()
                await asyncio.sleep(0.5)
                if time.perf_counter() - t > 60:
                    raise
        await js.create_key_value(bucket=sw.HEARTBEATS_BUCKET, history=1, ttl=10.0, replicas=3)
        await js.create_key_value(bucket=sw.AGENTS_BUCKET, history=1, replicas=3)
        await js.add_stream(sv.stream_config(replicas=3))
        info = await js.stream_info("KV_" + sw.AGENTS_BUCKET)
        assert info.config.num_replicas == 3, info.config
        await nc.close()
        return time.perf_counter() - t

    try:
        took = asyncio.run(replicated())
        print(
            f"the swarm view on a 3-server cluster (R3 buckets and stream), {hives} hives x {agents} agents"
        )
        print(f"  cluster up and the buckets and stream made with 3 replicas {took * 1e3:9.1f} ms")
        trio.run(view_part, hives, agents, urls)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--hives", type=int, default=3, help="the swarm view: hives (part 5)")
    parser.add_argument("--agents", type=int, default=100, help="the swarm view: agents per hive")
    parser.add_argument("--view-only", action="store_true", help="only the swarm view (part 5)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="part 5 on a 3-server NATS cluster, buckets and stream replicated",
    )
    args = parser.parse_args()
    n = 20 if args.smoke else args.n
    hives, agents = (3, 10) if args.smoke else (args.hives, args.agents)
    if NATS_SERVER is None:
        sys.exit("bench/swarm.py: nats-server is not installed (.ci/setup.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="nats", dir="/tmp"))
    server = NatsServer(free_port(), root / "store", root / "nats.log")
    server.start()
    try:
        if not args.view_only:
            print(f"swarm bridge and NATS calls, n={n} (nats-server on {server.url})")
            trio.run(bridge_part, n, server.url)
            bare_seen: list[Any] = asyncio.run(bare_part(n, server.url))
            trio.run(presence_part, min(n, 200), server.url, bare_seen)
            trio.run(mail_part, min(n, 200), server.url)
        server.kill()  # the view part on a fresh server: only its hives in the buckets
        shutil.rmtree(root / "store", ignore_errors=True)
        server.start()
        if args.cluster:
            server.kill()
            cluster_part(hives, agents, root)
        else:
            print(f"the swarm view, {hives} hives x {agents} agents")
            trio.run(view_part, hives, agents, [server.url])
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
