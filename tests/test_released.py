"""An approved ``agent.nix`` cannot build from a commit nobody approved (gate, issue 14).

``allowed-uris`` names a repository, not a commit: while the meta flake's agent input was the
applied repo, which also holds every pending proposal (``proposal/<id>``), an approved ``agent.nix``
could ``builtins.fetchGit`` that repo at a pending (or denied-but-not-yet-pruned) commit. Now the
input is ``released/<n>``, a bare repo holding only applied ``main``'s history, and the evaluator
uid cannot read ``applied/`` at all. Real git, real nix, as root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hivecore.errors import HiveError
from tests.conftest import Parts, make_config, start_parts
from tests.test_eval_confined import agent_nix_with
from tests.test_gate_git import commit, has_object
from tests.test_meta import agent_env, commit_file, git

PENDING = "unreviewed-pending-content"


@pytest.fixture
async def parts(state_dir: Path) -> AsyncIterator[Parts]:
    async with trio.open_nursery() as nursery:
        yield await start_parts(make_config(state_dir), nursery)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("repo", ["released", "applied"])
async def test_an_approved_agent_nix_cannot_fetch_a_pending_proposal(parts: Parts, repo: str) -> None:
    c = parts.coordinator
    paths = parts.config.paths
    await c.spawn("a")
    pending = await commit(paths.agent_config("a"), {"pending.txt": PENDING})
    approval = await c.request_apply_commit("a", pending)
    assert approval.status == "pending"
    assert await has_object(paths.applied("a"), pending)  # pinned as proposal/<id> in applied
    url = paths.released("a") if repo == "released" else paths.applied("a")
    fetch = f'builtins.fetchGit {{ url = "file://{url}"; rev = "{pending}"; }}'
    expr = f'builtins.readFile (({fetch}) + "/pending.txt")'
    await commit_file(paths.applied("a"), "agent.nix", agent_nix_with(expr))  # as if approved
    with pytest.raises(HiveError) as caught:
        await c.rebuild("a")
    assert PENDING not in str(caught.value)
    env = await agent_env(parts, "a")
    assert b"LEAK" not in env
    assert not await has_object(paths.released("a"), pending)


async def test_released_follows_applied_main_only(parts: Parts) -> None:
    """What is released is applied main's history, and the agent runs it."""
    c = parts.coordinator
    paths = parts.config.paths
    await c.spawn("a")
    approved = await commit_file(paths.applied("a"), "agent.nix", agent_nix_with('"approved-1"'))
    await c.rebuild("a")
    assert await git(paths.released("a"), "rev-parse", "main") == approved
    assert (await agent_env(parts, "a"))[b"LEAK"] == b"approved-1"
    assert await git(paths.released("a"), "tag", "--list") == ""  # no proposal/approved/deployed tags
