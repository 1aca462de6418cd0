"""Scheduled prompts end to end (issue 18 item 3): a real daemon, real agents (one stopped), hivectl,
the dashboard, the manager's request as an approval."""

from __future__ import annotations

import itertools
import json
from typing import Any

import trio

from hivecore.daemon import Daemon
from hivecore.harness import Channel
from hivecore.services.broker import inbox
from tests.conftest import AUTH
from tests.test_dashboard_actions import answer
from tests.test_hivectl import err, hivectl, out
from tests.waiting import eventually
from tests.web_client import event_stream, http


async def _spawn(hive: Daemon, name: str) -> None:
    await hive.coordinator.spawn(name)
    await eventually(lambda: hive.agent_sockets.socket(name) is not None, what=f"{name}'s socket bound")


async def _manager(hive: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    chan = await Channel.open(hive.config.manager_socket_path)
    try:
        with trio.fail_after(20):
            return await chan.call(request)
    finally:
        await chan.aclose()


async def test_a_recurring_schedule_fires_to_two_targets_one_stopped(hive: Daemon) -> None:
    await _spawn(hive, "alpha")
    await _spawn(hive, "beta")
    await hive.coordinator.stop("beta")
    sock = hive.config.host_socket_path
    made = await hivectl(
        "schedule", "--to", "alpha,beta", "--every", "1s", "--description", "tick", "ping", sock=sock
    )
    assert made.returncode == 0, err(made)
    assert out(made).startswith("created schedule 1 active (every 1 s; next in "), out(made)
    assert hive.schedules is not None

    async def fired_twice() -> bool:
        [row] = await hive.coordinator.schedules()
        return all(t.fired >= 2 for t in row.targets)

    await eventually(fired_twice, what="two firings")
    [row] = await hive.coordinator.schedules()
    results = {t.target: t.last_result or "" for t in row.targets}
    assert results["alpha"].startswith("sent (message "), results
    assert results["beta"] == "not sent: beta is not running"
    pings = [m for m in await hive.store.call(lambda c: inbox(c, "alpha")) if m["body"] == "ping"]
    assert len(pings) >= 2
    assert {m["sender"] for m in pings} == {"operator"}
    gaps = [b["sent_at"] - a["sent_at"] for a, b in itertools.pairwise(pings)]
    assert all(0 <= g <= 2 for g in gaps), gaps  # on its interval (whole seconds)
    assert await hive.store.call(lambda c: [m for m in inbox(c, "beta") if m["body"] == "ping"]) == []

    listed = out(await hivectl("schedules", sock=sock))
    assert "schedule 1 active (every 1 s;" in listed
    assert "  beta: not sent: beta is not running" in listed

    # cancel one target from the dashboard, then the schedule from hivectl
    code, _, body = await http(hive, "POST", "/unschedule/1", {"target": "beta"}, headers=AUTH)
    assert (code, answer(body)["message"]) == (200, "schedule 1: beta cancelled")
    gone = await hivectl("unschedule", "1", sock=sock)
    assert gone.returncode == 0, err(gone)
    assert out(await hivectl("schedules", sock=sock)) == "no schedules\n"
    again = await hivectl("unschedule", "1", sock=sock)
    assert (again.returncode, err(again)) == (1, "hivectl: schedule 1 is already cancelled\n")
    unknown = await hivectl("unschedule", "77", sock=sock)
    assert (unknown.returncode, err(unknown)) == (1, "hivectl: no schedule 77\n")


async def test_the_dashboard_creates_one_and_lists_it(hive: Daemon) -> None:
    await _spawn(hive, "alpha")
    form = {"to": "alpha", "body": "hello later", "at": "2099-01-01T00:00:00Z", "description": "d"}
    code, _, body = await http(hive, "POST", "/schedule", form, headers=AUTH)
    assert code == 400  # more than a year ahead
    assert "is more than a year ahead" in answer(body)["error"]
    code, _, body = await http(hive, "POST", "/schedule", {**form, "at": "", "every": "1h"}, headers=AUTH)
    assert (code, answer(body)["message"]) == (200, "schedule 1 created")
    code, _, body = await http(hive, "POST", "/schedule", {**form, "at": "", "every": "1y"}, headers=AUTH)
    assert (code, answer(body)["error"][:28]) == (400, "not a duration: '1y'; write ")
    code, _, body = await http(
        hive, "POST", "/schedule", {**form, "at": "", "to": "ghost", "every": "1h"}, headers=AUTH
    )
    assert (code, answer(body)["error"]) == (409, 'no agent "ghost" in this hive to schedule a prompt to')
    code, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    [row] = json.loads(body)["schedules"]
    assert (row["id"], row["interval_seconds"], row["body"], row["targets"][0]["target"]) == (
        1,
        3600,
        "hello later",
        "alpha",
    )


async def test_the_manager_requests_one_and_the_operator_approves_or_denies(hive: Daemon) -> None:
    await _spawn(hive, "alpha")
    seq = hive.coordinator.current_seq()
    got = await _manager(
        hive,
        {
            "cmd": "request_schedule_prompt",
            "to": ["alpha"],
            "body": "status?",
            "every": "2h",
            "description": "x",
        },
    )
    assert got["ok"] is True, got
    aid = got["approval_id"]
    [pending] = [a for a in await hive.coordinator.pending(only_pending=True) if a.id == aid]
    assert (pending.kind, pending.agent, pending.commit_ref) == ("schedule_prompt", "hm1nd", "schedule:1")
    assert pending.description == "to alpha, every 7200 s:\nstatus?\n\nx"  # the whole body
    [requested] = await hive.coordinator.schedules()
    assert (requested.state, requested.owner, requested.source) == ("requested", "hm1nd", f"approval:{aid}")
    approved = await hivectl("approve", str(aid), sock=hive.config.host_socket_path)
    assert approved.returncode == 0, err(approved)
    [active] = await hive.coordinator.schedules()
    assert active.state == "active"
    assert active.next_fire_at is not None

    got = await _manager(hive, {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "b", "at": "9"})
    assert got["error"].startswith("at 9 is in the past"), got
    got = await _manager(
        hive, {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "b", "every": "1m"}
    )
    denied = await hivectl("deny", str(got["approval_id"]), sock=hive.config.host_socket_path)
    assert denied.returncode == 0, err(denied)
    [still] = await hive.coordinator.schedules()  # the denied one is cancelled
    assert still.id == active.id
    with hive.coordinator.subscribe(["schedule_added", "schedule_cancelled"], after_seq=seq) as sub:
        kinds: list[str] = []
        with trio.move_on_after(3):
            while len(kinds) < 4:
                kinds.append((await sub.receive()).KIND)
    assert kinds == ["schedule_added", "schedule_added", "schedule_added", "schedule_cancelled"]


async def test_reminder_and_schedule_events_replay_on_the_stream_by_last_event_id(hive: Daemon) -> None:
    await _spawn(hive, "alpha")
    seq = hive.bus.current_seq()
    got = await _manager(hive, {"cmd": "remind", "message": "r", "delay_seconds": 3600})
    await hive.coordinator.cancel_reminder(got["reminder_id"])
    made = await hive.coordinator.schedule(["alpha"], "p", "1h", None)
    await hive.coordinator.unschedule(made.id)
    kinds = "reminder_added,reminder_removed,schedule_added,schedule_cancelled"
    with trio.fail_after(20):
        path = f"/api/dashboard/stream?kinds={kinds}"
        async with event_stream(hive, path, f"{AUTH}Last-Event-ID: {seq}\r\n") as sse:
            frames = [await sse.next_data() for _ in range(4)]
    assert [f["kind"] for f in frames] == kinds.split(",")
    assert frames[0]["reminder"]["message"] == "r"  # type: ignore[index]
    assert frames[3]["schedule"]["state"] == "cancelled"  # type: ignore[index]


async def test_approving_a_request_the_operator_unscheduled_answers_that_it_failed(hive: Daemon) -> None:
    # the approval was marked failed ("schedule 1 is cancelled") but approve answered ok: hivectl
    # printed "approved 1"; approve answers when the work is done, and this work did not happen
    await _spawn(hive, "alpha")
    got = await _manager(
        hive, {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "b", "every": "1h"}
    )
    aid = got["approval_id"]
    [requested] = await hive.coordinator.schedules()
    gone = await hivectl("unschedule", str(requested.id), sock=hive.config.host_socket_path)
    assert gone.returncode == 0, err(gone)
    approved = await hivectl("approve", str(aid), sock=hive.config.host_socket_path)
    assert approved.returncode == 1, out(approved)
    assert f"approval {aid} failed: schedule {requested.id} is cancelled" in err(approved)
    [failed] = [a for a in await hive.coordinator.pending(only_pending=False) if a.id == aid]
    assert (failed.status, failed.note) == ("failed", f"schedule {requested.id} is cancelled")
    assert await hive.coordinator.schedules() == []
