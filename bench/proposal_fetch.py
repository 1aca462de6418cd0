"""What reading a proposal costs: ``Repos.fetch_proposal`` with 1 and with 20,000 branches in the
proposed repo, next to a bare ``git bundle create`` + ``git fetch`` of the same commit in the same
run (the floor for "one commit's closure into another repo"), and the old way (``git fetch`` of
every branch) for comparison.

Then: listing 30 pending apply_commits with full-size stored reviews (what ``/api/state`` and
host.sock ``pending`` read), which used to recompute every diff on every snapshot.

``fetch_proposal`` does more than the baseline on purpose: the inert ``.git`` check, resolving and
packing the commit (as the manager when root), ``transfer.fsckObjects``, the ``.gitattributes``
check, the stored review (numstat, patch, messages) and the final fetch into applied. The number
that matters: it must not grow with the branches of the proposed repo.

    .venv/bin/python bench/proposal_fetch.py [--smoke]    (--smoke: tiny sizes, one round)
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from hivecore import store as st
from hivecore.config import StatePaths
from hivecore.repos import Repos, clean_env

ROUNDS = 5
LIMIT = 300.0
"""Seconds any one step may take before the bench gives up (bounded waits)."""
GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "safe.directory=*"]


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    out = subprocess.run(
        [*GIT, "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        env=clean_env(),
        timeout=LIMIT,
        check=True,
    )
    return out.stdout.decode().strip()


def add_branches(repo: Path, count: int) -> None:
    """``count`` branches, each its own commit with its own blob (``git fast-import``)."""
    base = git(repo, "rev-parse", "HEAD")
    lines = []
    for i in range(count):
        data = f"branch {i}\n".encode()
        lines.append(
            b"commit refs/heads/b%d\ncommitter b <b@b> 946684800 +0000\ndata 2\nb\nfrom %s\n"
            b"M 100644 inline side.txt\ndata %d\n%s\n" % (i, base.encode(), len(data), data)
        )
    git(repo, "fast-import", "--quiet", stdin=b"".join(lines))


def baseline(proposed: Path, sha: str, scratch: Path) -> float:
    """``git bundle create`` of the proposed HEAD + ``git fetch`` of it into a fresh bare repo."""
    target = scratch / f"bare-{time.monotonic_ns()}"
    git(scratch, "init", "-q", "--bare", str(target))
    bundle = scratch / "b.bundle"
    start = time.perf_counter()
    git(proposed, "bundle", "create", "-q", str(bundle), "HEAD")
    git(target, "fetch", "-q", str(bundle), "HEAD:refs/heads/x")
    took = time.perf_counter() - start
    assert git(target, "rev-parse", "refs/heads/x") == sha
    return took


def every_branch(proposed: Path, scratch: Path) -> float:
    """The old way: fetch every branch of the proposed repo into a fresh repo."""
    target = scratch / f"all-{time.monotonic_ns()}"
    git(scratch, "init", "-q", "--bare", str(target))
    start = time.perf_counter()
    git(target, "fetch", "-q", "--no-tags", f"file://{proposed}", "+refs/heads/*:refs/incoming/*")
    return time.perf_counter() - start


async def measure(branches: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-proposal-"))
    try:
        paths = StatePaths(root)
        paths.agents.mkdir(parents=True)
        repos = Repos(paths)
        with trio.fail_after(LIMIT):
            await repos.seed_applied("coder")
            await repos.seed_proposed("coder")
        proposed = paths.agent_config("coder")
        (proposed / "agent.nix").write_text('{ ... }: { hive.agent = { model = "sonnet"; }; }\n')
        (proposed / "notes.md").write_text("".join(f"note {i}\n" for i in range(2000)))
        git(proposed, "add", "-A")
        git(proposed, "commit", "-q", "-m", "a change")
        sha = git(proposed, "rev-parse", "HEAD")
        if branches > 1:
            add_branches(proposed, branches - 1)
        scratch = root / "bench"
        scratch.mkdir()
        ours, base, old = [], [], []
        for i in range(ROUNDS):
            start = time.perf_counter()
            with trio.fail_after(LIMIT):
                pinned = await repos.fetch_proposal("coder", sha, i + 1)
            ours.append(time.perf_counter() - start)
            assert pinned.sha == sha
            base.append(baseline(proposed, sha, scratch))
        old.append(every_branch(proposed, scratch))
        objects = root / "applied" / "coder" / ".git" / "objects"
        applied_kib = sum(f.stat().st_size for f in objects.rglob("*") if f.is_file()) / 1024
        return {
            "ours": statistics.median(ours),
            "baseline": statistics.median(base),
            "old": old[0],
            "applied_kib": applied_kib,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def listing(pending: int = 30) -> float:
    """Median seconds of ``list_approvals(review=True)`` over ``pending`` rows with 256 KiB diffs."""
    root = Path(tempfile.mkdtemp(prefix="bench-reviews-"))
    try:
        conn = st.connect(root / "hive.sqlite")
        files = json.dumps([{"path": f"f{i}.txt", "added": 100, "removed": 0} for i in range(200)])
        for i in range(pending):
            row = st.insert_approval(conn, f"a{i}", "apply_commit", "abcdef1", requester="manager")
            st.set_review(conn, row.id, "0" * 40, files, "+x\n" * (256 * 1024 // 3), "commit x\n\nbody\n")
        runs = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            rows = st.list_approvals(conn, review=True)
            runs.append(time.perf_counter() - start)
            assert len(rows) == pending
        conn.close()
        return statistics.median(runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main(sizes: tuple[int, ...] = (1, 20_000), pending: int = 30) -> None:
    print(f"proposal fetch (median of {ROUNDS}; one commit's closure; applied objects after all rounds)")
    print(
        f"{'branches':>9} {'fetch_proposal':>15} {'bundle+fetch':>13} {'ratio':>6} "
        f"{'old: every branch':>18} {'applied KiB':>12}"
    )
    for branches in sizes:
        r = await measure(branches)
        print(
            f"{branches:>9} {r['ours'] * 1000:>12.0f} ms {r['baseline'] * 1000:>10.0f} ms "
            f"{r['ours'] / r['baseline']:>6.1f} {r['old'] * 1000:>15.0f} ms {r['applied_kib']:>12.0f}"
        )
    print(
        f"{pending} pending reviews of 256 KiB, listed from the store: {listing(pending) * 1000:.0f} ms "
        f"(median of {ROUNDS})"
    )


if __name__ == "__main__":
    if "--smoke" in sys.argv[1:]:  # tiny sizes: does it still run?
        ROUNDS = 1
        trio.run(main, (1, 50), 3)
    else:
        trio.run(main)
