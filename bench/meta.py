"""The meta flake's costs with real nix and git (offline; a temp state dir per size).

1. ``lock_update`` (every ``agent-*`` input and ``hyperhive``, through the meta_lock actor) plus
   ``read_meta_inputs``, for 5, 20 and 50 agents, next to the bare ``nix flake lock --update-input …``
   of the same flake in the same run: the ratio is what the actor, git staging/commit check and the
   lock read add on top of nix (goal: at most 1.2 times). Each side is the best of a few runs on an unchanged
   lock (nix relocks, nothing changes, so nothing is committed on either side).
2. A rebuild (``MetaBuild.build``: sync, relock, ``nix eval``, the runtime update and a
   restart of the agent process) next to the time its nix children took: the difference is
   hive-c0re's own overhead (git, the actor, the process runtime's stop and start).

    .venv/bin/python bench/meta.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from actors.meta_lock import MetaLock
from hivecore.config import Config
from hivecore.meta import HYPERHIVE, NIX_FEATURES, AgentEntry, MetaRepo, agent_input
from hivecore.repos import clean_env, nix_binary

ROUNDS = 5
AGENT_NIX = '{ ... }: { hive.agent = { model = "haiku"; }; }\n'


def seed_applied(root: Path, name: str) -> Path:
    repo = root / "applied" / name
    repo.mkdir(parents=True)
    (repo / "agent.nix").write_text(AGENT_NIX)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "agent.nix"], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)
    return repo


def entries(root: Path, n: int) -> list[AgentEntry]:
    return [
        AgentEntry(
            name=f"a{i}",
            applied=root / "applied" / f"a{i}",
            command=(sys.executable, "-m", "hivecore.harness"),
            identity={"HIVE_LABEL": f"a{i}", "HIVE_OPERATOR_PRONOUNS": "she/her"},
        )
        for i in range(n)
    ]


async def best_of_one(fn: Any) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def lock_bench(n: int) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(prefix="hcbench"))
    try:
        for i in range(n):
            seed_applied(root, f"a{i}")
        meta = MetaLock(MetaRepo(Config(state_dir=root).paths))
        inputs = [HYPERHIVE, *(agent_input(f"a{i}") for i in range(n))]
        async with trio.open_nursery() as nursery:
            await nursery.start(meta.run)
            await meta.sync(entries(root, n))
            update_args = await meta.repo._update_args(inputs)
            bare_cmd = [nix_binary(), *NIX_FEATURES, *update_args, str(root / "meta")]

            async def ours() -> None:
                await meta.lock_update(inputs)
                await meta.read_meta_inputs()

            async def bare() -> None:
                await trio.run_process(bare_cmd, env=clean_env(), capture_stdout=True, capture_stderr=True)

            await bare()  # warm the store copies
            ours_t = bare_t = float("inf")
            for _ in range(ROUNDS):  # interleaved, so load on the box hits both sides alike
                ours_t = min(ours_t, await best_of_one(ours))
                bare_t = min(bare_t, await best_of_one(bare))
            nursery.cancel_scope.cancel()
        return ours_t, bare_t
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def rebuild_bench() -> tuple[float, float]:
    from hivecore.daemon import build

    root = Path(tempfile.mkdtemp(prefix="hcbench", dir="/tmp"))
    config = Config(state_dir=root, dashboard_port=0, stop_timeout=2.0, ensure_manager=False)
    config.paths.create_layout()
    daemon = build(config)
    nix_time = 0.0
    repo = daemon.meta.repo
    real_nix = repo.nix

    async def timed_nix(*args: str, **kw: Any) -> bytes:
        nonlocal nix_time
        t0 = time.perf_counter()
        try:
            return await real_nix(*args, **kw)
        finally:
            nix_time += time.perf_counter() - t0

    repo.nix = timed_nix  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            for actor in (daemon.store, daemon.views, daemon.meta, daemon.lane):
                await nursery.start(actor.run)
            await daemon.coordinator.spawn("bench")
            totals = []
            nix_times = []
            for _ in range(ROUNDS):
                nix_time = 0.0
                t0 = time.perf_counter()
                await daemon.meta_build.build("bench")
                totals.append(time.perf_counter() - t0)
                nix_times.append(nix_time)
            await daemon.runtime.destroy("bench")
            nursery.cancel_scope.cancel()
        i = totals.index(min(totals))
        return totals[i], nix_times[i]
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main(sizes: tuple[int, ...], budget: float) -> None:
    with trio.fail_after(budget):  # nix or git hanging fails the bench instead of blocking it
        await measure(sizes)


async def measure(sizes: tuple[int, ...]) -> None:
    print(f"{'agents':>6} {'lock_update+read ms':>20} {'bare nix lock ms':>17} {'ratio':>6}")
    for n in sizes:
        ours, bare = await lock_bench(n)
        print(f"{n:>6} {ours * 1e3:>20.1f} {bare * 1e3:>17.1f} {ours / bare:>6.2f}")
    total, nix = await rebuild_bench()
    print(
        f"rebuild: {total * 1e3:.0f} ms, of which nix {nix * 1e3:.0f} ms; "
        f"hive-c0re's own (git, actor, stop+start) {(total - nix) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        ROUNDS = 1
    trio.run(main, (2,) if args.smoke else (5, 20, 50), 900.0)
