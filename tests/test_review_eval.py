"""The review evaluates (issue 18 item 9): each apply_commit and spawn is evaluated in the background
when it is requested, confined like a build; its review says whether it evaluates (nix's error if
not) and what it changes at runtime; hostile evaluations are bounded and starve nothing; the manager
withdraws its own requests (cancel_approval); update_meta_inputs approvals.

Real git, real nix, real agent processes, a real sqlite store; the manager is played by plain git in
the proposed repo and by its socket.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import review_eval
from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.errors import BadInput, HiveError, Refused, UnknownApproval
from hivecore.models import Approval, ReviewEval, RuntimeChange
from hivecore.ports import agent_port, port_conflicts
from hivecore.verbs import bind
from tests.conftest import Parts, make_config, start_parts
from tests.test_approvals import BROKEN_NIX, commit, main_of, repos
from tests.test_eval_confined import FOREVER, MEMORY_BOMB
from tests.waiting import eventually

RECURSION = "{ ... }: let x = x + 1; in { hive.agent.model = x; }\n"


def with_model(model: str, env: dict[str, str] | None = None) -> str:
    envs = "".join(f'      {k} = "{v}";\n' for k, v in (env or {}).items())
    return (
        "{ ... }:\n{\n  hive.agent = {\n"
        f'    model = "{model}";\n' + (f"    env = {{\n{envs}    }};\n" if envs else "") + "  };\n}\n"
    )


@pytest.fixture
async def reviewed(state_dir: Path) -> AsyncIterator[Parts]:
    """The object graph with the review evaluations actor running; evaluations limited to 512 MiB
    and 6 s so hostile ones end fast."""
    async for parts in _reviewed(state_dir, 6.0):
        yield parts


@pytest.fixture
async def patient(state_dir: Path) -> AsyncIterator[Parts]:
    """As :func:`reviewed` with the default 120 s evaluation time limit."""
    async for parts in _reviewed(state_dir, 120.0):
        yield parts


async def _reviewed(state_dir: Path, timeout: float) -> AsyncIterator[Parts]:
    config = make_config(
        state_dir, crash_watch_interval=10.0, eval_memory_max=512 << 20, eval_timeout=timeout
    )
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        assert parts.daemon.review_evals is not None
        await nursery.start(parts.daemon.review_evals.run)
        yield parts
        nursery.cancel_scope.cancel()


async def row(parts: Parts, approval_id: int) -> Approval:
    approval = await parts.store.call(lambda c: st.get_approval(c, approval_id))
    assert approval is not None
    return approval


async def evaluated(parts: Parts, approval_id: int, timeout: float = 60) -> Approval:
    async def done() -> bool:
        a = await row(parts, approval_id)
        return a.evaluation is not None and a.evaluation.status != "pending"

    await eventually(done, timeout=timeout, what=f"approval {approval_id} evaluated")
    return await row(parts, approval_id)


def changes(a: Approval) -> dict[str, tuple[str | None, str | None]]:
    assert a.evaluation is not None
    assert a.evaluation.changes is not None
    return {c.what: (c.before, c.after) for c in a.evaluation.changes}


async def test_a_proposal_is_evaluated_and_its_review_says_what_changes_at_runtime(reviewed: Parts) -> None:
    c = reviewed.coordinator
    await c.spawn("coder")
    proposed, _ = repos(reviewed, "coder")
    sha = await commit(proposed, {"agent.nix": with_model("sonnet", {"FOO": "bar"})}, "sonnet + FOO")
    with reviewed.bus.subscribe(kinds=["approval_added", "approval_reviewed"]) as sub:
        t0 = time.monotonic()
        approval = await c.request_apply_commit("coder", sha)
        time.monotonic() - t0
        added = await sub.receive()
        assert added.evaluation == ReviewEval()  # type: ignore[attr-defined]
        reviewed_event = await sub.receive()
    assert reviewed_event.KIND == "approval_reviewed"
    a = await evaluated(reviewed, approval.id)
    assert a.evaluation is not None
    assert a.evaluation.status == "ok", a.evaluation
    got = changes(a)
    assert got["model"] == ("haiku", "sonnet")
    assert got["env FOO"] == (None, "bar")
    assert "command" not in got  # unchanged
    assert not any(k.startswith("env HIVE_") for k in got)  # hive-c0re's identity is not agent.nix's
    # the review is stored with the row: host.sock pending carries it, and approving deploys
    pending = await bind.call("pending", bind.Context(c, bind.OPERATOR_SOCK), {"only_pending": True})
    assert pending[0].evaluation.status == "ok"
    await c.approve(approval.id)
    assert (await row(reviewed, approval.id)).status == "approved"
    # nothing of the evaluation is left behind
    assert not [p for p in reviewed.config.paths.root.iterdir() if p.name.startswith(review_eval.WORK_PREFIX)]


async def test_a_spawn_is_evaluated_too(reviewed: Parts) -> None:
    approval = await reviewed.coordinator.request_spawn("newbie", "a helper")
    a = await evaluated(reviewed, approval.id)
    assert a.evaluation is not None
    assert a.evaluation.status == "ok", a.evaluation
    got = changes(a)
    assert got["model"] == (None, "haiku")
    assert got["command"][0] is None
    assert got["command"][1]


async def test_a_proposal_that_does_not_evaluate_shows_nix_error_before_it_is_approved(
    reviewed: Parts,
) -> None:
    c = reviewed.coordinator
    await c.spawn("coder")
    proposed, applied = repos(reviewed, "coder")
    main = await main_of(applied)
    sha = await commit(proposed, {"agent.nix": BROKEN_NIX}, "broken")
    approval = await c.request_apply_commit("coder", sha)
    a = await evaluated(reviewed, approval.id)
    assert a.evaluation is not None
    assert a.evaluation.status == "failed"
    assert a.evaluation.error is not None
    assert "syntax error" in a.evaluation.error, a.evaluation.error
    assert a.status == "pending"  # the operator decides; the review told them first
    # what the review said is what the build says: approved anyway, it fails the same way and
    # deploys nothing
    with pytest.raises(HiveError, match="syntax error"):
        await c.approve(approval.id)
    failed = await row(reviewed, approval.id)
    assert failed.status == "failed"
    assert await main_of(applied) == main
    nix_lines = [x for x in a.evaluation.error.splitlines() if "syntax error" in x]
    assert failed.note is not None
    assert any(x.strip() in failed.note for x in nix_lines)


@pytest.mark.parametrize(
    ("agent_nix", "match"),
    [
        (RECURSION, "infinite recursion"),
        ("{ ... }: builtins.seq (" + MEMORY_BOMB + ") { }\n", "memory limit is 512 MiB"),
        ("{ ... }: builtins.seq (" + FOREVER + ") { }\n", "did not finish within 6 s"),
    ],
    ids=["infinite recursion", "memory bomb", "endless loop"],
)
async def test_a_hostile_config_is_bounded_and_blocks_no_job(
    reviewed: Parts, agent_nix: str, match: str
) -> None:
    c = reviewed.coordinator
    await c.spawn("coder")
    await c.spawn("other")
    proposed, _ = repos(reviewed, "coder")
    sha = await commit(proposed, {"agent.nix": agent_nix}, "hostile")
    t0 = time.monotonic()
    approval = await c.request_apply_commit("coder", sha)
    # while it evaluates, the operator's jobs run at once
    t1 = time.monotonic()
    await c.restart("other")
    restart = time.monotonic() - t1
    a = await evaluated(reviewed, approval.id, timeout=90)
    took = time.monotonic() - t0
    assert a.evaluation is not None
    assert a.evaluation.status == "failed", a.evaluation
    assert a.evaluation.error is not None
    assert match in a.evaluation.error, a.evaluation.error
    assert took < 45, took
    assert restart < 10, restart


async def _nix_children(root: Path) -> list[int]:
    """This daemon's review evaluations (its ``<state>/.review-eval-*`` on the command line): under
    xdist another worker's test runs evaluations of its own at the same time."""
    mine = os.fsencode(root) + b"/.review-eval-"

    def scan() -> list[int]:
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if mine in cmd:
                out.append(int(pid))
        return out

    return await trio.to_thread.run_sync(scan)


