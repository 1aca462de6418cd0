"""The hive's tools over MCP vs the raw socket, and how fast a message wakes a Claude turn.

Run: ``.venv/bin/python bench/mcp_tools.py [--calls 300] [--wakeups 5]``

* **tool call round trip**: ``send`` (one queued row) and ``whoami`` (no store), called through
  ``hive-mcp`` (a real ``python -m hivecore.mcp`` subprocess) by the official SDK's client
  (``ClientSession`` over stdio), vs the same request line written straight to the agent socket on a
  fresh connection each time (what ``hive-mcp`` itself does per call), and on one kept connection
  (the harness's way). Calls alternate in chunks, so machine load hits every side alike. Goal: MCP
  at most 1.5 times the raw socket.
* **wake-up latency**: the harness (``run_harness``, Claude backend, in this process) parked in
  ``recv``; the time from writing a ``send`` line to (a) the ``claude`` process starting (a wrapper
  script records its exec time) and (b) the turn's first request reaching the model (the loopback
  stand-in from ``tests/model_api.py``). Skipped when the CLI is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import ClientSession  # after the sys.path fix above
from mcp.client.stdio import StdioServerParameters, stdio_client

from actors.event_bus import EventBus
from hivecore import claude_turn as ct
from hivecore.config import Config
from hivecore.daemon import limit_worker_threads, tune_interpreter
from hivecore.harness import Channel, HarnessSettings, run_harness
from hivecore.runtime.process import PACKAGE_ROOT
from hivecore.services.broker import Broker
from hivecore.sockets.client import request
from hivecore.sockets.mcp import AgentSocket
from hivecore.store import Store
from tests.model_api import ModelApi
from tests.waiting import eventually

ROUNDS = 10
WAIT = 60.0
"""The bound on a single wait (seconds): a hang fails the bench instead of blocking ``make bench``."""


class Rows:
    """A views stand-in: the benchmarked verbs never read rows."""

    def rows(self) -> dict[str, object]:
        return {}

    async def rescan(self, names: object = None) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {}


def pct(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=100) if len(xs) > 1 else [xs[0]] * 99
    return f"p50 {q[49]:7.3f} ms  p99 {q[98]:7.3f} ms"


async def round_trips(sock: AgentSocket, calls: int) -> None:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(PACKAGE_ROOT),
        "HIVE_SOCKET": str(sock.path),
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "hivecore.mcp"], env=env)
    kept = await Channel.open(sock.path)
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # opened once, before timing
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
            with trio.fail_after(WAIT):
                await s.initialize()
                await s.list_tools()
            for verb, args in (("whoami", {}), ("send", {"to": "peer", "body": "bench"})):
                line = json.dumps({"cmd": verb, **args}).encode() + b"\n"
                mcp_ms: list[float] = []
                fresh_ms: list[float] = []
                kept_ms: list[float] = []
                chunk = max(1, calls // ROUNDS)
                with trio.fail_after(WAIT + calls * 0.5):
                    for first in range(0, calls, chunk):
                        for _ in range(min(chunk, calls - first)):
                            t = time.perf_counter()
                            result = await s.call_tool(verb, args)
                            mcp_ms.append((time.perf_counter() - t) * 1000)
                            assert not result.is_error, result
                        for _ in range(min(chunk, calls - first)):
                            t = time.perf_counter()
                            answer = await trio.to_thread.run_sync(request, str(sock.path), line, 10.0)
                            fresh_ms.append((time.perf_counter() - t) * 1000)
                            assert json.loads(answer)["ok"], answer
                        for _ in range(min(chunk, calls - first)):
                            t = time.perf_counter()
                            got = await kept.call({"cmd": verb, **args})
                            kept_ms.append((time.perf_counter() - t) * 1000)
                            assert got["ok"], got
                m, f, k = (statistics.median(x) for x in (mcp_ms, fresh_ms, kept_ms))
                print(f"{verb:7s} via hive-mcp (SDK client):   {pct(mcp_ms)}")
                print(f"{verb:7s} raw socket, new connection: {pct(fresh_ms)}   MCP/raw {m / f:5.2f}x")
                print(f"{verb:7s} raw socket, kept connection:{pct(kept_ms)}   MCP/raw {m / k:5.2f}x")
                print(f"{verb:7s} goal: MCP at most 1.5x the raw socket")
    await kept.aclose()


def turns_done(state: Path, more_than: int) -> bool:
    path = state / ct.TURNS_FILE
    return path.exists() and len(path.read_text().splitlines()) > more_than


def asked(api: ModelApi, more_than: int) -> bool:
    return len(api.requests) > more_than


async def wakeups(root: Path, sock: AgentSocket, broker: Broker, n: int) -> None:
    claude = ct.find_claude(os.environ)
    if claude is None:
        print("wake-up latency: skipped (no claude CLI; run .ci/setup.sh)")
        return
    state = root / "agents" / "coder" / "state"
    state.mkdir(parents=True, exist_ok=True)
    stamps = root / "exec-times"
    wrapper = root / "claude-wrapper"
    wrapper.write_text(f'#!/bin/sh\ndate +%s.%N >> "{stamps}"\nexec "{claude}" "$@"\n')
    wrapper.chmod(0o755)
    with ModelApi() as api:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "PYTHONPATH": str(PACKAGE_ROOT),
            "HIVE_LABEL": "coder",
            "HIVE_STATE_DIR": str(state),
            "HIVE_SOCKET": str(sock.path),
            "HIVE_CLAUDE_BIN": str(wrapper),
            "HIVE_HEARTBEAT_SECONDS": "3600",
            **api.env(),
        }
        settings = HarnessSettings.from_env(env)
        peer = await Channel.open(sock.path)
        to_exec: list[float] = []
        to_model: list[float] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(run_harness, settings)
            for i in range(n):
                with trio.fail_after(WAIT * 3):
                    await broker.wait_parked("coder")
                    seen = len(api.requests)
                    execs = len(stamps.read_text().split()) if stamps.exists() else 0
                    sent_wall, sent = time.time(), time.perf_counter()
                    await peer.call({"cmd": "send", "to": "coder", "body": f"wake {i}"})
                    await eventually(partial(asked, api, seen), timeout=WAIT, interval=0.001)
                    to_model.append((time.perf_counter() - sent) * 1000)
                    times = stamps.read_text().split()
                    assert len(times) == execs + 1, times
                    to_exec.append((float(times[-1]) - sent_wall) * 1000)
                    await eventually(partial(turns_done, state, i), timeout=WAIT)
            nursery.cancel_scope.cancel()
        await peer.aclose()
    print(f"send -> claude process started:       {pct(to_exec)} ({n} turns)")
    print(f"send -> the turn's first model request: {pct(to_model)} (CLI start, MCP connect)")


async def bench(root: Path, calls: int, n_wakeups: int) -> None:
    tune_interpreter()
    limit_worker_threads()
    config = Config(state_dir=root, ensure_manager=False)
    config.paths.create_layout()
    bus = EventBus()
    store = Store(config.paths.db)
    broker = Broker(store, bus, lambda: ["coder", "peer"])
    broker.max_queued = 10**9
    sock = AgentSocket(config, "coder", broker, Rows())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(store.run)
        for name in ("coder", "peer"):  # as their spawns would: an inbox is bound to an incarnation
            await broker.begin_incarnation(name)
        await nursery.start(broker.run)
        await nursery.start(sock.run)
        await round_trips(sock, calls)
        await wakeups(root, sock, broker, n_wakeups)
        nursery.cancel_scope.cancel()


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--wakeups", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.wakeups = 20, 1
    root = Path(tempfile.mkdtemp(prefix="hcm", dir="/tmp"))
    try:
        trio.run(bench, root, args.calls, args.wakeups)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
