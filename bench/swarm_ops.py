"""Operator reach (docs/swarm.md "Operator reach"): an operator verb on another hive's agent against
the same verb on the agent's own hive, through host.sock, in one run.

Two real ``hive-c0re serve`` processes (alpha; beta with ``--swarm-operator-hives alpha``) on a fresh
``nats-server -js`` on loopback, beta running one agent; interleaved, n times each:

1. beta's host.sock ``set_paused {coder, paused: false}`` (a job on beta's lane; idempotent);
2. alpha's host.sock ``swarm_op {resume, coder@beta}``: the same job, plus alpha's audit row, the
   NATS request/reply and beta's checks;
3. beta's host.sock ``swarm_op {resume, x@alpha}`` refused by alpha (beta is not listed): the
   round trip with no verb.

A hive takes 30 requests from another at once, then 1 a second (the rate limit), so one run asks
at most 28 of each remote case.

    .venv/bin/python bench/swarm_ops.py [--n N] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nats_server import NATS_SERVER, NatsServer, free_port
from tests.procs import kill_everything_under
from tests.test_kill9 import ask
from tests.test_swarm_ops import _running, _serve
from tests.test_swarm_serve import swarm
from tests.waiting import eventually

CASES: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("local set_paused on beta", "b", {"cmd": "set_paused", "name": "coder", "paused": False}, True),
    (
        "swarm_op resume coder@beta from alpha",
        "a",
        {"cmd": "swarm_op", "op": "resume", "target": "coder@beta"},
        True,
    ),
    (
        "swarm_op refused by alpha (beta not listed)",
        "b",
        {"cmd": "swarm_op", "op": "resume", "target": "x@alpha"},
        False,
    ),
)


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


async def run(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="sob", dir="/tmp"))
    os.chmod(root, 0o755)  # the confined evaluation (another uid) traverses to beta's state dir
    nats = NatsServer(free_port(), root / "store", root / "nats.log")
    nats.start()
    dirs = {"a": root / "a", "b": root / "b"}
    procs = [await _serve(dirs["a"], root / "a.log", nats, "alpha")]
    procs.append(await _serve(dirs["b"], root / "b.log", nats, "beta", "--swarm-operator-hives", "alpha"))
    try:

        async def connected() -> bool:
            return [(await swarm(d))["state"] for d in dirs.values()] == ["connected"] * 2

        await eventually(connected, 30, interval=0.05)
        assert (await ask(dirs["b"], {"cmd": "spawn", "name": "coder"}))["ok"]
        await eventually(lambda: _running(dirs["b"], "coder"), 60, interval=0.05)
        times: dict[str, list[float]] = {case[0]: [] for case in CASES}
        for i in range(n + 3):  # the first 3 rounds warm up
            for label, where, request, ok in CASES:
                t = time.perf_counter()
                answer = await ask(dirs[where], request)
                took = (time.perf_counter() - t) * 1000
                assert answer["ok"] is ok, answer
                if i >= 3:
                    times[label].append(took)
        print(f"n = {n} each, interleaved (ms)")
        for label, values in times.items():
            print(f"  {label:45s} p50 {statistics.median(values):6.1f}  p90 {pct(values, 0.9):6.1f}")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        for d in dirs.values():
            kill_everything_under(d / "run" / "process")
        nats.kill()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        default=25,
        help="rounds (25: with the 3 warm-up ones, within the far hive's burst of 30)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if NATS_SERVER is None:
        sys.exit("bench/swarm_ops.py needs nats-server (.ci/setup.sh installs it)")
    trio.run(run, 5 if args.smoke else args.n)


if __name__ == "__main__":
    main()