async def test_many_hostile_proposals_are_evaluated_one_at_a_time_and_a_resolution_stops_its_own(
    patient: Parts,
) -> None:
    reviewed = patient
    c = reviewed.coordinator
    await c.spawn("coder")
    proposed, _ = repos(reviewed, "coder")
    ids = []
    for i in range(4):
        sha = await commit(
            proposed, {"agent.nix": f"# {i}\n{{ ... }}: builtins.seq ({FOREVER}) {{ }}\n"}, f"h{i}"
        )
        ids.append((await c.request_apply_commit("coder", sha)).id)
    # the operator's own spawn request is evaluated before the manager's queue
    mine = await c.request_spawn("newbie")
    assert reviewed.daemon.review_evals is not None
    assert reviewed.daemon.review_evals.queued() <= 4

    async def one_running() -> bool:
        return len(await _nix_children(reviewed.config.paths.root)) >= 1

    await eventually(one_running, what="an evaluation running")
    assert len(await _nix_children(reviewed.config.paths.root)) <= 1  # one at a time
    await trio.sleep(1)
    assert len(await _nix_children(reviewed.config.paths.root)) <= 1
    # denying them stops the running nix at once (its time limit is 120 s)
    for aid in ids:
        await c.deny(aid, "no")
    t0 = time.monotonic()

    async def none_left() -> bool:
        return not await _nix_children(reviewed.config.paths.root)

    await eventually(none_left, timeout=10, what="the running evaluation stopped")
    assert time.monotonic() - t0 < 5
    a = await evaluated(reviewed, mine.id)
    assert a.evaluation is not None
    assert a.evaluation.status == "ok"
    for aid in ids:
        assert (await row(reviewed, aid)).evaluation.status in ("pending", "cancelled")  # type: ignore[union-attr]


