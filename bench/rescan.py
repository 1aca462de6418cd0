"""A full rescan's pure work (what ``Views._apply`` does per tick): a ``build_view`` per agent and a
compare with the cached row, for 10, 100 and 500 agents (synthetic inputs).

Baseline: a plain dict comparison of the same rows (``{name: tuple} != {name: tuple}`` per row),
measured in the same run. The ratio is what building attrs views and diffing them costs on top.

    .venv/bin/python bench/rescan.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from hivecore.container_view import AgentFacts, build_view
from hivecore.models import ContainerView, Transient
from hivecore.runtime.base import AgentRuntimeState


@attrs.frozen
class ViewInputs:
    runtime: dict[str, AgentRuntimeState]
    facts: dict[str, AgentFacts]
    transients: dict[str, Transient]


def build_all(inputs: ViewInputs) -> dict[str, ContainerView]:
    return {
        n: build_view(s, inputs.facts.get(n, AgentFacts()), inputs.transients.get(n), None)
        for n, s in inputs.runtime.items()
    }


def diff_views(old: dict[str, ContainerView], new: dict[str, ContainerView]) -> list[str]:
    """Names whose row changed or vanished (the views actor's compare)."""
    return [n for n, v in new.items() if old.get(n) != v] + [n for n in old if n not in new]


def inputs(n: int, flip: int) -> ViewInputs:
    names = [f"a{i}" for i in range(n)]
    runtime = {
        nm: AgentRuntimeState(name=nm, running=(i + flip) % 7 != 0, pid=1000 + i)
        for i, nm in enumerate(names)
    }
    facts = {nm: AgentFacts(logged_in=i % 3 != 0, paused=i % 11 == 0) for i, nm in enumerate(names)}
    transients = {names[0]: Transient(kind="rebuilding", since_unix=0)} if flip else {}
    return ViewInputs(runtime=runtime, facts=facts, transients=transients)


def bench(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def main(sizes: tuple[int, ...] = (10, 100, 500), work: int = 20000) -> None:
    print(f"{'agents':>6} {'build+diff µs':>14} {'plain dict µs':>14} {'ratio':>7}")
    for n in sizes:
        a, b = inputs(n, 0), inputs(n, 1)
        old = build_all(a)

        def tick(b: ViewInputs = b, old: dict = old) -> None:  # type: ignore[type-arg]
            diff_views(old, build_all(b))

        rows_a = {
            k: (v.running, v.failed, k in a.transients, not a.facts[k].logged_in, a.facts[k].paused)
            for k, v in a.runtime.items()
        }
        rows_b = {
            k: (v.running, v.failed, k in b.transients, not b.facts[k].logged_in, b.facts[k].paused)
            for k, v in b.runtime.items()
        }

        def plain(ra: dict = rows_a, rb: dict = rows_b) -> None:  # type: ignore[type-arg]
            [k for k, v in rb.items() if ra.get(k) != v]
            [k for k in ra if k not in rb]

        repeat = max(10, work // n)
        t_view, t_plain = bench(tick, repeat), bench(plain, repeat)
        print(f"{n:>6} {t_view * 1e6:>14.1f} {t_plain * 1e6:>14.1f} {t_view / t_plain:>7.1f}")
    print("build+diff = a build_view() per agent + the row compare; plain = dict-of-tuples compare")


if __name__ == "__main__":
    if "--smoke" in sys.argv[1:]:  # tiny sizes: does it still run?
        main((10, 100), 200)
    else:
        main()
