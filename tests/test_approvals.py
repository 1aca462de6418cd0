"""Approvals on real git repos, real nix, real agent processes and a real sqlite store.

The manager's side is played by plain git in the proposed repo (its own identity); the operator's by
the coordinator (and, at the end, host.sock and hivectl).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.rebuild_queue import JobLane
from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.errors import HiveError
from hivecore.kick import REASON_CONFIG_APPLIED
from hivecore.models import Approval
from hivecore.repos import clean_env
from hivecore.verbs import bind
from tests.conftest import Parts
from tests.procs import as_owner, owner_git_env, write_as_owner
from tests.waiting import eventually

APPROVALS_DOC = Path(__file__).resolve().parent.parent / "docs" / "approvals.md"
BROKEN_NIX = "{ ... }: {\n  hive.agent = { model = ; };\n}\n"


def sonnet(model: str = "sonnet") -> str:
    return f'{{ ... }}:\n{{\n  hive.agent = {{\n    model = "{model}";\n  }};\n}}\n'


async def git(repo: Path, *args: str, check: bool = True) -> str:
    """git as the manager would run it (its own identity and, on its repos, its own uid), in ``repo``."""
    result = await trio.run_process(
        ["git", "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive", "-C", str(repo), *args],
        capture_stdout=True,
        capture_stderr=True,
        env={**clean_env(), **owner_git_env(repo)},
        check=False,
        **as_owner(repo),
    )
    if check and result.returncode != 0:
        why = result.stderr.decode()
        raise AssertionError(f"git {' '.join(args)} in {repo} exited {result.returncode}: {why}")
    return result.stdout.decode().strip()


async def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for name, text in files.items():
        write_as_owner(repo, name, text)
    await git(repo, "add", "-A")
    await git(repo, "commit", "-q", "-m", message)
    return await git(repo, "rev-parse", "HEAD")


async def tags(repo: Path) -> dict[str, str]:
    out = await git(
        repo, "for-each-ref", "--format=%(refname:short) %(*objectname)%(objectname)", "refs/tags"
    )
    # annotated tags print the peeled commit first; lightweight ones only their own target
    return {line.split()[0]: line.split()[1][:40] for line in out.splitlines()}


async def tag_body(repo: Path, tag: str) -> str:
    return await git(repo, "for-each-ref", "--format=%(contents)", f"refs/tags/{tag}")


async def main_of(repo: Path) -> str:
    return await git(repo, "rev-parse", "refs/heads/main")


async def helper_events(parts: Parts, recipient: str = "manager") -> list[dict[str, Any]]:
    return [json.loads(body) for _, sender, body in await parts.inbox(recipient) if sender == "system"]


async def row(parts: Parts, approval_id: int) -> Approval:
    approval = await parts.store.call(lambda c: st.get_approval(c, approval_id))
    assert approval is not None
    return approval


def repos(parts: Parts, name: str) -> tuple[Path, Path]:
    paths = parts.config.paths
    return paths.agent_config(name), paths.applied(name)


async def test_spawn_seeds_both_repos_and_a_kept_config_survives_a_respawn(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    assert "hive.agent" in (proposed / "agent.nix").read_text()
    assert (proposed / "README.md").exists()
    assert await git(proposed, "remote", "get-url", "applied") == str(applied / ".git")
    assert await main_of(applied) == await git(proposed, "rev-parse", "HEAD")
    assert (await tags(applied)) == {"deployed/0": await main_of(applied)}
    mine = await commit(proposed, {"notes.txt": "keep me\n"})
    await c.destroy("coder")  # state kept: a tombstone
    await c.spawn("coder")  # revived: the repos are reused, not re-seeded
    assert await git(proposed, "rev-parse", "HEAD") == mine
    assert (await tags(applied)) == {"deployed/0": await main_of(applied)}


async def test_request_then_approve_deploys_the_pinned_commit(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)
    pid_before = (await parts.runtime.list(["coder"]))["coder"].pid
    sha = await commit(proposed, {"agent.nix": sonnet()}, "use sonnet")
    with parts.bus.subscribe(kinds=["approval_added", "approval_resolved"]) as sub:
        approval = await c.request_apply_commit("coder", sha[:10].upper(), "sonnet please")
        added = await sub.receive()
        assert (approval.status, approval.fetched_sha, approval.commit_ref) == (
            "pending",
            sha,
            sha[:10].upper(),
        )
        assert (await tags(applied))[f"proposal/{approval.id}"] == sha
        pending = {a.id: a for a in await c.pending()}[approval.id]
        assert pending.diff is not None
        assert '+    model = "sonnet";' in pending.diff
        assert '-    model = "haiku";' in pending.diff
        assert added.diff == pending.diff  # type: ignore[attr-defined]
        assert await main_of(applied) == seed  # nothing deployed yet

        await c.approve(approval.id)
        resolved = await sub.receive()
    assert (resolved.status, resolved.sha, resolved.tag) == ("approved", sha, f"deployed/{approval.id}")  # type: ignore[attr-defined]
    assert await main_of(applied) == sha
    assert (applied / "agent.nix").read_text() == sonnet()
    tagged = await tags(applied)
    for state in ("proposal", "approved", "building", "deployed"):
        assert tagged[f"{state}/{approval.id}"] == sha
    final = await row(parts, approval.id)
    assert (final.status, final.note) == ("approved", None)
    assert final.resolved_at is not None
    live = (await parts.runtime.list(["coder"]))["coder"]
    assert live.running
    assert live.pid != pid_before  # restarted
    events = [e for e in await helper_events(parts) if e["event"] in ("approval_resolved", "rebuilt")]
    assert events == [
        {
            "event": "approval_resolved",
            "id": approval.id,
            "agent": "coder",
            "commit_ref": sha[:10].upper(),
            "status": "approved",
            "sha": sha,
            "tag": f"deployed/{approval.id}",
            "description": "sonnet please",
        },
        {"event": "rebuilt", "agent": "coder", "ok": True, "sha": sha, "tag": f"deployed/{approval.id}"},
    ]
    kicks = [body for _, sender, body in await parts.inbox("coder") if sender == "system"]
    assert kicks[-1].startswith(REASON_CONFIG_APPLIED + "\n")
    assert [j.kind for j in c.jobs() if j.agent == "coder"][-1:] == ["apply_commit"]


async def test_a_broken_config_fails_with_the_nix_error_and_leaves_main(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)
    pid_before = (await parts.runtime.list(["coder"]))["coder"].pid
    sha = await commit(proposed, {"agent.nix": BROKEN_NIX}, "oops")
    approval = await c.request_apply_commit("coder", sha)
    with pytest.raises(HiveError, match=r"(?s)failed: agent.nix of coder does not evaluate:.*syntax error"):
        await c.approve(approval.id)
    assert await main_of(applied) == seed
    assert (applied / "agent.nix").read_text() != BROKEN_NIX  # work tree rolled back too
    tagged = await tags(applied)
    assert tagged[f"failed/{approval.id}"] == sha
    assert f"deployed/{approval.id}" not in tagged
    body = await tag_body(applied, f"failed/{approval.id}")
    assert "syntax error" in body
    assert "warning:" not in body  # nix's noise is dropped
    final = await row(parts, approval.id)
    assert final.status == "failed"
    assert final.note is not None
    assert "syntax error" in final.note
    rebuilt = [e for e in await helper_events(parts) if e["event"] == "rebuilt"]
    assert rebuilt[-1]["ok"] is False
    assert rebuilt[-1]["tag"] == f"failed/{approval.id}"
    assert rebuilt[-1]["sha"] == sha
    resolved = [e for e in await helper_events(parts) if e["event"] == "approval_resolved"]
    assert resolved[-1]["status"] == "failed"
    # evaluation failed before any restart: the agent kept running untouched, and got no kick
    assert (await parts.runtime.list(["coder"]))["coder"].pid == pid_before
    kicks = [body for _, sender, body in await parts.inbox("coder") if sender == "system"]
    assert not any(k.startswith(REASON_CONFIG_APPLIED) for k in kicks)
    # a failed build is not terminal: the manager may propose again
    good = await commit(proposed, {"agent.nix": sonnet()}, "fixed")
    again = await c.request_apply_commit("coder", good)
    await c.approve(again.id)
    assert await main_of(applied) == good


async def test_the_pinned_commit_is_built_after_force_push_and_deletion(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    pinned = await commit(proposed, {"agent.nix": sonnet("opus")}, "opus")
    first = await c.request_apply_commit("coder", pinned[:7])
    # the manager rewrites history: amend and garbage-collect the old commit away
    await git(proposed, "commit", "-q", "--amend", "-m", "rewritten")
    (proposed / "agent.nix").write_text(sonnet("haiku2"))
    await git(proposed, "commit", "-q", "-am", "something else")
    await git(proposed, "reflog", "expire", "--expire=now", "--all")
    await git(proposed, "gc", "-q", "--prune=now")
    assert await git(proposed, "cat-file", "-t", pinned, check=False) == ""  # gone from the proposed repo
    await c.approve(first.id)
    assert await main_of(applied) == pinned
    assert '"opus"' in (applied / "agent.nix").read_text()

    second_sha = await commit(proposed, {"agent.nix": sonnet("sonnet")}, "sonnet")
    second = await c.request_apply_commit("coder", second_sha)
    shutil.rmtree(proposed)  # the proposed repo is gone entirely
    await c.approve(second.id)
    assert await main_of(applied) == second_sha
    assert '"sonnet"' in (applied / "agent.nix").read_text()


async def test_bad_input_is_refused_and_changes_nothing(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    sha = await commit(proposed, {"agent.nix": sonnet()})
    before_tags = await tags(applied)
    for ref in ("main", "HEAD~1", "abc12", "g" * 40, "a" * 41, "", f"{sha[:10]} --help", 1234567):
        with pytest.raises(HiveError, match="commit_ref must be a commit sha"):
            await c.request_apply_commit("coder", ref)
    with pytest.raises(HiveError, match='agent "ghost" is not managed by this hive'):
        await c.request_apply_commit("ghost", sha)
    with pytest.raises(HiveError, match="invalid agent name"):
        await c.request_apply_commit("../x", sha)
    manager = bind.Context(c, bind.MANAGER)  # text fields are the request record's to check
    with pytest.raises(HiveError, match="field 'description': expected str, got int"):
        await bind.call(
            "request_apply_commit", manager, {"agent": "coder", "commit_ref": sha, "description": 5}
        )
    with pytest.raises(HiveError, match="description is longer than 4096 characters"):
        await bind.call(
            "request_apply_commit", manager, {"agent": "coder", "commit_ref": sha, "description": "x" * 4097}
        )
    assert await c.approvals() == []  # no row for any of them
    # valid hex that is no commit of the proposed repo: the row exists, failed, with the reason
    with pytest.raises(HiveError, match=r"approval (\d+) failed: .*no commit deadbeef"):
        await c.request_apply_commit("coder", "deadbeef")
    [failed] = await c.approvals()
    assert failed.status == "failed"
    assert failed.note is not None
    assert "no commit deadbeef" in failed.note
    assert failed.fetched_sha is None
    assert await tags(applied) == before_tags
    assert not (await git(applied, "for-each-ref", "refs/hive"))  # no leftover fetch refs

    with pytest.raises(HiveError, match="no approval 999"):
        await c.approve(999)
    with pytest.raises(HiveError, match="no approval 999"):
        await c.deny(999)
    with pytest.raises(HiveError, match="an approval id must be an integer"):
        await c.approve("1")
    with pytest.raises(HiveError, match=f"approval {failed.id} is already failed"):
        await c.approve(failed.id)

    ok = await c.request_apply_commit("coder", sha)
    await c.approve(ok.id)
    no = await c.request_apply_commit("coder", sha)
    await c.deny(no.id, "not today")
    snapshot = (
        await c.approvals(),
        await tags(applied),
        await main_of(applied),
        len(await parts.inbox("manager")),
    )
    for verb in (c.approve, c.deny):
        with pytest.raises(HiveError, match=f"approval {ok.id} is already approved"):
            await verb(ok.id)
        with pytest.raises(HiveError, match=f"approval {no.id} is already denied"):
            await verb(no.id)
    assert (
        await c.approvals(),
        await tags(applied),
        await main_of(applied),
        len(await parts.inbox("manager")),
    ) == (snapshot)


async def test_deny_tags_the_proposal_with_the_note_and_tells_the_manager(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)
    sha = await commit(proposed, {"agent.nix": sonnet()})
    approval = await c.request_apply_commit("coder", sha, "try sonnet")
    await c.deny(approval.id, "haiku is enough for this one")
    assert await main_of(applied) == seed
    assert (await tags(applied))[f"denied/{approval.id}"] == sha
    assert await tag_body(applied, f"denied/{approval.id}") == "haiku is enough for this one"
    final = await row(parts, approval.id)
    assert (final.status, final.note) == ("denied", "haiku is enough for this one")
    [event] = [e for e in await helper_events(parts) if e["event"] == "approval_resolved"]
    assert event == {
        "event": "approval_resolved",
        "id": approval.id,
        "agent": "coder",
        "commit_ref": sha,
        "status": "denied",
        "note": "haiku is enough for this one",
        "sha": sha,
        "tag": f"denied/{approval.id}",
        "description": "try sonnet",
    }
    # without a note the tag still exists (its body says so)
    other = await c.request_apply_commit("coder", sha)
    await c.deny(other.id)
    assert await tag_body(applied, f"denied/{other.id}") == "(no note)"


async def test_spawn_approval_creates_the_agent_and_consumes_its_tombstone(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("old")
    with pytest.raises(HiveError, match='agent "old" already exists'):
        await c.request_spawn("old")
    with pytest.raises(HiveError, match=r"hm1nd.* is the manager"):  # the record's check
        await bind.call("request_spawn", bind.Context(c, bind.OPERATOR_SOCK), {"name": "hm1nd"})
    with pytest.raises(HiveError, match="invalid agent name"):
        await c.request_spawn("Bad Name")
    approval = await c.request_spawn("newbie", "helps with tests")
    with pytest.raises(HiveError, match='a spawn of "newbie" is already waiting for approval'):
        await c.request_spawn("newbie")
    assert [a.id for a in await c.approvals()] == [approval.id]
    await c.approve(approval.id)
    assert (await parts.runtime.list(["newbie"]))["newbie"].running
    assert (await row(parts, approval.id)).status == "approved"
    assert (parts.config.paths.agent_config("newbie") / "agent.nix").exists()
    events = [e["event"] for e in await helper_events(parts)]
    assert events[-2:] == ["spawned", "approval_resolved"]

    # destroy keeps a tombstone; an approved respawn consumes it and keeps the config repo
    kept = await commit(parts.config.paths.agent_config("newbie"), {"notes.txt": "x\n"})
    await c.destroy("newbie")
    assert [t.name for t in c.tombstones()] == ["newbie"]
    again = await c.request_spawn("newbie")
    await c.approve(again.id)
    assert c.tombstones() == []
    assert await git(parts.config.paths.agent_config("newbie"), "rev-parse", "HEAD") == kept


async def test_init_config_seeds_a_config_repo_and_says_config_ready(parts: Parts) -> None:
    c = parts.coordinator
    approval = await c.request_init_config("fresh")
    await c.approve(approval.id)
    proposed = parts.config.paths.agent_config("fresh")
    assert (proposed / "agent.nix").exists()
    assert await git(proposed, "log", "--format=%an", "-1") == "hive-c0re"
    events = [e["event"] for e in await helper_events(parts)]
    assert events[-2:] == ["approval_resolved", "config_ready"]
    with pytest.raises(HiveError, match='"fresh" already has a config repo'):
        await c.request_init_config("fresh")


async def test_a_daemon_restart_mid_build_fails_the_approval_without_rebuilding(parts: Parts) -> None:
    """kill -9 mid-build, simulated as in test_job_lane: cancel the lane while the build runs, then a
    new lane on the same journal replays the job."""
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)
    sha = await commit(proposed, {"agent.nix": sonnet()})
    approval = await c.request_apply_commit("coder", sha)
    lifecycle = parts.daemon.lifecycle
    building = trio.Event()
    builds: list[str] = []

    async def hung_build(name: str) -> None:
        builds.append(name)
        building.set()
        await trio.sleep_forever()

    lifecycle.build = hung_build
    first = JobLane(parts.store, parts.bus, parts.daemon.jobs)
    scope = trio.CancelScope()

    async def run_first(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await first.run(task_status=task_status)

    await parts.nursery.start(run_first)
    first.submit_nowait("apply_commit", "coder", source="host_sock", args={"approval_id": approval.id})
    await building.wait()
    assert await main_of(applied) == sha  # main had moved when the daemon "died"
    scope.cancel()
    await eventually(lambda: parts.transients.get("coder") is None)  # the guard clears it

    second = JobLane(parts.store, parts.bus, parts.daemon.jobs)
    replay_scope = trio.CancelScope()

    async def run_second(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with replay_scope:
            await second.run(task_status=task_status)

    await parts.nursery.start(run_second)  # started = the journal's replay has finished
    try:
        assert builds == ["coder"]  # the replay did not rebuild
        final = await row(parts, approval.id)
        assert final.status == "failed"
        assert final.note is not None
        assert "restarted during the build" in final.note
        assert await main_of(applied) == seed
        assert (applied / "agent.nix").read_text() != sonnet()
        assert (await tags(applied))[f"failed/{approval.id}"] == sha
        assert "restarted during the build" in await tag_body(applied, f"failed/{approval.id}")
        assert not (await git(applied, "for-each-ref", "refs/hive"))
        resolved = [e for e in await helper_events(parts) if e["event"] == "approval_resolved"]
        assert resolved[-1]["status"] == "failed"
        assert resolved[-1]["tag"] == f"failed/{approval.id}"
        replayed = [j for j in second.snapshot() if j.kind == "apply_commit"]
        assert [(j.source, j.state) for j in replayed][-1] == ("crash_recover", "done")
        assert (await parts.runtime.list(["coder"]))["coder"].running
    finally:
        replay_scope.cancel()


async def test_an_interrupted_request_is_failed_at_the_next_start(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    # a kill -9 between the row insert and the pin leaves a pending row without fetched_sha
    orphan = await parts.store.call(lambda conn: st.insert_approval(conn, "coder", "apply_commit", "abcdef1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(parts.daemon.approvals.run)
        nursery.cancel_scope.cancel()
    final = await row(parts, orphan.id)
    assert final.status == "failed"
    assert final.note is not None
    assert "before the proposal was fetched" in final.note


async def test_host_sock_and_hivectl_review_approve_deny_and_rebuild(hive: Daemon) -> None:
    from tests.test_hivectl import err, hivectl, out
    from tests.test_host_socket import ask, ok, refused

    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "coder"})
    proposed = hive.config.paths.agent_config("coder")
    applied = hive.config.paths.applied("coder")
    sha = await commit(proposed, {"agent.nix": sonnet(), "extra.nix": "{ }\n"}, "sonnet + extra")
    approval = await hive.coordinator.request_apply_commit("coder", sha, "sonnet")

    answer = await ok(sock, {"cmd": "pending"})
    [wire] = answer["approvals"]
    assert list(wire) == [
        "id", "agent", "kind", "commit_ref", "fetched_sha", "requested_at", "status", "description", "diff",
        "files", "commit_message", "requester", "evaluation",
    ]  # fmt: skip
    assert (wire["id"], wire["status"], wire["fetched_sha"]) == (approval.id, "pending", sha)
    assert "+++ b/extra.nix" in wire["diff"]
    table = out(await hivectl("pending", sock=sock)).splitlines()
    assert table[0].split() == ["ID", "AGENT", "KIND", "REF", "STATUS", "CHANGES", "REQUESTED", "DESCRIPTION"]
    stat = await git(applied, "diff", "--numstat", "main", sha)
    numstat = [line.split()[:2] for line in stat.splitlines()]
    plus, minus = sum(int(a) for a, _ in numstat), sum(int(d) for _, d in numstat)
    assert f"2 files +{plus} -{minus}" in table[1]
    assert sha[:12] in table[1]

    result = await hivectl("approve", str(approval.id), sock=sock)
    assert (result.returncode, out(result)) == (0, f"approved {approval.id}\n"), err(result)
    assert await main_of(applied) == sha
    [wire] = (await ok(sock, {"cmd": "pending"}))["approvals"]
    assert wire["status"] == "approved"
    assert "diff" not in wire  # only pending apply_commits carry one
    assert await refused(sock, {"cmd": "approve", "id": approval.id}) == (
        f"approval {approval.id} is already approved"
    )

    # request_spawn over the socket, denied with a note through hivectl
    await ok(sock, {"cmd": "request_spawn", "name": "helper", "description": "for docs"})
    spawn_id = (await ok(sock, {"cmd": "pending"}))["approvals"][-1]["id"]
    result = await hivectl("deny", str(spawn_id), "--note", "not now", sock=sock)
    assert (result.returncode, out(result)) == (0, f"denied {spawn_id}\n"), err(result)
    last = (await ok(sock, {"cmd": "pending"}))["approvals"][-1]
    assert (last["kind"], last["status"], last["note"]) == ("spawn", "denied", "not now")
    assert "helper" not in (await ok(sock, {"cmd": "list"}))["agents"]
    # and a second request, approved: the agent exists afterwards
    await ok(sock, {"cmd": "request_spawn", "name": "helper"})
    spawn_id = (await ok(sock, {"cmd": "pending"}))["approvals"][-1]["id"]
    await ok(sock, {"cmd": "approve", "id": spawn_id})
    assert "helper" in (await ok(sock, {"cmd": "list"}))["agents"]

    # rebuild goes through the lane and the same build seam: a broken applied config refuses
    await ok(sock, {"cmd": "rebuild", "name": "coder"})
    (applied / "agent.nix").write_text(BROKEN_NIX)
    await git(applied, "commit", "-qam", "sabotage")
    error = (await ask(sock, {"cmd": "rebuild", "name": "coder"}))["error"]
    assert "agent.nix of coder does not evaluate" in error
    assert "syntax error" in error


async def test_planted_symlinks_are_refused_not_followed(parts: Parts, tmp_path: Path) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.spawn("other")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)
    # agent.nix committed as a symlink (to a file outside the repo): the build refuses it
    (tmp_path / "secret.nix").write_text(sonnet("stolen"))
    (proposed / "agent.nix").unlink()
    (proposed / "agent.nix").symlink_to(tmp_path / "secret.nix")
    sha = await commit(proposed, {}, "symlinked config")
    approval = await c.request_apply_commit("coder", sha)
    with pytest.raises(HiveError, match=r"agent\.nix must be a regular file"):
        await c.approve(approval.id)
    assert await main_of(applied) == seed
    assert not (applied / "agent.nix").is_symlink()
    # the proposed repo itself replaced by a symlink to another agent's repo: nothing is fetched
    shutil.rmtree(proposed)
    proposed.symlink_to(parts.config.paths.agent_config("other"))
    other_head = await git(parts.config.paths.agent_config("other"), "rev-parse", "HEAD")
    with pytest.raises(HiveError, match=r"agents/coder/config \(or a parent\) is not a plain directory"):
        await c.request_apply_commit("coder", other_head)
    assert (await c.approvals())[-1].status == "failed"
    assert f"proposal/{(await c.approvals())[-1].id}" not in await tags(applied)


async def test_diffs_note_no_change_and_truncate_big_proposals(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, _ = repos(parts, "coder")
    same = await git(proposed, "rev-parse", "HEAD")
    approval = await c.request_apply_commit("coder", same)
    [pending] = await c.pending()
    assert pending.diff == "(proposal matches currently-deployed tree)\n"
    await c.deny(approval.id)
    big = await commit(proposed, {"big.txt": "".join(f"line {i} of a large file\n" for i in range(20_000))})
    await c.request_apply_commit("coder", big)
    diff = (await c.pending())[-1].diff
    assert diff is not None
    assert diff.endswith("… diff of big.txt truncated (review cap 32 KiB a file, 256 KiB in all)\n")
    assert len(diff.encode()) < 32 * 1024 + 200
    [big_file] = (await c.pending())[-1].files or []
    assert (big_file.path, big_file.added, big_file.removed) == ("big.txt", 20_000, 0)
    assert big_file.truncated


async def test_the_manager_reads_the_outcome_through_its_applied_remote(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, _ = repos(parts, "coder")
    sha = await commit(proposed, {"agent.nix": BROKEN_NIX})
    approval = await c.request_apply_commit("coder", sha)
    with pytest.raises(HiveError):
        await c.approve(approval.id)
    await git(proposed, "fetch", "-q", "--tags", "applied")
    message = await git(proposed, "for-each-ref", "--format=%(contents)", f"refs/tags/failed/{approval.id}")
    assert "does not evaluate" in message
    assert "syntax error" in message
    # the command the seeded README and docs/approvals.md give works as written (issue 16: the old
    # `git show applied/failed/<id>` was an "ambiguous argument")
    for text in ((proposed / "README.md").read_text(), APPROVALS_DOC.read_text()):
        [command] = re.findall(r"git fetch --tags applied && git show failed/<id>", text)
        for part in command.replace("<id>", str(approval.id)).split(" && "):
            shown = await git(proposed, *part.split()[1:])
        assert "does not evaluate" in shown
        assert "syntax error" in shown


async def test_a_seed_cut_short_is_redone_at_the_next_spawn(parts: Parts) -> None:
    proposed, applied = repos(parts, "coder")
    # what a crash mid-seed leaves behind: a half-copied .git under its temporary name in proposed
    # (.git appears only by the final rename), an applied repo between `git init` and deployed/0
    (proposed / ".git.hive-seed" / "objects").mkdir(parents=True)
    applied.mkdir(parents=True)
    await git(applied, "init", "-q", "-b", "main")
    await parts.coordinator.spawn("coder")
    head = await git(proposed, "rev-parse", "HEAD")
    assert (await tags(applied)) == {"deployed/0": await main_of(applied)}
    assert (applied / "agent.nix").read_text() == (proposed / "agent.nix").read_text()
    sha = await commit(proposed, {"agent.nix": sonnet()})
    approval = await parts.coordinator.request_apply_commit("coder", sha)
    await parts.coordinator.approve(approval.id)
    assert await main_of(applied) == sha
    assert head != sha


async def test_a_second_approval_for_a_building_agent_is_refused_naming_the_build(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.spawn("other")
    proposed, applied = repos(parts, "coder")
    first = await c.request_apply_commit("coder", await commit(proposed, {"agent.nix": sonnet("one")}))
    second = await c.request_apply_commit("coder", await commit(proposed, {"agent.nix": sonnet("two")}))
    gate, entered = trio.Event(), trio.Event()
    built: list[str] = []

    async def gated_build(name: str) -> None:
        built.append(name)
        entered.set()
        await gate.wait()

    parts.daemon.lifecycle.build = gated_build
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.approve, first.id)
        await entered.wait()
        assert parts.transients.get("coder") is not None  # the row shows "rebuilding"
        with pytest.raises(HiveError, match=r'agent "coder" is applying a config change \(job \d+, \d+ s\)'):
            await c.approve(second.id)
        with pytest.raises(HiveError, match=r'agent "coder" is applying a config change'):
            await c.deny(second.id)
        # a build of another agent waits its turn in the build FIFO
        nursery.start_soon(c.rebuild, "other")
        await trio.testing.wait_all_tasks_blocked()
        assert built == ["coder"]
        gate.set()
    assert built == ["coder", "other"]
    assert (await row(parts, second.id)).status == "pending"  # the refusals changed nothing
    await c.approve(second.id)
    assert '"two"' in (applied / "agent.nix").read_text()