# --- cancel_approval -----------------------------------------------------------------------------


async def manager_call(parts: Parts, fields: dict[str, Any]) -> Any:
    return await bind.call(fields.pop("cmd"), bind.Context(parts.coordinator, bind.MANAGER), fields)


async def test_the_manager_withdraws_its_own_pending_request(reviewed: Parts) -> None:
    c = reviewed.coordinator
    await c.spawn("coder")
    proposed, _ = repos(reviewed, "coder")
    sha = await commit(proposed, {"agent.nix": with_model("opus")})
    mine = await manager_call(reviewed, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha})
    operators = await c.request_spawn("newbie")
    with reviewed.bus.subscribe(kinds=["approval_resolved"]) as sub:
        await manager_call(reviewed, {"cmd": "cancel_approval", "id": mine.id})
        event = await sub.receive()
    assert (event.id, event.status) == (mine.id, "cancelled")  # type: ignore[attr-defined]
    a = await row(reviewed, mine.id)
    assert (a.status, a.note) == ("cancelled", "withdrawn by the manager")
    helper = [json.loads(b) for _, s, b in await reviewed.inbox("manager") if s == "system"]
    assert any((h["event"], h.get("status")) == ("approval_resolved", "cancelled") for h in helper)
    # twice, another's, unknown, bad shapes: one clear error each, nothing changes
    with pytest.raises(Refused, match=f"approval {mine.id} is already cancelled"):
        await manager_call(reviewed, {"cmd": "cancel_approval", "id": mine.id})
    with pytest.raises(UnknownApproval, match=f"no approval {operators.id}"):
        await manager_call(reviewed, {"cmd": "cancel_approval", "id": operators.id})
    with pytest.raises(UnknownApproval, match="no approval 999"):
        await manager_call(reviewed, {"cmd": "cancel_approval", "id": 999})
    with pytest.raises(BadInput):
        await manager_call(reviewed, {"cmd": "cancel_approval", "id": "1"})
    with pytest.raises(BadInput):
        await manager_call(reviewed, {"cmd": "cancel_approval"})
    assert (await row(reviewed, operators.id)).status == "pending"
    with pytest.raises(Refused, match="already cancelled"):
        await c.approve(mine.id)


