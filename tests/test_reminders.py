"""Reminders end to end (issue 18 item 2): a real daemon, its real sockets, hivectl, the dashboard,
sqlite on disk, a restart."""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import reminders as rm
from hivecore.daemon import Daemon, main
from hivecore.harness import Channel
from hivecore.services.broker import inbox
from tests.conftest import AUTH, make_config
from tests.test_dashboard_actions import answer
from tests.test_hivectl import err, hivectl, out
from tests.waiting import eventually
from tests.web_client import http


async def _call(path: Path, request: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
    chan = await Channel.open(path)
    try:
        with trio.fail_after(timeout):
            return await chan.call(request)
    finally:
        await chan.aclose()


async def _spawn(hive: Daemon, name: str) -> Path:
    await hive.coordinator.spawn(name)
    await eventually(lambda: hive.agent_sockets.socket(name) is not None, what=f"{name}'s socket bound")
    return hive.config.agent_socket_path(name)


async def _messages(hive: Daemon, recipient: str) -> list[dict[str, Any]]:
    return await hive.store.call(lambda c: inbox(c, recipient))


async def test_a_reminder_due_in_one_second_arrives_within_one_and_a_half(hive: Daemon) -> None:
    sock = hive.config.manager_socket_path
    chan = await Channel.open(sock)
    try:
        with trio.fail_after(20):
            got = await chan.call({"cmd": "remind", "message": "look at the build", "delay_seconds": 1})
            start = time.monotonic()
            assert got["ok"] is True, got
            assert got["due_at"] == pytest.approx(time.time() + 1, abs=0.5)
            count = await chan.call({"cmd": "count_pending_reminders"})
            assert count == {"version": 1, "ok": True, "pending_reminders": 1}
            answer_ = await chan.call({"cmd": "recv", "wait_seconds": 5})
            elapsed = time.monotonic() - start
            [message] = answer_["messages"]
            assert (message["sender"], message["body"]) == ("reminder", "look at the build")
            assert elapsed <= 1.5, elapsed
            await chan.call({"cmd": "ack_turn"})
            assert (await chan.call({"cmd": "count_pending_reminders"}))["pending_reminders"] == 0
    finally:
        await chan.aclose()
    rows = await hive.coordinator.reminders(done=True)
    assert [(r.agent, r.status, r.attempt_count) for r in rows] == [("hm1nd", "sent", 1)]


async def test_the_operator_lists_and_cancels_and_the_row_counts_them(hive: Daemon) -> None:
    coder = await _spawn(hive, "coder")
    seq = hive.coordinator.current_seq()
    got = await _call(coder, {"cmd": "remind", "message": "tea\x1b[31m", "delay_seconds": 3600})
    rid = got["reminder_id"]
    await eventually(lambda: hive.views.rows()["coder"].pending_reminders == 1, what="the row's count")

    sock = hive.config.host_socket_path
    listed = await hivectl("reminders", sock=sock)
    assert listed.returncode == 0, err(listed)
    lines = out(listed).splitlines()
    assert lines[0].split() == ["ID", "AGENT", "DUE", "STATUS", "TRIES", "MESSAGE"]
    assert lines[1].split()[:5] == [str(rid), "coder", "in", "59m", "pending"]
    assert "\x1b" not in out(listed)  # agent text is escaped before the terminal
    status = await hivectl("--json", "status", "coder", sock=sock)
    assert json.loads(out(status))["agent_statuses"][0]["pending_reminders"] == 1

    code, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    assert code == 200
    state = json.loads(body)
    assert [(r["id"], r["agent"], r["message"]) for r in state["reminders"]] == [
        (rid, "coder", "tea\x1b[31m")
    ]

    code, _, body = await http(hive, "POST", "/cancel-reminder/abc", {}, headers=AUTH)
    assert (code, answer(body)["error"]) == (400, "a reminder id is a number, got 'abc'")
    code, _, body = await http(hive, "POST", f"/cancel-reminder/{rid}", {}, headers=AUTH)
    assert (code, answer(body)["message"]) == (200, f"reminder {rid} of coder cancelled")
    code, _, body = await http(hive, "POST", f"/cancel-reminder/{rid}", {}, headers=AUTH)
    assert (code, answer(body)["error"]) == (404, f"no pending reminder {rid}")
    gone = await hivectl("cancel-reminder", str(rid), sock=sock)
    assert (gone.returncode, err(gone)) == (1, f"hivectl: no pending reminder {rid}\n")
    zero = await hivectl("cancel-reminder", "0", sock=sock)
    assert zero.returncode == 1
    assert "a reminder id is a number from 1" in err(zero)
    assert out(await hivectl("reminders", sock=sock)) == "no reminders\n"
    assert out(await hivectl("reminders", "coder", sock=sock)) == "no reminders\n"
    typo = await hivectl("reminders", "codr", sock=sock)
    assert (typo.returncode, err(typo)) == (1, 'hivectl: agent "codr" is not managed by this hive\n')
    await eventually(lambda: hive.views.rows()["coder"].pending_reminders == 0, what="the row's count")

    # the events are on the stream, and replayed after a Last-Event-ID
    with hive.coordinator.subscribe(["reminder_added", "reminder_removed"], after_seq=seq) as sub:
        with trio.fail_after(5):
            added, removed = await sub.receive(), await sub.receive()
    assert (added.KIND, added.reminder.id) == ("reminder_added", rid)  # type: ignore[attr-defined]
    assert (removed.KIND, removed.reason) == ("reminder_removed", "cancelled")  # type: ignore[attr-defined]


async def test_an_oversized_text_goes_to_a_file_and_a_planted_link_is_not_followed(
    hive: Daemon, tmp_path: Path
) -> None:
    coder = await _spawn(hive, "coder")
    state = hive.config.paths.agent_state("coder")
    text = "é" * 3000  # 6000 bytes: past the 4 KiB inline limit
    got = await _call(coder, {"cmd": "remind", "message": text, "delay_seconds": 0})
    rid = got["reminder_id"]
    path = state / "reminders" / f"reminder-{rid}.md"
    await eventually(path.exists, what="the reminder's file")
    assert path.read_text() == text
    assert path.stat().st_uid == state.stat().st_uid  # the agent's own file

    async def pointer() -> list[str]:
        return [m["body"] for m in await _messages(hive, "coder") if m["sender"] == "reminder"]

    await eventually(pointer, what="the pointer message")
    assert (await pointer())[0] == f"reminder: the text (6000 bytes) is in {path}; read it there"

    # an explicit file_path, absolute under the state dir as the agent sees it
    await _call(
        coder, {"cmd": "remind", "message": "short", "delay_seconds": 0, "file_path": f"{state}/n/a.txt"}
    )
    await eventually(lambda: (state / "n" / "a.txt").exists(), what="the file_path file")
    assert (state / "n" / "a.txt").read_text() == "short"

    # the agent plants a link where the text would go: the delivery fails, nothing is written outside
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, state / "trap")
    got = await _call(coder, {"cmd": "remind", "message": "x", "delay_seconds": 0, "file_path": "trap/f"})
    rid = got["reminder_id"]

    async def failed() -> list[rm.Reminder]:
        return [r for r in await hive.coordinator.reminders("coder") if r.id == rid and r.attempt_count]

    await eventually(failed, what="the failed attempt recorded")
    [row] = await failed()
    assert row.status == "pending"
    assert row.last_error is not None
    assert (
        "ELOOP" in row.last_error
        or "Too many levels of symbolic links" in row.last_error
        or ("Not a directory" in row.last_error)
    ), row.last_error
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > time.time()
    assert list(outside.iterdir()) == []
    await hive.coordinator.cancel_reminder(rid)


