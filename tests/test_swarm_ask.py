"""``ask`` across hives (issue 20; hivecore/swarm_ask.py, docs/swarm.md): a question to ``name@hive``
goes out with the outbox's guarantees, the far agent (or operator) answers, the asker hears
``answered`` once; unknown names, TTLs, allowedRecipients, redelivered asks and forged answers. Two
links with real stores, brokers and questions services in one process, against a real
``nats-server -js``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import question_store as qs
from hivecore import swarm as sw
from hivecore import swarm_mail as sm
from hivecore import topology
from hivecore.errors import HiveError
from tests.nats_server import NatsServer
from tests.test_swarm_auth import Hive, nats, start_hive
from tests.test_swarm_auth import nursery as nursery  # the fixtures
from tests.test_swarm_auth import roots as roots
from tests.waiting import eventually


def events(hive: Hive, inbox: str, kind: str) -> Any:
    """The helper events of ``kind`` from system in ``inbox`` (parsed), oldest first."""

    def read(conn: Any) -> list[dict[str, Any]]:
        q = "SELECT body FROM messages WHERE recipient=? AND sender='system' ORDER BY id"
        out = [json.loads(r[0]) for r in conn.execute(q, (inbox,))]
        return [e for e in out if e.get("event") == kind]

    return hive.store.call(read)


async def question(hive: Hive, qid: int) -> Any:
    return await hive.store.call(lambda c: qs.get_question(c, qid))


async def test_ask_across_hives_is_answered_once_and_unknown_names_expiry_and_topology_hold(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)

    # coder@alpha asks coder@beta; beta's coder hears question_asked naming the asker with its hive
    asked = await a.questions.ask("coder", "tests green?", ["yes", "no"], False, 600, to="coder@beta")
    assert asked.target == "coder@beta"
    got: list[dict[str, Any]] = []

    async def arrived() -> bool:
        got[:] = await events(b, "coder", "question_asked")
        return len(got) == 1

    await eventually(arrived, 10)
    assert (got[0]["asker"], got[0]["question"], got[0]["options"]) == (
        "coder@alpha",
        "tests green?",
        ["yes", "no"],
    )
    assert got[0]["deadline_at"] == asked.deadline_at
    far_id = got[0]["id"]
    # only the asked agent answers there; its answer reaches the asker as a local peer's would
    with pytest.raises(HiveError, match="not asked of you"):
        await b.questions.answer(far_id, "no", by="writer")
    await b.questions.answer(far_id, "yes", by="coder")
    answered: list[dict[str, Any]] = []

    async def heard() -> bool:
        answered[:] = await events(a, "coder", "answered")
        return len(answered) == 1

    await eventually(heard, 10)
    assert answered[0] == {
        "event": "answered",
        "id": asked.id,
        "question": "tests green?",
        "answer": "yes",
        "target": "coder@beta",
        "answerer": "coder@beta",
    }
    row = await question(a, asked.id)
    assert (row.answer, row.answerer) == ("yes", "coder@beta")

    # JetStream redelivers the same ask (another Nats-Msg-Id, the same envelope): asked once only
    async def outbox_empty() -> bool:
        return bool(await a.store.call(sm.outbox_depth) == 0)

    await eventually(outbox_empty, 10)
    env = sm.Envelope(
        id=sw.envelope_id("alpha", a.link._secret, 1),
        from_hive="alpha",
        sender="coder",
        to="coder",
        body="tests green?",
        kind="ask",
        ref=asked.id,
        options=["yes", "no"],
        deadline_at=asked.deadline_at,
    )

    async def again(nc: Any) -> None:
        await nc.jetstream().publish("hive.beta.mail.alpha", sw.encode(env), headers={"Nats-Msg-Id": "again"})

    before = b.link.duplicates
    await nats(again, nats_server.url)
    await eventually(lambda: b.link.duplicates == before + 1, 10)
    assert len(await events(b, "coder", "question_asked")) == 1

    # an unknown name there: the asker hears at once that it was not asked
    ghost = await a.questions.ask("coder", "anyone?", to="ghost@beta")

    async def ghost_heard() -> bool:
        return any(e["id"] == ghost.id for e in await events(a, "coder", "answered"))

    await eventually(ghost_heard, 10)
    (note,) = [e for e in await events(a, "coder", "answered") if e["id"] == ghost.id]
    assert "not asked: no agent 'ghost' on hive 'beta'" in note["answer"]
    assert note.get("answerer") is None
    assert (await question(a, ghost.id)).cancelled

    # a TTL: both hives expire it; the asker hears [expired] once (beta's late answer is dropped)
    short = await a.questions.ask("coder", "quick?", ttl_seconds=1, to="manager@beta")
    await eventually(
        lambda: _any(events(b, "manager", "question_asked"), lambda e: e["asker"] == "coder@alpha"), 10
    )

    async def expired_both() -> bool:
        far = [q for q in await b.questions.open() if q.asker == "coder@alpha"]
        return not far and (await question(a, short.id)).answer == qs.EXPIRED

    await eventually(expired_both, 10)
    await eventually(outbox_empty, 10)
    await trio.sleep(0.5)  # beta's [expired] answer arrives and is dropped
    assert [e["answer"] for e in await events(a, "coder", "answered") if e["id"] == short.id] == [qs.EXPIRED]

    # allowedRecipients holds for name@hive: nothing stored, nothing queued
    await a.store.call(lambda c: topology.set_allowed(c, "coder", ["writer@beta"]))
    with pytest.raises(topology.RecipientNotAllowed):
        await a.questions.ask("coder", "may I?", to="coder@beta")
    assert await a.store.call(sm.outbox_depth) == 0
    # another hive's operator is not asked from here; a bad address names itself
    with pytest.raises(HiveError, match="another hive's operator"):
        await a.questions.ask("coder", "x", to="operator@beta")
    with pytest.raises(HiveError, match="not name@hive"):
        await a.questions.ask("coder", "x", to="coder@Beta")


async def test_an_answer_is_taken_only_from_the_hive_asked_and_the_operator_there_may_answer(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)
    asked = await a.questions.ask("coder", "which branch?", to="coder@beta")
    await eventually(lambda: _any(events(b, "coder", "question_asked"), lambda e: True), 10)

    # gamma (its own subject) answers alpha's question to beta: dropped, the question stays open
    forged = sm.Envelope(
        id="gamma.x.1",
        from_hive="gamma",
        sender="coder",
        to="coder",
        body="main",
        kind="answer",
        ref=asked.id,
    )

    async def publish(nc: Any) -> None:
        await nc.jetstream().publish(
            "hive.alpha.mail.gamma", sw.encode(forged), headers={"Nats-Msg-Id": "g1"}
        )

    before = a.link.bounced
    await nats(publish, nats_server.url)
    await eventually(lambda: a.link.bounced == before + 1, 10)
    assert (await question(a, asked.id)).answered_at is None
    # beta's operator answers in the agent's place
    (far,) = [q for q in await b.questions.open() if q.asker == "coder@alpha"]
    await b.questions.answer(far.id, "develop", by="operator")
    await eventually(lambda: _any(events(a, "coder", "answered"), lambda e: e["id"] == asked.id), 10)
    (heard,) = await events(a, "coder", "answered")
    assert (heard["answer"], heard["answerer"]) == ("develop", "operator@beta")


async def _any(rows: Any, pred: Callable[[dict[str, Any]], bool]) -> bool:
    return any(pred(e) for e in await rows)


async def test_two_serve_processes_the_manager_asks_coder_at_beta_and_betas_operator_answers(
    nats_server: NatsServer, state_dir: Path, tmp_path: Path
) -> None:
    """The daemon's wiring (hivecore/daemon.py) and the verb surface: the manager socket's ``ask``
    with ``to`` ``coder@beta`` on one ``hive-c0re serve``, the answer by the operator's ``answer`` on the
    other's host.sock, the asker's ``answered`` in its broker."""
    import os
    import signal
    import sqlite3

    from hivecore.sockets.client import request
    from tests.procs import kill_everything_under
    from tests.test_kill9 import ask
    from tests.test_swarm_serve import swarm, swarm_serve

    def system_events(state: Path, inbox: str, kind: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{state / 'db' / 'hive.sqlite'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT body FROM messages WHERE recipient=? AND sender='system'", (inbox,))
            return [e for e in (json.loads(r[0]) for r in rows) if e.get("event") == kind]
        finally:
            conn.close()

    a_dir, b_dir = state_dir / "a", state_dir / "b"
    os.chmod(state_dir, 0o755)  # the confined nix evaluation (another uid) traverses to b's state dir
    a = await swarm_serve(a_dir, tmp_path / "a.log", nats_server, "alpha")
    b = await swarm_serve(b_dir, tmp_path / "b.log", nats_server, "beta")
    try:

        async def connected() -> bool:
            return [(await swarm(d))["state"] for d in (a_dir, b_dir)] == ["connected"] * 2

        await eventually(connected, 30, interval=0.05)
        spawned = await ask(b_dir, {"cmd": "spawn", "name": "coder"})
        assert spawned["ok"], spawned
        msock = str(a_dir / "run" / "manager" / "mcp.sock")
        line = json.dumps(
            {"cmd": "ask", "to": "coder@beta", "question": "ship it?", "options": ["yes", "no"]}
        )
        asked = json.loads(await trio.to_thread.run_sync(request, msock, line.encode() + b"\n", 30.0))
        assert asked["ok"], asked
        await eventually(lambda: system_events(b_dir, "coder", "question_asked"), 20, interval=0.05)
        (event,) = system_events(b_dir, "coder", "question_asked")
        assert (event["asker"], event["question"]) == ("hm1nd@alpha", "ship it?")
        listed = await ask(b_dir, {"cmd": "questions"})
        assert [q["asker"] for q in listed["questions"]] == ["hm1nd@alpha"], listed
        answered = await ask(b_dir, {"cmd": "answer", "id": event["id"], "answer": "no"})
        assert answered["ok"], answered
        await eventually(lambda: system_events(a_dir, "manager", "answered"), 20, interval=0.05)
        (heard,) = system_events(a_dir, "manager", "answered")
        assert heard["id"] == asked["question_id"]
        assert (heard["answer"], heard["target"], heard["answerer"]) == ("no", "coder@beta", "operator@beta")
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for d in (a_dir, b_dir):
            kill_everything_under(d / "run" / "process")


async def test_a_question_closed_on_the_asking_hive_closes_the_far_copy_and_a_hive_is_rate_limited(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)

    async def far_open() -> list[Any]:
        return [q for q in await b.questions.open() if q.asker == "coder@alpha"]

    async def mapped() -> int:
        return int(
            await b.store.call(lambda c: c.execute("SELECT count(*) FROM swarm_questions").fetchone()[0])
        )

    # alpha's operator cancels one and answers another in the agent's place: beta's copies close
    first = await a.questions.ask("coder", "first?", to="coder@beta")
    second = await a.questions.ask("coder", "second?", to="coder@beta")
    await eventually(lambda: _len_is(far_open(), 2), 10)
    await a.questions.cancel(first.id)
    await a.questions.answer(second.id, "never mind", by="operator")
    await eventually(lambda: _len_is(far_open(), 0), 10)
    assert await mapped() == 0
    far: list[Any] = await b.store.call(lambda c: [qs.get_question(c, i) for i in (1, 2)])
    assert [(q.question, q.cancelled) for q in far] == [("first?", True), ("second?", True)]
    # nothing came back: the asker heard each outcome once, from its own hive
    await eventually(lambda: _eq_async(a.store.call(sm.outbox_depth), 0), 10)
    await trio.sleep(0.3)
    heard = [(e["id"], e["answer"]) for e in await events(a, "coder", "answered")]
    assert heard == [(first.id, qs.CANCELLED), (second.id, "never mind")]
    assert [e["id"] for e in await events(b, "coder", "question_asked")] == [1, 2]

    # a hive's askers share one rate on the far side (a hostile hive may invent asker names)
    b.questions.max_per_minute = 4  # the two above count in this minute: two more, then refused
    asked = [await a.questions.ask("coder", f"q{i}?", to="coder@beta") for i in range(3)]
    await eventually(lambda: _any(events(a, "coder", "answered"), lambda e: e["id"] == asked[2].id), 10)
    (refused,) = [e for e in await events(a, "coder", "answered") if e["id"] == asked[2].id]
    assert "at most 4 questions a minute from hive 'alpha'" in refused["answer"]
    assert len(await far_open()) == 2


async def _len_is(rows: Any, n: int) -> bool:
    return len(await rows) == n


async def _eq_async(value: Any, want: Any) -> bool:
    return bool(await value == want)