# --- update_meta_inputs ----------------------------------------------------------------------------


async def test_update_meta_inputs_is_reviewed_with_revs_and_approving_runs_the_meta_update(
    reviewed: Parts,
) -> None:
    c = reviewed.coordinator
    await c.spawn("coder")
    await reviewed.daemon.meta.read_meta_inputs()
    with pytest.raises(
        BadInput, match=r"unknown meta input\(s\): nixpkgs, agent-ghost; the lock has: hyperhive"
    ):
        await manager_call(
            reviewed, {"cmd": "request_update_meta_inputs", "inputs": ["nixpkgs", "agent-ghost"]}
        )
    with pytest.raises(BadInput):
        await manager_call(reviewed, {"cmd": "request_update_meta_inputs", "inputs": ["../x"]})
    assert await c.approvals() == []
    # a deployed change moves applied main past the lock only after a meta update
    locked = reviewed.daemon.meta.locked_rev("agent-coder")
    assert locked is not None
    approval = await manager_call(
        reviewed,
        {"cmd": "request_update_meta_inputs", "inputs": ["agent-coder", "hyperhive"], "description": "bump"},
    )
    with pytest.raises(Refused, match="already waiting"):
        await manager_call(reviewed, {"cmd": "request_update_meta_inputs"})
    a = await evaluated(reviewed, approval.id)
    assert a.kind == "update_meta_inputs"
    assert json.loads(a.commit_ref) == ["agent-coder", "hyperhive"]
    assert a.evaluation is not None
    assert a.evaluation.status == "ok", a.evaluation
    got = changes(a)
    assert got["input agent-coder"] == (locked[:12], locked[:12])
    assert got["input hyperhive"][0] == got["input hyperhive"][1] is not None
    with reviewed.bus.subscribe(kinds=["approval_resolved"]) as sub:
        await c.approve(approval.id)
        event = await sub.receive()
    assert (event.id, event.status) == (approval.id, "approved")  # type: ignore[attr-defined]
    jobs = [j for j in c.jobs() if j.kind == "meta_update"]
    assert jobs
    assert jobs[-1].state == "done"


def test_runtime_changes_are_computed_from_facts() -> None:
    before = review_eval.runtime_facts(
        {"command": ["h"], "env": {"A": "1", "HIVE_X": "i"}, "settings": {"model": "haiku"}}, ["HIVE_X"]
    )
    after = review_eval.runtime_facts(
        {
            "command": ["h", "--x"],
            "env": {"B": "2", "HIVE_X": "i"},
            "settings": {"model": "opus", "memoryMax": "8G", "packages": ["git"]},
        },
        ["HIVE_X"],
    )
    got = review_eval.runtime_changes(before, after)
    assert got == [
        RuntimeChange(what="command", before="h", after="h --x"),
        RuntimeChange(what="model", before="haiku", after="opus"),
        RuntimeChange(what="env A", before="1", after=None),
        RuntimeChange(what="env B", before=None, after="2"),
        RuntimeChange(what="setting memoryMax", before=None, after='"8G"'),
        RuntimeChange(what="setting packages", before=None, after='["git"]'),
    ]
    with pytest.raises(review_eval.EvalFailed, match="not a valid agent"):
        review_eval.runtime_facts({"command": [], "env": {}}, [])
    long = review_eval.runtime_facts({"command": ["x" * 5000], "env": {}}, [])
    assert len(long["command"]) == review_eval.VALUE_CAP + 1


