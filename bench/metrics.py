"""What a ``/metrics`` scrape costs with 50 agents, and how long it holds the event loop.

Run: ``.venv/bin/python bench/metrics.py [--agents 50] [--reps 50]``

The real daemon (``hivecore.daemon.main``, dashboard on port 0) on a state dir holding ``--agents``
agents (``sleep 3600`` under the shim, half of them running), each with 20 unacked messages and 200
reported turns, plus 20,000 acked messages and 10 pending approvals in the database. Measured:

1. ``GET /metrics`` with the bearer token over HTTP (httpx, a new connection each): p50/p99;
2. ``Metrics.scrape()`` called directly (the store read in its thread + the rendering): p50/p99;
3. the part on the trio thread alone (collecting the metric families: what a scrape blocks the
   event loop for) and the text rendering (a worker thread), p50/p99, and the loop lag a probe task
   sees while scrapes run back to back.

Every agent process started here is killed on the way out, on every path.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio
import trio.lowlevel
from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivecore import usage  # after the sys.path fix above
from hivecore.config import Config
from hivecore.daemon import Daemon, limit_worker_threads
from hivecore.daemon import main as daemon_main
from hivecore.metrics import _Families, read_db_facts
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.process import ProcessRuntime
from hivecore.store import Store
from tests.procs import kill_everything_under
from web.app import daemon_app
from web.auth import ensure_token

WAIT = 60.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def seed(conn: sqlite3.Connection, names: list[str]) -> None:
    now = int(time.time())
    rows: list[tuple[str, str, str, int, int | None]] = [
        ("operator", n, f"unacked {i}", now - 60 * i, None) for n in names for i in range(20)
    ]
    rows += [("operator", names[i % len(names)], f"acked {i}", now - 3600, now - 60) for i in range(20_000)]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO messages(sender, recipient, body, sent_at, acked_at) VALUES (?,?,?,?,?)", rows
    )
    for i in range(10):
        conn.execute(
            "INSERT INTO approvals(agent, kind, requested_at) VALUES (?, 'spawn', '2026-01-01T00:00:00Z')",
            (f"new{i}",),
        )
    conn.execute("COMMIT")
    turn = usage.Turn(duration_seconds=30.0, input_tokens=1000, output_tokens=200, cost_usd=0.01)
    for name in names:
        for _ in range(200):
            usage.record(conn, name, turn, now - 100)


async def prepare(root: Path, n: int) -> Config:
    config = Config(state_dir=root, dashboard_port=0, stop_timeout=2.0, ensure_manager=False)
    config.paths.create_layout()
    runtime = ProcessRuntime(config.paths)
    names = [f"a{i:03d}" for i in range(n)]
    env = {"PATH": os.environ["PATH"]}
    for name in names:
        for sub in ("state", "claude", "config"):
            (config.paths.agent_dir(name) / sub).mkdir(parents=True, exist_ok=True)
        await runtime.create(AgentSpec(name=name, command=("sleep", "3600"), env=env))
    for name in names[: n // 2]:
        await runtime.start(name)
    store = Store(config.paths.db)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.call(lambda c: seed(c, names))
        nursery.cancel_scope.cancel()
    ensure_token(config.paths.operator_token)
    return config


async def run(root: Path, n: int, reps: int) -> None:
    config = await prepare(root, n)
    token, _ = ensure_token(config.paths.operator_token)
    limit_worker_threads()
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(daemon_main, config, web_factory=daemon_app))
        await daemon.views.rescan()
        rows = daemon.views.rows()
        running = sum(r.running for r in rows.values())
        base = daemon.dashboard_urls[0]
        http: list[float] = []
        size = 0
        for _ in range(reps + 2):
            async with httpx.AsyncClient(base_url=base, timeout=WAIT) as client:
                t0 = time.perf_counter()
                resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                http.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
                size = len(resp.content)
        series = sum(1 for line in resp.content.splitlines() if line and not line.startswith(b"#"))
        direct: list[float] = []
        for _ in range(reps + 2):
            t0 = time.perf_counter()
            await daemon.metrics.scrape()
            direct.append(time.perf_counter() - t0)
        collect: list[float] = []
        render: list[float] = []
        collector = daemon.metrics._collector
        assert collector is not None
        facts = await daemon.store.call(read_db_facts)
        for _ in range(reps + 2):
            collector.facts = facts
            t0 = time.perf_counter()
            families = _Families(list(daemon.metrics.registry.collect()))
            t1 = time.perf_counter()
            collector.facts = None
            generate_latest(families)
            collect.append(t1 - t0)
            render.append(time.perf_counter() - t1)
            await trio.lowlevel.checkpoint()
        lag: list[float] = []
        idle: list[float] = []
        samples = lag
        done = trio.Event()

        async def probe() -> None:
            while not done.is_set():
                t0 = trio.current_time()
                await trio.sleep(0.001)
                samples.append(trio.current_time() - t0 - 0.001)

        nursery.start_soon(probe)
        t0 = time.perf_counter()
        for _ in range(reps):
            await daemon.metrics.scrape()
        took = time.perf_counter() - t0
        samples = idle
        await trio.sleep(took)  # the baseline: as long, no scrape
        done.set()
        nursery.cancel_scope.cancel()
    print(f"{n} agents ({running} running), {series} samples, {size} bytes per scrape")
    print(f"{'':<44} {'p50 ms':>8} {'p99 ms':>8}")
    for label, samples in (
        ("GET /metrics over HTTP (new connection)", http[2:]),
        ("Metrics.scrape() (store read + render)", direct[2:]),
        ("collect (on the trio thread)", collect[2:]),
        ("text rendering (in a worker thread)", render[2:]),
        ("event-loop lag while scraping back to back", lag),
        ("event-loop lag, no scrape (baseline)", idle),
    ):
        print(f"{label:<44} {ms(pct(samples, 0.5))} {ms(pct(samples, 0.99))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.reps = 4, 3
    os.environ.setdefault("HIVE_SKIP_AUTO_UPDATE", "1")
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    try:
        trio.run(run, root, args.agents, args.reps)
    finally:
        kill_everything_under(root / "run" / "process")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
