"""Questions end to end (issue 18 item 1): a real daemon, its real sockets, a real agent process
(the minimal harness, which records its inbox in ``inbox.log``) and the real ``hivectl`` process.

The manager is played by this test on the manager socket; the asked agent's model is played by this
test on the agent's socket (its harness receives the ``question_asked`` event meanwhile).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from hivecore.daemon import Daemon
from hivecore.services import broker as br
from tests.conftest import AUTH, call, make_config
from tests.test_e2e_approval import host
from tests.test_hivectl import err, hivectl, out
from tests.waiting import eventually
from tests.web_client import event_stream, http


async def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


async def manager_events(hive: Daemon, wait: float = 0) -> list[dict[str, Any]]:
    """Helper events waiting for the manager (recv up to ``wait`` s for the first, then ack)."""
    sock = hive.config.manager_socket_path
    with trio.fail_after(wait + 30):
        got = await ok(await call_long(sock, {"cmd": "recv", "wait_seconds": wait, "max": 32}))
    await ok(await call(sock, {"cmd": "ack_turn"}))
    return [json.loads(m["body"]) for m in got["messages"] if m["sender"] == "system"]


async def coder_events(hive: Daemon) -> list[dict[str, Any]]:
    """Every helper event queued for coder (its harness, not logged in, holds its first turn: what
    came after waits in the broker)."""
    rows = await hive.store.call(lambda c: br.inbox(c, "coder"))
    return [json.loads(r["body"]) for r in rows if r["sender"] == "system"]


async def call_long(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request on its own connection without the 10 s bound of :func:`call` (a long recv)."""
    from hivecore.sockets.client import request as blocking_request

    line = json.dumps(request).encode() + b"\n"
    answer: dict[str, Any] = json.loads(
        await trio.to_thread.run_sync(blocking_request, str(path), line, 240.0)
    )
    return answer


async def test_the_manager_asks_expires_then_the_operator_answers_with_hivectl(hive: Daemon) -> None:
    msock, hsock = hive.config.manager_socket_path, hive.config.host_socket_path
    # with options and a 2 s TTL: [expired] arrives, not before the TTL
    asked = await ok(
        await call(
            msock,
            {"cmd": "ask_operator", "question": "deploy now?", "options": ["yes", "no"], "ttl_seconds": 2},
        )
    )
    qid = asked["question_id"]
    started = time.monotonic()
    [row] = (await ok(await host(hive, {"cmd": "questions"})))["questions"]
    assert (row["id"], row["options"]) == (qid, ["yes", "no"])
    assert row["deadline_at"] - row["asked_at"] in (2, 3)  # the deadline is rounded up to a whole second
    events = await manager_events(hive, wait=20)
    took = time.monotonic() - started
    assert events == [
        {"event": "operator_answered", "id": qid, "question": "deploy now?", "answer": "[expired]"}
    ]
    # never before the TTL; the bound after it is loose on purpose: the suite shares a small machine
    assert 1.5 <= took <= 10.0, took
    # answering it now: one clear error
    late = await hivectl("answer", str(qid), "yes", sock=hsock)
    assert (late.returncode, err(late)) == (1, f"hivectl: question {qid} was already expired\n")
    # the expiry is the daemon's own action: an audit row of principal daemon
    trail = (await ok(await host(hive, {"cmd": "audit", "agent": "hm1nd"})))["audit"]
    [expiry] = [r for r in trail if r["verb"] == "question_expired"]
    assert (expiry["principal"], expiry["args"]["id"], expiry["args"]["to"]) == ("daemon", qid, "operator")

    # asked again, the operator answers with hivectl; the manager's recv returns the answer
    again = (
        await ok(
            await call(msock, {"cmd": "ask_operator", "question": "deploy now?", "options": ["yes", "no"]})
        )
    )["question_id"]
    listed = out(await hivectl("questions", sock=hsock))
    assert f"#{again} hm1nd asks you" in listed
    assert "options: yes | no" in listed
    answered = await hivectl("answer", str(again), "yes, after lunch", sock=hsock)
    assert (answered.returncode, out(answered)) == (0, f"answered question {again}\n")
    events = await manager_events(hive, wait=10)
    assert events == [
        {"event": "operator_answered", "id": again, "question": "deploy now?", "answer": "yes, after lunch"}
    ]
    twice = await hivectl("answer", str(again), "no", sock=hsock)
    assert (twice.returncode, err(twice)) == (1, f"hivectl: question {again} was already answered\n")
    unknown = await hivectl("answer", "999999", "no", sock=hsock)
    assert (unknown.returncode, err(unknown)) == (1, "hivectl: no question 999999\n")
    assert out(await hivectl("questions", sock=hsock)) == "no open questions\n"


