"""Issue 16 item 10: ``request_init_config`` then spawn. After ``config_ready`` the manager's commit in
the new agent's config is accepted, the approved spawn deploys the config the manager prepared (and
its review shows it), and the description given with ``request_init_config`` is kept."""

from __future__ import annotations

import pytest

from hivecore.errors import HiveError
from hivecore.verbs import bind
from tests.conftest import Parts
from tests.test_approvals import commit, git, helper_events, main_of, repos, row, sonnet, tags


async def _prepared(parts: Parts, name: str) -> str:
    """init_config (asked on the manager's surface, with a description), approved; the manager's
    commit of a changed agent.nix in the new config repo; its sha."""
    c = parts.coordinator
    ctx = bind.Context(c, bind.MANAGER)
    init = await bind.call("request_init_config", ctx, {"name": name, "description": f"{name}: reviews PRs"})
    assert (await row(parts, init.id)).description == f"{name}: reviews PRs"
    await c.approve(init.id)
    assert [e["event"] for e in await helper_events(parts)][-2:] == ["approval_resolved", "config_ready"]
    resolved = [e for e in await helper_events(parts) if e["event"] == "approval_resolved"][-1]
    assert resolved["description"] == f"{name}: reviews PRs"
    proposed, _ = repos(parts, name)
    return await commit(proposed, {"agent.nix": sonnet()}, "use sonnet")


async def test_a_spawn_of_a_prepared_config_deploys_it_in_one_approval(parts: Parts) -> None:
    c = parts.coordinator
    sha = await _prepared(parts, "fresh")
    approval = await c.request_spawn("fresh", "the prepared one")
    assert approval.fetched_sha == sha
    pending = {a.id: a for a in await c.pending()}[approval.id]
    assert pending.agent_nix == sonnet()  # the review shows what will be deployed
    assert pending.diff is not None
    assert '+    model = "sonnet";' in pending.diff
    assert pending.commit_message is not None
    assert "use sonnet" in pending.commit_message
    await c.approve(approval.id)
    _, applied = repos(parts, "fresh")
    assert (await parts.runtime.list(["fresh"]))["fresh"].running
    assert await main_of(applied) == sha
    assert (applied / "agent.nix").read_text() == sonnet()
    assert (await row(parts, approval.id)).status == "approved"
    assert [a for a in await c.pending() if a.status == "pending"] == []  # no second approval needed


async def test_the_manager_s_commit_in_a_prepared_config_is_accepted_and_deploys_it(parts: Parts) -> None:
    c = parts.coordinator
    sha = await _prepared(parts, "fresh")
    approval = await c.request_apply_commit("fresh", sha, "first config")
    assert approval.fetched_sha == sha
    _, applied = repos(parts, "fresh")
    assert (await tags(applied))[f"proposal/{approval.id}"] == sha
    await c.approve(approval.id)
    assert (await parts.runtime.list(["fresh"]))["fresh"].running
    assert await main_of(applied) == sha
    assert (await tags(applied))[f"deployed/{approval.id}"] == sha
    events = [e["event"] for e in await helper_events(parts)]
    assert "spawned" in events
    assert events[-2:] == ["approval_resolved", "rebuilt"]


async def test_a_name_with_no_config_and_a_tombstone_are_not_prepared(parts: Parts) -> None:
    c = parts.coordinator
    with pytest.raises(HiveError, match='agent "ghost" is not managed by this hive'):
        await c.request_apply_commit("ghost", "abc1234")
    await c.spawn("old")
    proposed, applied = repos(parts, "old")
    kept = await commit(proposed, {"notes.txt": "x\n"})
    await c.destroy("old")  # a tombstone: its kept applied main is what a respawn deploys
    with pytest.raises(HiveError, match='agent "old" is not managed by this hive'):
        await c.request_apply_commit("old", kept)
    again = await c.request_spawn("old")
    assert again.fetched_sha == await main_of(applied)
    assert await git(proposed, "rev-parse", "HEAD") == kept
