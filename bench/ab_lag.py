"""A/B of ``bench/verbs.py`` part 2 (event-loop lag while 20 agents stop, and start) between two trees.

Run: ``.venv/bin/python bench/ab_lag.py BEFORE_TREE AFTER_TREE [--pairs 3] [--rounds 3]``

Each tree is a checkout of this repository (e.g. ``git worktree add --detach /tmp/before main``); its
own ``bench/verbs.py --parts 2`` runs with this interpreter, importing that tree's code (the bench
puts its tree first on ``sys.path``, and the agents' shims get that tree's package root). The runs
alternate before, after, before, after, … so the shared machine's noise hits both alike; the
1-minute load average is recorded beside each run. Prints one row per run and the medians.
A run that fails or takes longer than ``--budget`` s fails the whole comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROWS = {
    "idle": re.compile(r"^idle \(probe only\)\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)", re.M),
    "stop": re.compile(r"^\d+x coordinator\.stop at once\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)", re.M),
    "start": re.compile(r"^\d+x coordinator\.start at once\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)", re.M),
}
"""Part 2's table rows: p50, p99, max (ms)."""


def run_once(tree: Path, rounds: int, budget: float) -> dict[str, tuple[float, float, float]]:
    """One ``verbs.py --parts 2`` in ``tree``: ``{row: (p50, p99, max)}`` in ms."""
    cmd = [sys.executable, str(tree / "bench" / "verbs.py"), "--parts", "2", "--rounds", str(rounds)]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=budget, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    got = {}
    for row, pattern in ROWS.items():
        m = pattern.search(done.stdout)
        if m is None:
            raise SystemExit(f"no {row} row in the output of {' '.join(cmd)}:\n{done.stdout}")
        p50, p99, top = (float(x) for x in m.groups())
        got[row] = (p50, p99, top)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="verbs.py --rounds (stop-20-at-once rounds)")
    parser.add_argument("--budget", type=float, default=300, help="seconds one run may take")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for label, tree in trees.items():
        if not (tree / "bench" / "verbs.py").is_file():
            raise SystemExit(f"{label}: {tree} has no bench/verbs.py")
    stop99: dict[str, list[float]] = {label: [] for label in trees}
    heads = ("idle p99", "stop p50", "stop p99", "stop max", "start p99")
    print(f"{'run':<10} {'load1':>5} " + " ".join(f"{h:>9}" for h in heads) + "   (ms)")
    for pair in range(args.pairs):
        for label, tree in trees.items():
            load = os.getloadavg()[0]
            got = run_once(tree, args.rounds, args.budget)
            stop99[label].append(got["stop"][1])
            print(
                f"{f'{label} {pair + 1}':<10} {load:>5.1f} {got['idle'][1]:>9.2f} {got['stop'][0]:>9.2f} "
                f"{got['stop'][1]:>9.2f} {got['stop'][2]:>9.2f} {got['start'][1]:>9.2f}",
                flush=True,
            )
    b, a = statistics.median(stop99["before"]), statistics.median(stop99["after"])
    print(f"median stop lag p99: before {b:.2f} ms, after {a:.2f} ms (after/before {a / b:.2f})")
    print("target: stop lag p99 ≤ 20 ms (issue 15 item 10)")


if __name__ == "__main__":
    main()
