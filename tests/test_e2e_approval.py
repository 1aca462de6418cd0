"""The whole approval loop through the real sockets, with real processes, real git and real nix.

The manager (played by this test on the manager socket, with plain git in the proposed repo)
commits and asks; the operator approves over host.sock; the daemon pins, builds, tags, restarts
and tells everyone: the manager's ``recv`` returns the outcome, the agent's harness writes the kick
into its ``inbox.log``.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from hivecore.daemon import Daemon
from hivecore.kick import REASON_CONFIG_APPLIED
from hivecore.sockets.client import request
from tests.conftest import call
from tests.test_approvals import BROKEN_NIX, commit, main_of, sonnet, tags
from tests.waiting import eventually


async def host(hive: Daemon, req: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps(req).encode() + b"\n"
    path = str(hive.config.host_socket_path)
    answer: dict[str, Any] = json.loads(await trio.to_thread.run_sync(request, path, line, 60.0))
    return answer


async def manager_inbox(hive: Daemon) -> list[dict[str, Any]]:
    """Everything waiting for the manager, through its socket (recv, then ack the turn)."""
    sock = hive.config.manager_socket_path
    got = await call(sock, {"cmd": "recv", "wait_seconds": 0, "max": 32})
    assert got["ok"], got
    await call(sock, {"cmd": "ack_turn"})
    return [json.loads(m["body"]) for m in got["messages"] if m["sender"] == "system"]


async def inbox_log(hive: Daemon, name: str, needle: str) -> list[dict[str, Any]]:
    """The agent harness's inbox.log once a line contains ``needle`` (bounded wait, real time)."""
    log = hive.config.paths.agent_state(name) / "inbox.log"

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    await eventually(lambda: any(needle in line for line in lines()), what=f"{needle!r} in {log}")
    return [json.loads(line) for line in lines()]


async def test_manager_asks_operator_approves_everyone_is_told(hive: Daemon) -> None:
    assert (await host(hive, {"cmd": "spawn", "name": "coder"}))["ok"]
    paths = hive.config.paths
    proposed, applied = paths.agent_config("coder"), paths.applied("coder")
    seed = await main_of(applied)
    await manager_inbox(hive)  # drain "spawned"

    # the manager commits in the proposed repo and asks over its socket
    sha = await commit(proposed, {"agent.nix": sonnet()}, "use sonnet")
    asked = await call(
        hive.config.manager_socket_path,
        {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha[:12], "description": "sonnet"},
    )
    assert asked["ok"], asked
    approval_id = asked["approval_id"]

    # the operator reviews and approves over host.sock
    pending = (await host(hive, {"cmd": "pending"}))["approvals"]
    mine = next(a for a in pending if a["id"] == approval_id)
    assert mine["status"] == "pending"
    assert mine["fetched_sha"] == sha
    assert '+    model = "sonnet";' in mine["diff"]
    assert (await host(hive, {"cmd": "approve", "id": approval_id}))["ok"]

    # applied main moved and the tags say what happened
    assert await main_of(applied) != seed
    assert await main_of(applied) == sha
    assert (await tags(applied))[f"deployed/{approval_id}"] == sha
    # the manager hears the outcome with the pinned sha and the terminal tag
    events = {e["event"]: e for e in await manager_inbox(hive)}
    tag = f"deployed/{approval_id}"
    assert (events["approval_resolved"]["status"], events["approval_resolved"]["sha"]) == ("approved", sha)
    assert events["approval_resolved"]["tag"] == tag
    assert (events["rebuilt"]["ok"], events["rebuilt"]["sha"], events["rebuilt"]["tag"]) == (True, sha, tag)
    # and the restarted agent's harness read its kick from the broker into inbox.log
    lines = await inbox_log(hive, "coder", REASON_CONFIG_APPLIED)
    kick = next(m for m in lines if REASON_CONFIG_APPLIED in m["body"])
    assert kick["sender"] == "system"


async def test_a_broken_config_is_tagged_failed_and_main_stays(hive: Daemon) -> None:
    assert (await host(hive, {"cmd": "spawn", "name": "coder"}))["ok"]
    proposed, applied = hive.config.paths.agent_config("coder"), hive.config.paths.applied("coder")
    before = await main_of(applied)
    await manager_inbox(hive)
    sha = await commit(proposed, {"agent.nix": BROKEN_NIX}, "oops")
    asked = await call(
        hive.config.manager_socket_path, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha}
    )
    answer = await host(hive, {"cmd": "approve", "id": asked["approval_id"]})
    assert answer["ok"] is False
    assert "agent.nix" in answer["error"] or "error" in answer["error"]
    assert await main_of(applied) == before
    assert f"failed/{asked['approval_id']}" in await tags(applied)
    events = {e["event"]: e for e in await manager_inbox(hive)}
    assert events["rebuilt"]["ok"] is False
    assert events["approval_resolved"]["status"] == "failed"
    assert (await host(hive, {"cmd": "agent_status"}))["agent_statuses"][0]["running"]