async def test_agents_ask_and_answer_each_other_and_never_answer_the_operator(hive: Daemon) -> None:
    msock, hsock = hive.config.manager_socket_path, hive.config.host_socket_path
    await ok(await host(hive, {"cmd": "spawn", "name": "coder"}))
    asock = hive.config.agent_socket_path("coder")
    await manager_events(hive)  # drain "spawned"

    # the agent asks the operator: its row says it waits on the operator, hivectl status shows it
    mine = (await ok(await call(asock, {"cmd": "ask_operator", "question": "may I refactor?"})))[
        "question_id"
    ]
    await eventually(
        lambda: hive.coordinator.views()["coder"].waiting_on_operator_since is not None, what="coder waiting"
    )
    status = out(await hivectl("status", sock=hsock))
    assert "WAITING ON YOU" in status
    assert "since " in status.splitlines()[1]
    # the manager asks the operator too: an agent socket answering it is refused, and its own too
    op = (await ok(await call(msock, {"cmd": "ask_operator", "question": "ok?"})))["question_id"]
    for qid in (op, mine):
        refused = await call(asock, {"cmd": "answer", "id": qid, "answer": "sure"})
        assert refused == {
            "version": 1,
            "ok": False,
            "error": f"question {qid} was not asked of you (it is for the operator); you cannot answer it",
        }
        refused = await call(msock, {"cmd": "answer", "id": qid, "answer": "sure"})
        assert not refused["ok"]
    assert len((await ok(await host(hive, {"cmd": "questions"})))["questions"]) == 2

    # the operator cancels the agent's question: its harness receives [cancelled], the row clears
    cancelled = await hivectl("cancel-question", str(mine), sock=hsock)
    assert (cancelled.returncode, out(cancelled)) == (0, f"cancelled question {mine}\n")
    assert {
        "event": "operator_answered",
        "id": mine,
        "question": "may I refactor?",
        "answer": "[cancelled]",
    } in (await coder_events(hive))
    await eventually(
        lambda: hive.coordinator.views()["coder"].waiting_on_operator_since is None, what="cleared"
    )

    # the manager asks the agent: the agent's harness gets question_asked, the agent answers
    peer = (
        await ok(
            await call(
                msock, {"cmd": "ask", "to": "coder", "question": "tests green?", "options": ["yes", "no"]}
            )
        )
    )["question_id"]
    [pushed] = [b for b in await coder_events(hive) if b["event"] == "question_asked"]
    assert pushed == {
        "event": "question_asked",
        "id": peer,
        "asker": "hm1nd",
        "question": "tests green?",
        "options": ["yes", "no"],
        "multi": False,
    }
    await ok(await call(asock, {"cmd": "answer", "id": peer, "answer": "yes"}))
    assert await manager_events(hive, wait=10) == [
        {
            "event": "answered",
            "id": peer,
            "question": "tests green?",
            "answer": "yes",
            "target": "coder",
            "answerer": "coder",
        }
    ]
    again = await call(asock, {"cmd": "answer", "id": peer, "answer": "no"})
    assert again["error"] == f"question {peer} was already answered"

    # bad input over the sockets: one clear error each
    bad: dict[str, tuple[dict[str, Any], str]] = {
        "ghost": ({"cmd": "ask", "to": "ghost", "question": "hi?"}, 'no such agent "ghost" to ask'),
        "ttl": (
            {"cmd": "ask_operator", "question": "q", "ttl_seconds": -5},
            "ttl_seconds must be 1 to 604800",
        ),
        "huge": (
            {"cmd": "ask_operator", "question": "x" * 3000},
            "question is 3000 bytes; the limit is 2048",
        ),
        "options": (
            {"cmd": "ask_operator", "question": "q", "options": [f"o{i}" for i in range(20)]},
            "20 options; at most 12",
        ),
        "unknown": ({"cmd": "answer", "id": 424242, "answer": "a"}, "no question 424242"),
        "self": ({"cmd": "ask", "to": "coder", "question": "me?"}, "you cannot ask yourself"),
    }
    for what, (request, message) in bad.items():
        answer = await call(asock, request)
        assert not answer["ok"], what
        assert message in answer["error"], (what, answer)

    # the operator answers the operator's question of the manager and overrides a peer question
    await ok(await host(hive, {"cmd": "answer", "id": op, "answer": "fine"}))
    over = (await ok(await call(msock, {"cmd": "ask", "to": "coder", "question": "branch?"})))["question_id"]
    await ok(await host(hive, {"cmd": "answer", "id": over, "answer": "main"}))
    events = await manager_events(hive, wait=10)
    assert [(e["id"], e["answer"], e.get("answerer")) for e in events] == [
        (op, "fine", None),
        (over, "main", "operator"),
    ]

    # a purge of the asked agent cancels what was asked of it; the manager hears [cancelled]
    last = (await ok(await call(msock, {"cmd": "ask", "to": "coder", "question": "still there?"})))[
        "question_id"
    ]
    await ok(await call(asock, {"cmd": "ask_operator", "question": "one more?"}))
    await ok(await host(hive, {"cmd": "destroy", "name": "coder", "purge": True}))
    events = [e for e in await manager_events(hive, wait=10) if e["event"] == "answered"]
    assert events == [
        {
            "event": "answered",
            "id": last,
            "question": "still there?",
            "answer": "[cancelled]",
            "target": "coder",
        }
    ]
    assert (await ok(await host(hive, {"cmd": "questions"}))).get("questions") == []


