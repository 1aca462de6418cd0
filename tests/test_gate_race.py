"""The proposal pack never reads outside the proposed repo, even while the manager races it.

When git reads a proposal as the daemon (the nixos runtime, where the manager's ids live inside its
container, or a non-root daemon), the ``.git`` checks ran on the repo by path and git opened it by
path afterwards: a manager swapping a component (``.git/objects``, ``.git`` itself) for a link
between the two made root's git read another repository. Now git reads a snapshot the daemon took
through ``O_NOFOLLOW`` fds (:func:`hivecore.proposed.snapshot_git`). Each test races a thread that
flips the component back and forth while the daemon fetches a commit that exists only in a
root-only host repo, many times: the fetch must always fail and the applied repo never hold it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from hivecore.errors import HiveError
from hivecore.repos import Repos
from tests.conftest import Parts
from tests.test_gate_git import commit, has_object, host_repo

ITERATIONS = 60

Flip = Callable[[Path, Path], Callable[[], None]]


def flip_objects(git: Path, host: Path) -> Callable[[], None]:
    """``.git/objects`` <-> a link to the host repo's objects (refs/heads/steal names the secret)."""
    link = git / "objects.link"
    link.symlink_to(host / ".git" / "objects")
    real, aside = git / "objects", git / "objects.real"

    def once() -> None:
        os.rename(real, aside)
        os.rename(link, real)
        os.rename(real, link)
        os.rename(aside, real)

    return once


def flip_git_dir(git: Path, host: Path) -> Callable[[], None]:
    """``config/.git`` <-> a link to the host repo's ``.git``."""
    link = git.with_name(".git.link")
    link.symlink_to(host / ".git")
    aside = git.with_name(".git.real")

    def once() -> None:
        os.rename(git, aside)
        os.rename(link, git)
        os.rename(git, link)
        os.rename(aside, git)

    return once


@pytest.mark.parametrize("flip", [flip_objects, flip_git_dir], ids=lambda f: f.__name__)
async def test_a_racing_swap_never_makes_the_pack_read_outside(
    parts: Parts, tmp_path: Path, flip: Flip
) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    paths = parts.config.paths
    proposed, applied = paths.agent_config("coder"), paths.applied("coder")
    await commit(proposed, {"notes.txt": "mine\n"})
    host, secret_commit, secret_blob = await host_repo(tmp_path)
    (proposed / ".git" / "refs" / "heads" / "steal").write_text(secret_commit + "\n")
    repos = Repos(paths)  # owner None: git runs as the daemon (root), as under the nixos runtime
    once = flip(proposed / ".git", host)
    stop = threading.Event()
    flips = [0]

    def racer() -> None:
        while not stop.is_set():
            once()
            flips[0] += 1

    outcomes: dict[str, int] = {}
    thread = threading.Thread(target=racer, daemon=True)
    thread.start()
    try:
        for i in range(ITERATIONS):
            try:
                pinned = await repos.fetch_proposal("coder", secret_commit, 10_000 + i)
            except HiveError as exc:
                key = str(exc).split(":")[-1].strip()[:60]
                outcomes[key] = outcomes.get(key, 0) + 1
                continue
            pytest.fail(f"iteration {i}: the host's commit was fetched ({pinned.sha})")
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)
    assert flips[0] > ITERATIONS  # the swap really raced every fetch
    assert not await has_object(applied, secret_commit)
    assert not await has_object(applied, secret_blob)
    assert sum(outcomes.values()) == ITERATIONS