# --- the surfaces: host.sock, hivectl, /api/state ---------------------------------------------------


async def test_the_evaluation_shows_on_hivectl_host_sock_and_api_state(hive: Daemon) -> None:
    from tests.conftest import AUTH
    from tests.test_hivectl import hivectl, out
    from tests.test_host_socket import ok
    from tests.web_client import http

    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "coder"})
    proposed = hive.config.paths.agent_config("coder")
    good = await commit(proposed, {"agent.nix": with_model("sonnet", {"FOO": "\x1b]52;c;x\x07"})}, "ok")
    a_good = await hive.coordinator.request_apply_commit("coder", good)
    bad = await commit(proposed, {"agent.nix": BROKEN_NIX}, "broken")
    a_bad = await hive.coordinator.request_apply_commit("coder", bad)

    async def both_done() -> bool:
        rows = (await ok(sock, {"cmd": "pending", "only_pending": True}))["approvals"]
        return all(r["evaluation"]["status"] != "pending" for r in rows)

    await eventually(both_done, timeout=60, what="both evaluated")
    rows = {r["id"]: r for r in (await ok(sock, {"cmd": "pending", "only_pending": True}))["approvals"]}
    assert rows[a_good.id]["evaluation"]["status"] == "ok"
    assert {"what": "model", "before": "haiku", "after": "sonnet"} in rows[a_good.id]["evaluation"]["changes"]
    assert rows[a_bad.id]["evaluation"]["status"] == "failed"
    text = out(await hivectl("pending", sock=sock))
    assert "evaluation: ok; at runtime:" in text
    assert "model: haiku -> sonnet" in text
    assert "\x1b" not in text  # agent text escaped (the OSC 52 in FOO's value)
    assert "evaluation: FAILED: this config does not build (approving it only fails its build)" in text
    shown = out(await hivectl("show", str(a_bad.id), sock=sock))
    assert "syntax error" in shown
    status, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    assert status == 200
    state = json.loads(body)
    cards = {a["id"]: a for a in state["approvals"]}
    assert cards[a_bad.id]["evaluation"]["status"] == "failed"
    assert "syntax error" in cards[a_bad.id]["evaluation"]["error"]
    assert state["port_conflicts"] == []


async def test_port_conflicts_are_in_api_state(hive: Daemon) -> None:
    from tests.conftest import AUTH
    from tests.test_host_socket import ok
    from tests.web_client import http

    assert agent_port("as") == agent_port("ht")  # two names FNV-1a puts on one port
    for name in ("as", "ht", "coder"):
        await ok(hive.config.host_socket_path, {"cmd": "spawn", "name": name})
    status, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    assert status == 200
    assert json.loads(body)["port_conflicts"] == [{"port": agent_port("as"), "agents": ["as", "ht"]}]
    assert port_conflicts(["coder", "hm1nd"]) == []


async def test_withdrawing_a_schedule_request_cancels_its_requested_schedule(hive: Daemon) -> None:
    from tests.conftest import call
    from tests.test_host_socket import ok

    await ok(hive.config.host_socket_path, {"cmd": "spawn", "name": "alpha"})
    sock = hive.config.manager_socket_path
    got = await call(sock, {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "b", "every": "1h"})
    assert got["ok"] is True, got
    [requested] = await hive.coordinator.schedules()
    assert requested.state == "requested"
    answer = await call(sock, {"cmd": "cancel_approval", "id": got["approval_id"]})
    assert answer == {"version": 1, "ok": True}, answer
    assert await hive.coordinator.schedules() == []
    again = await call(sock, {"cmd": "cancel_approval", "id": got["approval_id"]})
    assert again["error"] == f"approval {got['approval_id']} is already cancelled", again
