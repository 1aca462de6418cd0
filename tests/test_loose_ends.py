"""Issue 18 item 4: ``get_loose_ends`` / ``get_open_threads`` over the real manager and agent
sockets: the caller's pending approvals, messages not acked, threads waiting on it and open
questions (asked and to answer); each caller sees only its own. Also the topology refusal of
``send`` and ``ask`` as an agent socket answers it (item 7)."""

from __future__ import annotations

from typing import Any

import pytest

from hivecore import loose_ends, topology
from hivecore.wire.agent import LooseEnd
from tests.conftest import call
from tests.test_broker import Hub, hub  # noqa: F401  (the fixture)


def kinds(answer: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    assert answer["ok"], answer
    return [(e["kind"], e["id"], e.get("state")) for e in answer["loose_ends"]]


async def test_loose_ends_of_an_agent_and_of_the_manager(hub: Hub) -> None:  # noqa: F811
    coder, tester, manager = hub.agent_sock("coder"), hub.agent_sock("tester"), hub.manager_sock
    assert kinds(await call(coder, {"cmd": "get_loose_ends"})) == []

    # tester asks coder something: a queued message for coder, nothing for tester
    [ask] = (await call(tester, {"cmd": "send", "to": "coder", "body": "can you\nreview #4?"}))["ids"]
    ends = await call(coder, {"cmd": "get_loose_ends"})
    assert kinds(ends) == [("message", ask, "queued")]
    assert ends["loose_ends"][0]["party"] == "tester"
    assert ends["loose_ends"][0]["text"] == "can you review #4?"  # one line
    assert kinds(await call(tester, {"cmd": "get_loose_ends"})) == []

    # coder reads it (delivered in its turn), answers, acks: no message left; the reply is a thread
    # waiting on tester until tester answers it
    got = await call(coder, {"cmd": "recv", "max": 1})
    assert [m["id"] for m in got["messages"]] == [ask]
    [reply] = (await call(coder, {"cmd": "send", "to": "tester", "body": "done", "in_reply_to": ask}))["ids"]
    assert kinds(await call(tester, {"cmd": "get_open_threads"})) == [("thread", reply, f"reply to {ask}")]
    assert ("thread", reply, f"reply to {ask}") in kinds(await call(tester, {"cmd": "get_loose_ends"}))
    assert kinds(await call(coder, {"cmd": "get_open_threads"})) == []
    await call(tester, {"cmd": "recv", "max": 1})
    thanks = await call(tester, {"cmd": "send", "to": "coder", "body": "thanks", "in_reply_to": reply})
    assert thanks["ok"], thanks
    assert kinds(await call(tester, {"cmd": "get_open_threads"})) == []
    threads = kinds(await call(coder, {"cmd": "get_open_threads"}))
    assert [k for k, _, _ in threads] == ["thread"]  # the thanks waits on coder now

    # the manager's pending request is its loose end until the operator decides it
    approval = (await call(manager, {"cmd": "request_spawn", "name": "newbie", "description": "a reviewer"}))[
        "approval_id"
    ]
    ends = await call(manager, {"cmd": "get_loose_ends"})
    assert ("approval", approval, "spawn") in kinds(ends)
    row = next(e for e in ends["loose_ends"] if e["kind"] == "approval")
    assert (row["agent"], row["party"], row["text"]) == ("newbie", "operator", "a reviewer")
    assert all(k != "approval" for k, _, _ in kinds(await call(coder, {"cmd": "get_loose_ends"})))
    await hub.daemon.coordinator.deny(approval, "not now")
    assert all(k != "approval" for k, _, _ in kinds(await call(manager, {"cmd": "get_loose_ends"})))

    # one clear answer for a request with fields the verb does not take is not needed (ignored), but
    # the verbs are on each socket's table
    bad = await call(coder, {"cmd": "get_loose_end"})
    assert bad["ok"] is False
    assert "get_loose_ends" in bad["error"]


async def test_open_questions_are_loose_ends_of_both_sides(hub: Hub) -> None:  # noqa: F811
    coder, tester, manager = hub.agent_sock("coder"), hub.agent_sock("tester"), hub.manager_sock
    asked = await call(coder, {"cmd": "ask", "to": "tester", "question": "which branch?", "ttl_seconds": 600})
    assert asked["ok"], asked
    peer = asked["question_id"]
    to_op = (await call(manager, {"cmd": "ask_operator", "question": "may I spawn?"}))["question_id"]
    mine = (await call(coder, {"cmd": "get_loose_ends"}))["loose_ends"]
    [q] = [e for e in mine if e["kind"] == "question_asked"]
    assert (q["id"], q["party"], q["text"]) == (peer, "tester", "which branch?")
    assert q["state"].startswith("waiting on tester; expires in ")
    theirs = (await call(tester, {"cmd": "get_loose_ends"}))["loose_ends"]
    [t] = [e for e in theirs if e["kind"].startswith("question")]
    assert (t["kind"], t["id"], t["party"]) == ("question_to_answer", peer, "coder")
    ends = kinds(await call(manager, {"cmd": "get_loose_ends"}))
    assert ("question_asked", to_op, "waiting on operator") in ends
    assert kinds(await call(manager, {"cmd": "get_open_threads"})) == []  # questions are not threads
    await call(tester, {"cmd": "answer", "id": peer, "answer": "main"})
    left = (await call(coder, {"cmd": "get_loose_ends"}))["loose_ends"]
    assert [e for e in left if e["kind"].startswith("question")] == []


async def test_pending_reminders_are_loose_ends_of_their_owner(hub: Hub) -> None:  # noqa: F811
    coder, manager = hub.agent_sock("coder"), hub.manager_sock
    set_ = await call(coder, {"cmd": "remind", "message": "check the\nbuild", "delay_seconds": 3600})
    assert set_["ok"], set_
    ends = (await call(coder, {"cmd": "get_loose_ends"}))["loose_ends"]
    [r] = [e for e in ends if e["kind"].startswith("reminder")]
    assert (r["kind"], r["id"], r["text"]) == ("reminder_pending", set_["reminder_id"], "check the build")
    assert r["state"] == f"due at {int(set_['due_at'])}"
    assert not [
        e for e in (await call(manager, {"cmd": "get_loose_ends"}))["loose_ends"] if "reminder" in e["kind"]
    ]


async def test_a_send_the_topology_refuses_is_one_error_line(hub: Hub) -> None:  # noqa: F811
    await hub.daemon.store.call(lambda c: topology.set_allowed(c, "coder", ("nobody-here",)))
    answer = await call(hub.agent_sock("coder"), {"cmd": "send", "to": "tester", "body": "hi"})
    assert answer == {
        "version": answer["version"],
        "ok": False,
        "error": "coder may not address tester: hyperhive.allowedRecipients in the agent.nix of coder "
        "allows nobody-here (the manager and the operator are always allowed)",
    }
    assert (await call(hub.agent_sock("coder"), {"cmd": "send", "to": "manager", "body": "hi"}))["ok"]
    assert await hub.rows("tester") == []
    # ask goes through the same gate; the operator and the manager stay reachable
    asked = await call(hub.agent_sock("coder"), {"cmd": "ask", "to": "tester", "question": "hi?"})
    assert asked["ok"] is False
    assert asked["error"].startswith("coder may not address tester: hyperhive.allowedRecipients")
    assert (await call(hub.agent_sock("coder"), {"cmd": "ask", "to": "operator", "question": "hi?"}))["ok"]
    assert (await call(hub.agent_sock("coder"), {"cmd": "ask", "to": "manager", "question": "hi?"}))["ok"]


def test_a_part_plugs_in_as_a_query_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Questions and reminders add a part: a function of (conn, party, now)."""
    import sqlite3

    seen: list[loose_ends.Party] = []

    def reminders(conn: sqlite3.Connection, party: loose_ends.Party, now: int) -> list[LooseEnd]:
        seen.append(party)
        return [LooseEnd(kind="reminder", id=1, since=now, state="due", text="stand up")]

    monkeypatch.setattr(loose_ends, "PARTS", {**loose_ends.PARTS, "reminders": reminders})
    conn = sqlite3.connect(":memory:")
    party = loose_ends.Party(name="coder", inbox="coder", requester="coder")
    assert [e.kind for e in loose_ends.collect(conn, party, 5, parts=("reminders",))] == ["reminder"]
    assert seen == [party]
    assert loose_ends.preview("x" * 500).endswith("…")
    assert len(loose_ends.preview("x" * 500)) == loose_ends.PREVIEW