async def test_a_pending_ttl_survives_a_daemon_restart(state_dir: Path) -> None:
    """A question asked before a restart is still open after it, and its TTL still fires."""
    from hivecore.daemon import main

    config = make_config(state_dir)
    async with trio.open_nursery() as nursery:
        hive: Daemon = await nursery.start(partial(main, config))
        asked = await ok(
            await call(config.manager_socket_path, {"cmd": "ask_operator", "question": "q", "ttl_seconds": 4})
        )
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(partial(main, config))
        [row] = (await ok(await host(hive, {"cmd": "questions"})))["questions"]
        assert row["id"] == asked["question_id"]
        assert row["deadline_at"] - row["asked_at"] in (4, 5)
        events = await manager_events(hive, wait=30)
        assert events == [
            {"event": "operator_answered", "id": asked["question_id"], "question": "q", "answer": "[expired]"}
        ]
        assert time.time() >= row["deadline_at"]
        nursery.cancel_scope.cancel()


async def test_the_dashboard_routes_the_snapshot_and_the_replayed_events(hive: Daemon) -> None:
    msock = hive.config.manager_socket_path
    seq = hive.coordinator.current_seq()
    qid = (await ok(await call(msock, {"cmd": "ask_operator", "question": "q?", "options": ["a", "b"]})))[
        "question_id"
    ]
    status, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    assert status == 200
    [card] = json.loads(body)["questions"]
    assert (card["id"], card["asker"], card["options"], card.get("target")) == (
        qid,
        "hm1nd",
        ["a", "b"],
        None,
    )
    # one clear error each; nothing changes
    for path, form, code, message in [
        ("/answer-question/abc", {"answer": "a"}, 400, "a question id is a number, got 'abc'"),
        (f"/answer-question/{qid}", {}, 400, "missing field 'answer'"),
        (f"/answer-question/{qid}", {"answer": "x" * 1537}, 400, "answer is 1537 bytes; the limit is 1536"),
        ("/answer-question/98765", {"answer": "a"}, 404, "no question 98765"),
        ("/cancel-question/98765", {}, 404, "no question 98765"),
    ]:
        status, _, body = await http(hive, "POST", path, form, headers=AUTH)
        assert (status, json.loads(body)) == (code, {"ok": False, "error": message}), path
    status, _, body = await http(hive, "POST", f"/answer-question/{qid}", {"answer": "b"}, headers=AUTH)
    assert (status, json.loads(body)) == (200, {"ok": True, "message": f"question {qid} answered"})
    status, _, body = await http(hive, "POST", f"/cancel-question/{qid}", {}, headers=AUTH)
    assert (status, json.loads(body)["error"]) == (409, f"question {qid} was already answered")
    # a reconnect with Last-Event-ID replays both events
    path = "/api/dashboard/stream?kinds=question_added,question_resolved"
    async with event_stream(hive, path, f"{AUTH}Last-Event-ID: {seq}\r\n") as sse:
        added = await sse.next_data()
        resolved = await sse.next_data()
    assert (added["kind"], added["id"], added["question"]) == ("question_added", qid, "q?")
    assert (resolved["kind"], resolved["id"], resolved["answer"], resolved["answerer"]) == (
        "question_resolved",
        qid,
        "b",
        "operator",
    )
