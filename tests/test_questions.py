"""Questions (issue 18 item 1): the store functions, the checks and the TTL actor on virtual time.

The actor's tests run on ``MockClock(autojump_threshold=0)``: nothing here starts a thread or a
process. The store is a real sqlite database (the schema's migrations) called inline, in the trio
thread, instead of through the store actor's worker thread; the broker is a recorder of posts.
End to end over the real sockets and processes: ``tests/test_questions_e2e.py``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hivecore import question_store
from hivecore import store as st
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.question_store import UnknownQuestion
from hivecore.services import questions as qs
from hivecore.services.questions import Questions
from hivecore.wire.events import Event, QuestionAdded, QuestionResolved
from hivecore.wire.helper import helper_from_body
from hivecore.wire.questions import AnswerRequest, AskOperatorRequest, AskRequest
from hivecore.wire.request import checked, structure

EPOCH = 1_700_000_000.0


class InlineStore:
    """The store actor's ``call`` without its thread (virtual time may jump only while nothing runs)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(self.conn)


class Posts:
    """The broker's ``post``, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def post(self, sender: str, recipient: str, body: str) -> int:
        assert sender == "system"
        self.sent.append((recipient, json.loads(body)))
        helper_from_body(body)  # every body is a helper event a reader can decode
        return len(self.sent)


class Bus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = st.connect(tmp_path / "hive.sqlite")
    try:
        yield c
    finally:
        c.close()


def make(
    conn: sqlite3.Connection, agents: tuple[str, ...] = ("coder", "hm1nd")
) -> tuple[Questions, Posts, Bus]:
    posts, bus = Posts(), Bus()
    service = Questions(
        InlineStore(conn),  # type: ignore[arg-type]
        bus,
        posts,  # type: ignore[arg-type]
        lambda: agents,
        clock=lambda: EPOCH + trio.current_time(),
    )
    return service, posts, bus


# --- the TTL actor (virtual time) ----------------------------------------------------------------------


async def test_a_question_expires_at_its_deadline_not_before(
    conn: sqlite3.Connection, autojump_clock: trio.testing.MockClock
) -> None:
    service, posts, bus = make(conn)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        q = await service.ask("hm1nd", "ship it?", ["yes", "no"], ttl_seconds=2)
        assert service.waiting_since("hm1nd") == q.asked_at
        await trio.sleep(1.5)
        assert posts.sent == []
        await trio.sleep(1.0)
        assert posts.sent == [
            (
                "hm1nd",
                {"event": "operator_answered", "id": q.id, "question": "ship it?", "answer": "[expired]"},
            )
        ]
        assert service.waiting_since("hm1nd") is None
        [resolved] = [e for e in bus.events if isinstance(e, QuestionResolved)]
        assert (resolved.id, resolved.answer, resolved.cancelled, resolved.answerer) == (
            q.id,
            "[expired]",
            False,
            None,
        )
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_wakes_the_sleeping_actor(
    conn: sqlite3.Connection, autojump_clock: trio.testing.MockClock
) -> None:
    service, posts, _ = make(conn)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        late = await service.ask("hm1nd", "later", ttl_seconds=3600)
        await trio.sleep(1)
        early = await service.ask("coder", "sooner", ttl_seconds=5)
        await trio.sleep(6)
        assert [(r, b["id"], b["answer"]) for r, b in posts.sent] == [("coder", early.id, "[expired]")]
        await trio.sleep(3600)
        assert [b["id"] for _, b in posts.sent] == [early.id, late.id]
        nursery.cancel_scope.cancel()


async def test_deadlines_survive_a_restart_of_the_actor(
    conn: sqlite3.Connection, autojump_clock: trio.testing.MockClock
) -> None:
    """The deadline is a row, not a sleep: a new actor (a daemon restart) still expires it on time,
    and one already past while it was down is expired at once."""
    first, _, _ = make(conn)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            soon = await first.ask("hm1nd", "soon", ttl_seconds=10)
            later = await first.ask("hm1nd", "later", ttl_seconds=100)
            scope.cancel()
    await trio.sleep(20)  # the daemon is down past the first deadline
    second, posts, _ = make(conn)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert second.waiting_since("hm1nd") == later.asked_at  # loaded at start
        await trio.sleep(0.1)
        assert [b["id"] for _, b in posts.sent] == [soon.id]
        await trio.sleep(79)
        assert [b["id"] for _, b in posts.sent] == [soon.id]
        await trio.sleep(2)
        assert [b["id"] for _, b in posts.sent] == [soon.id, later.id]
        nursery.cancel_scope.cancel()


async def test_no_deadline_means_the_actor_sleeps_until_woken(
    conn: sqlite3.Connection, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, posts, _ = make(conn)
    reads = 0
    real = question_store.next_deadline

    def counting(c: sqlite3.Connection) -> int | None:
        nonlocal reads
        reads += 1
        return real(c)

    monkeypatch.setattr(qs, "next_deadline", counting)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.ask("hm1nd", "no ttl")
        await trio.sleep(30 * 24 * 3600)
        assert reads == 1  # no polling: one read at start, none since
        await service.ask("hm1nd", "with ttl", ttl_seconds=1)
        await trio.sleep(2)
        assert reads >= 2
        assert [b["question"] for _, b in posts.sent] == ["with ttl"]
        nursery.cancel_scope.cancel()


# --- answering, refusals ---------------------------------------------------------------------------------


async def test_answer_rules_each_with_one_clear_error(conn: sqlite3.Connection) -> None:
    service, posts, bus = make(conn, agents=("coder", "scout", "hm1nd"))
    op = await service.ask("hm1nd", "deploy?", ["yes", "no"])
    peer = await service.ask("hm1nd", "tests green?", to="coder")
    assert posts.sent[-1] == (
        "coder",
        {
            "event": "question_asked",
            "id": peer.id,
            "asker": "hm1nd",
            "question": "tests green?",
            "options": [],
            "multi": False,
        },
    )
    # an agent never answers an operator question, nor a peer question asked of someone else
    with pytest.raises(Refused, match=f"question {op.id} was not asked of you \\(it is for the operator\\)"):
        await service.answer(op.id, "yes", by="coder")
    with pytest.raises(
        Refused, match=f"question {peer.id} was not asked of you \\(it is for another agent\\)"
    ):
        await service.answer(peer.id, "yes", by="scout")
    with pytest.raises(UnknownQuestion, match="no question 999"):
        await service.answer(999, "yes", by="operator")
    # the asked agent answers; the asker hears it
    await service.answer(peer.id, "all green", by="coder")
    assert posts.sent[-1] == (
        "hm1nd",
        {
            "event": "answered",
            "id": peer.id,
            "question": "tests green?",
            "answer": "all green",
            "target": "coder",
            "answerer": "coder",
        },
    )
    with pytest.raises(Refused, match=f"question {peer.id} was already answered"):
        await service.answer(peer.id, "again", by="coder")
    with pytest.raises(Refused, match=f"question {peer.id} was already answered"):
        await service.cancel(peer.id)
    # the operator answers (free text, not an option) and cancels
    await service.answer(op.id, "not today", by="operator")
    assert posts.sent[-1][1]["answer"] == "not today"
    other = await service.ask("coder", "lunch?")
    await service.cancel(other.id)
    assert posts.sent[-1] == (
        "coder",
        {"event": "operator_answered", "id": other.id, "question": "lunch?", "answer": "[cancelled]"},
    )
    with pytest.raises(Refused, match=f"question {other.id} was already cancelled"):
        await service.answer(other.id, "yes", by="operator")
    # the operator overrides a peer question
    third = await service.ask("coder", "which branch?", to="scout")
    await service.answer(third.id, "main", by="operator")
    assert posts.sent[-1][1]["answerer"] == "operator"
    kinds = [type(e).__name__ for e in bus.events]
    assert kinds.count("QuestionAdded") == 4
    assert kinds.count("QuestionResolved") == 4


async def test_asking_refusals(conn: sqlite3.Connection) -> None:
    service, _, _ = make(conn, agents=("coder", "hm1nd"))
    with pytest.raises(BadInput, match='no such agent "ghost" to ask'):
        await service.ask("hm1nd", "hi?", to="ghost")
    with pytest.raises(BadInput, match='no such agent "Bad Name" to ask'):
        await service.ask("hm1nd", "hi?", to="Bad Name")
    with pytest.raises(BadInput, match="you cannot ask yourself"):
        await service.ask("coder", "hi?", to="coder")
    with pytest.raises(BadInput, match="you cannot ask yourself"):
        await service.ask("hm1nd", "hi?", to="manager")
    with pytest.raises(BadInput, match="multi needs options"):
        await service.ask("hm1nd", "pick", multi=True)
    # "manager" and "operator" are words: to the manager, to the operator
    assert (await service.ask("coder", "hi?", to="manager")).target == "hm1nd"
    assert (await service.ask("coder", "hi?", to="operator")).target is None
    service.max_open = 3
    await service.ask("coder", "third")
    with pytest.raises(Refused, match="coder already has 3 open questions \\(the limit is 3\\)"):
        await service.ask("coder", "fourth")
    assert await service.open(asked_by="coder", asked_of="operator") == [
        q for q in await service.open() if q.asker == "coder" and q.target is None
    ]


async def test_a_purge_cancels_the_questions_of_that_incarnation(conn: sqlite3.Connection) -> None:
    service, posts, _ = make(conn, agents=("coder", "scout", "hm1nd"))
    st.begin_incarnation(conn, "coder", 1)
    st.begin_incarnation(conn, "scout", 1)
    mine = await service.ask("coder", "may I?")
    to_coder = await service.ask("scout", "status?", to="coder")
    unrelated = await service.ask("scout", "lunch?")
    posts.sent.clear()
    st.end_incarnation(conn, "coder", 2)
    await service.incarnation_ended("coder")
    assert [q.id for q in await service.open()] == [unrelated.id]
    # the surviving asker hears [cancelled]; the purged one is told nothing
    assert posts.sent == [
        (
            "scout",
            {
                "event": "answered",
                "id": to_coder.id,
                "question": "status?",
                "answer": "[cancelled]",
                "target": "coder",
            },
        )
    ]
    assert service.waiting_since("coder") is None
    row = question_store.get_question(conn, mine.id)
    assert row is not None
    assert (row.cancelled, row.answer) == (True, "[cancelled]")


async def test_an_answer_never_reaches_a_later_agent_of_the_same_name(conn: sqlite3.Connection) -> None:
    """Had the purge hook not run, a question from an ended incarnation is still answered (the row
    closes) but its answer is not posted to the new agent of the same name."""
    service, posts, _ = make(conn)
    st.begin_incarnation(conn, "coder", 1)
    old = await service.ask("coder", "from the old coder")
    st.end_incarnation(conn, "coder", 2)
    st.begin_incarnation(conn, "coder", 3)
    await service.answer(old.id, "yes", by="operator")
    assert posts.sent == []


# --- the checks (stateless, one clear error each) --------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "fields", "message"),
    [
        (AskOperatorRequest, {"question": "  "}, "question is empty"),
        (AskOperatorRequest, {"question": "x" * 2049}, "question is 2049 bytes; the limit is 2048"),
        (AskOperatorRequest, {"question": "é" * 1025}, "question is 2050 bytes; the limit is 2048"),
        (
            AskOperatorRequest,
            {"question": "q", "options": [str(i) for i in range(13)]},
            "13 options; at most 12",
        ),
        (AskOperatorRequest, {"question": "q", "options": ["a", " "]}, "an option is empty"),
        (AskOperatorRequest, {"question": "q", "options": ["a" * 81]}, "is longer than 80 bytes"),
        (AskOperatorRequest, {"question": "q", "options": ["a,b"]}, "has a comma"),
        (AskOperatorRequest, {"question": "q", "options": ["a", "a "]}, "'a' is listed twice"),
        (
            AskOperatorRequest,
            {"question": "q", "ttl_seconds": -1},
            "ttl_seconds must be 1 to 604800 (a week), got -1",
        ),
        (AskOperatorRequest, {"question": "q", "ttl_seconds": 0}, "ttl_seconds must be 1 to 604800"),
        (AskOperatorRequest, {"question": "q", "ttl_seconds": 10**12}, "ttl_seconds must be 1 to 604800"),
        (AskRequest, {"to": "coder", "question": ""}, "question is empty"),
        (AnswerRequest, {"id": 0, "answer": "a"}, "a question id is a number from 1"),
        (AnswerRequest, {"id": 1, "answer": " "}, "answer is empty"),
        (AnswerRequest, {"id": 1, "answer": "x" * 1537}, "answer is 1537 bytes; the limit is 1536"),
    ],
)
def test_checks(record: type[Any], fields: dict[str, Any], message: str) -> None:
    with pytest.raises(HiveError, match=message.replace("(", "\\(").replace(")", "\\)")):
        checked(structure(fields, record))


@pytest.mark.parametrize("record", [AskOperatorRequest, AskRequest])
def test_options_as_a_string_is_refused_not_split_into_letters(record: type[Any]) -> None:
    # "options": "abc" was stored as the three options a, b, c (cattrs iterates a string)
    with pytest.raises(HiveError, match="field 'options': expected an array, got string"):
        structure({"to": "coder", "question": "q", "options": "abc"}, record)


def test_the_biggest_question_and_answer_fit_a_4_kib_body() -> None:
    from hivecore.wire.helper import OperatorAnswered, helper_to_body

    body = helper_to_body(OperatorAnswered(id=10**17, question="x" * 2048, answer="y" * 1536))
    assert len(body.encode()) <= 4096
    joined = ", ".join("o" * 80 for _ in range(12))
    assert len(joined.encode()) <= 1536
    assert QuestionAdded.KIND == "question_added"


async def test_asking_is_rate_limited_per_asker(
    conn: sqlite3.Connection, autojump_clock: trio.testing.MockClock
) -> None:
    service, _, _ = make(conn, agents=("coder", "scout", "hm1nd"))
    service.max_per_minute = 3
    for _ in range(3):
        q = await service.ask("coder", "hi?", to="scout")
        await service.answer(q.id, "hi", by="scout")
    with pytest.raises(Refused, match="at most 3 questions a minute per asker; this one was not asked"):
        await service.ask("coder", "hi?", to="scout")
    await service.ask("scout", "others are not limited by coder")
    await trio.sleep(61)
    await service.ask("coder", "a minute later")
