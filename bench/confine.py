"""What confinement costs (issue 14, findings 5 and 6), each next to its unconfined baseline in the
same run (offline, real nix, real processes; run as root for the second part).

1. One agent's evaluation through the meta flake (``MetaRepo.evaluate``: ``restrict-eval``,
   per-agent ``allowed-uris``, no IFD, ``RLIMIT_AS``) next to the same ``nix eval`` without the
   options; and the plain config check (``Repos.evaluate``: scratch copy + restricted eval) next to
   the former ``nix eval -f <applied>/agent.nix``. Median of ROUNDS.
2. Starting an agent (``ProcessRuntime.start`` until the runtime sees it running): as its own uid
   (credentials, ACL grants, hand-over of its dirs, the ``/bin/sh`` reachability probe) next to a
   start as the daemon's user. Median of ROUNDS.

    .venv/bin/python bench/confine.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from hivecore import agent_users, proc
from hivecore.config import StatePaths
from hivecore.meta import NIX_FEATURES, AgentEntry, MetaRepo
from hivecore.nixconfine import eval_env
from hivecore.repos import _EVAL_APPLY, Repos, clean_env, nix_binary
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.process import ProcessRuntime

ROUNDS = 9
AGENT_NIX = '{ ... }: { hive.agent = { model = "haiku"; env.A = "b"; }; }\n'


async def median_ms(fn: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def seed(repo: Path) -> None:
    repo.mkdir(parents=True)
    (repo / "agent.nix").write_text(AGENT_NIX)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "agent.nix"], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)


async def evaluation(root: Path) -> None:
    paths = StatePaths(root)
    paths.create_layout()
    meta = MetaRepo(paths)
    await meta.seed_base()
    names = [f"a{i}" for i in range(5)]
    for name in names:
        seed(paths.applied(name))
        await meta.release(name)  # the meta input is released/<n> (applied main only), as a build does
    await meta.sync(
        AgentEntry(name=n, applied=paths.released(n), command=("true",), identity={}) for n in names
    )
    await meta.evaluate("a0")  # warm: every input in the store

    async def bare() -> None:
        cmd = [
            nix_binary(),
            *NIX_FEATURES,
            "eval",
            "--json",
            "--no-write-lock-file",
            f"{paths.meta}#hiveAgents.a0",
        ]
        result = await proc.run(cmd, env=clean_env(), time_limit=120)
        assert result.returncode == 0, result.stderr

    confined = await median_ms(lambda: meta.evaluate("a0"))
    baseline = await median_ms(bare)
    print(
        f"meta eval of one agent (5 in the flake): confined {confined:.0f} ms, bare {baseline:.0f} ms, "
        f"ratio {confined / baseline:.2f}"
    )

    repos = Repos(paths)

    async def plain() -> None:
        cmd = [
            nix_binary(),
            *NIX_FEATURES,
            "eval",
            "--json",
            "-f",
            str(paths.applied("a0") / "agent.nix"),
            "--apply",
            _EVAL_APPLY,
        ]
        result = await proc.run(cmd, env=clean_env(), time_limit=120)
        assert result.returncode == 0, result.stderr

    confined = await median_ms(lambda: repos.evaluate("a0"))
    baseline = await median_ms(plain)
    print(
        f"config check (nix eval -f): confined {confined:.0f} ms, bare {baseline:.0f} ms, "
        f"ratio {confined / baseline:.2f}"
    )
    assert "NIX_PATH" not in eval_env()


async def starting(root: Path) -> None:
    if os.geteuid() != 0:
        print("agent start: skipped (not root: agents run as the daemon's user anyway)")
        return
    paths = StatePaths(root)
    paths.create_layout()
    runtime = ProcessRuntime(paths, stop_timeout=5, runtime_dir=paths.run)
    spec = {"PATH": "/usr/bin:/bin"}
    await runtime.create(AgentSpec(name="alpha", command=("sleep", "60"), env=spec))

    async def once() -> None:
        await runtime.start("alpha")  # returns once the shim runs and its pidfile is written
        assert (await runtime.list(["alpha"]))["alpha"].running
        await runtime.stop("alpha", graceful=False)

    as_uid = await median_ms(once)
    real = agent_users.credentials
    agent_users.credentials = lambda paths, name: None  # type: ignore[assignment]
    try:
        as_daemon = await median_ms(once)
    finally:
        agent_users.credentials = real
    print(
        f"agent start+stop: as its own uid {as_uid:.1f} ms, as the daemon's user {as_daemon:.1f} ms, "
        f"ratio {as_uid / as_daemon:.2f}"
    )


async def main(budget: float) -> None:
    with trio.fail_after(budget):  # nix or a process hanging fails the bench instead of blocking it
        for part in (evaluation, starting):
            root = Path(tempfile.mkdtemp(prefix="hcbench", dir="/tmp"))
            try:
                await part(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if "--smoke" in sys.argv[1:]:  # tiny sizes: does it still run?
        ROUNDS = 1
    trio.run(main, 900.0)