async def test_a_purged_agents_reminders_are_dropped(hive: Daemon) -> None:
    coder = await _spawn(hive, "coder")
    await _call(coder, {"cmd": "remind", "message": "later", "delay_seconds": 3600})
    assert len(await hive.coordinator.reminders("coder")) == 1
    seq = hive.coordinator.current_seq()
    await hive.coordinator.destroy("coder", purge=True)
    assert await hive.coordinator.reminders() == []
    with hive.coordinator.subscribe(["reminder_removed"], after_seq=seq) as sub, trio.fail_after(10):
        dropped = await sub.receive()
    assert (dropped.agent, dropped.reason) == ("coder", "dropped")  # type: ignore[attr-defined]
    await _spawn(hive, "coder")  # a new agent of the same name inherits nothing
    assert await hive.coordinator.reminders("coder") == []


async def test_bad_requests_get_one_clear_error_on_the_socket(hive: Daemon) -> None:
    sock = hive.config.manager_socket_path
    cases: list[tuple[dict[str, Any], str]] = [
        ({"delay_seconds": -5}, "delay_seconds must be 0 or more, got -5"),
        ({}, "give exactly one of delay_seconds (seconds from now) and at (Unix seconds), got neither"),
        ({"delay_seconds": 1, "at": time.time() + 60}, "give exactly one of"),
        ({"at": 1_000_000}, "at 1000000 is in the past"),
        ({"delay_seconds": "soon"}, 'bad "remind" request'),
    ]
    for fields, error in cases:
        got = await _call(sock, {"cmd": "remind", "message": "x", **fields})
        assert got["ok"] is False, (fields, got)
        assert got["error"].startswith(error), (fields, got)
    big = await _call(sock, {"cmd": "remind", "message": "x" * 40_000, "delay_seconds": 1})
    assert big["error"] == (
        "message is 40000 bytes; the limit is 32768: write it to a file in your state dir and remind "
        "yourself of its path"
    )
    host = await hivectl("--json", "reminders", "Bad..Name", sock=hive.config.host_socket_path)
    assert host.returncode == 1


async def test_a_reminder_due_in_an_hour_survives_a_restart_and_fires(state_dir: Path) -> None:
    config = make_config(state_dir)
    async with trio.open_nursery() as nursery:
        first: Daemon = await nursery.start(partial(main, config))
        got = await _call(
            config.manager_socket_path, {"cmd": "remind", "message": "hourly", "at": time.time() + 3600}
        )
        assert got["ok"], got
        nursery.cancel_scope.cancel()
    assert first.reminders is not None
    async with trio.open_nursery() as nursery:
        second: Daemon = await nursery.start(partial(main, config))
        assert second.reminders is not None
        [row] = await second.coordinator.reminders()
        assert (row.id, row.message, row.status) == (got["reminder_id"], "hourly", "pending")
        # an hour later (the scheduler's clock moved on; the row is what the first daemon stored)
        second.reminders.clock = lambda: time.time() + 3601
        second.reminders.wake()
        reply = await _call(config.manager_socket_path, {"cmd": "recv", "wait_seconds": 10})
        assert [(m["sender"], m["body"]) for m in reply["messages"]] == [("reminder", "hourly")]
        nursery.cancel_scope.cancel()
