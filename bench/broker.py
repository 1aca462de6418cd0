"""Broker throughput and wake-up latency through a real agent socket, vs bare sqlite inserts.

Run: ``.venv/bin/python bench/broker.py [--messages 2000] [--wakeups 300]``

* **turns/s**: one connection to ``agents/coder/mcp.sock`` does send → recv → ack_turn per message
  (three round trips, three store transactions); compared with bare sqlite: the same number of
  single-row ``INSERT`` transactions into a WAL database with the same pragmas, in a worker thread,
  in the same run. The ratio is what to compare across machines.
* **wake-up latency**: a second connection parks in ``recv{wait_seconds: 60}``; the time from
  writing the ``send`` line on the first connection to the parked ``recv`` answer arriving.
* **the floor of this protocol**: what a turn cannot go below however cheap the broker's own work
  gets: three request/answer round trips on the socket (timed with ``status``, which reads no
  database), one store hop (a no-op :meth:`~hivecore.store.Store.call`) and one fsynced insert (the
  bare baseline's own time); and the ratio that floor allows.

The server and the clients share one trio process (clients are the harness's own
:class:`~hivecore.harness.Channel`), so the client's work is counted against the server.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.event_bus import EventBus  # after the sys.path fix above
from hivecore import store as st
from hivecore.config import Config
from hivecore.daemon import limit_worker_threads, tune_interpreter
from hivecore.harness import Channel
from hivecore.services.broker import Broker
from hivecore.sockets.mcp import AgentSocket
from hivecore.store import Store

ROUNDS = 10
"""Chunks the turns and the bare inserts alternate in."""
WAIT = 30.0
"""The bound on a single wait (seconds): a hang fails the bench instead of blocking ``make bench``."""


class Rows:
    """A views stand-in: send/recv/ack never read rows (status is not benchmarked)."""

    def rows(self) -> dict[str, object]:
        return {}

    async def rescan(self, names: object = None) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {}


def bare_inserts(conn: sqlite3.Connection, first: int, n: int) -> float:
    """``n`` single-row insert transactions (the same rows a send writes); the seconds they took."""
    start = time.perf_counter()
    for i in range(first, first + n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO messages(sender, recipient, body, sent_at) VALUES (?,?,?,?)",
            ("coder", "coder", f"message {i}", int(time.time())),
        )
        conn.execute("COMMIT")
    return time.perf_counter() - start


async def bench(root: Path, messages: int, wakeups: int) -> None:
    tune_interpreter()  # as hivecore.daemon.main does
    limit_worker_threads()  # as hive-c0re serve does
    config = Config(state_dir=root, ensure_manager=False)
    config.paths.create_layout()
    bus = EventBus()
    store = Store(config.paths.db)
    broker = Broker(store, bus, lambda: ["coder", "peer"])
    sock = AgentSocket(config, "coder", broker, Rows())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(store.run)
        for name in ("coder", "peer"):  # as their spawns would
            await broker.begin_incarnation(name)
        await nursery.start(sock.run)
        chan = await Channel.open(sock.path)
        bare_conn = await trio.to_thread.run_sync(st.connect, root / "bare.sqlite")
        # interleaved chunks, so the machine's load (shared, noisy) hits both sides alike
        broker_s = bare_s = 0.0
        chunk = max(1, messages // ROUNDS)
        with trio.fail_after(WAIT + messages * 0.1):  # a hang fails the bench, never blocks it
            for first in range(0, messages, chunk):
                n = min(chunk, messages - first)
                start = time.perf_counter()
                for i in range(first, first + n):
                    await chan.call({"cmd": "send", "to": "coder", "body": f"message {i}"})
                    got = await chan.call({"cmd": "recv"})
                    assert len(got["messages"]) == 1, got
                    await chan.call({"cmd": "ack_turn"})
                broker_s += time.perf_counter() - start
                bare_s += await trio.to_thread.run_sync(bare_inserts, bare_conn, first, n)
        bare_conn.close()
        turns, bare = messages / broker_s, messages / bare_s
        round_trips: list[float] = []
        store_hops: list[float] = []
        with trio.fail_after(WAIT + messages * 0.01):
            for _ in range(max(10, messages // 4)):
                start = time.perf_counter()
                await chan.call({"cmd": "status"})
                round_trips.append(time.perf_counter() - start)
                start = time.perf_counter()
                await store.call(lambda c: None)
                store_hops.append(time.perf_counter() - start)
        round_trip, store_hop = statistics.median(round_trips), statistics.median(store_hops)
        floor = 3 * round_trip + store_hop + 1 / bare

        waiter = await Channel.open(sock.path)
        latencies: list[float] = []
        for i in range(wakeups):
            answer: dict[str, float] = {}

            async def park(answer: dict[str, float] = answer) -> None:
                got = await waiter.call({"cmd": "recv", "wait_seconds": 60})
                answer["at"] = time.perf_counter()
                assert len(got["messages"]) == 1, got
                await waiter.call({"cmd": "ack_turn"})

            with trio.fail_after(WAIT):
                async with trio.open_nursery() as inner:
                    inner.start_soon(park)
                    await broker.wait_parked("coder")
                    sent = time.perf_counter()
                    await chan.call({"cmd": "send", "to": "coder", "body": f"wake {i}"})
            latencies.append((answer["at"] - sent) * 1000)
        await chan.aclose()
        await waiter.aclose()
        nursery.cancel_scope.cancel()

    q = statistics.quantiles(latencies, n=100)
    print(f"broker via agent socket: {turns:8.0f} send+recv+ack turns/s ({messages} messages)")
    print(f"bare sqlite inserts:     {bare:8.0f} inserts/s")
    print(f"RATIO turns/inserts:     {turns / bare:8.3f}  (target ≥ 0.3)")
    print(f"recv wake-up after send: p50 {q[49]:.3f} ms  p99 {q[98]:.3f} ms ({wakeups} wake-ups)")
    print(
        f"floor of a turn: 3 round trips ({round_trip * 1e3:.3f} ms p50 each, no store work) + one store "
        f"hop ({store_hop * 1e3:.3f} ms) + one fsynced insert ({1e3 / bare:.3f} ms) = {floor * 1e3:.3f} ms "
        f"(this run's turn: {1e3 / turns:.3f} ms): at most {1 / floor / bare:.3f} of the bare rate"
    )


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--wakeups", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.wakeups = 50, 10
    root = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    try:
        trio.run(bench, root, args.messages, args.wakeups)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
