"""Message floods (issue 14, finding 8, the messages part): a quota on each sender's queued (unacked)
messages with an error naming it, and operator-bound messages acked when the operator reads them on
the dashboard, so the vacuum reclaims them (20,000 sends to ``operator`` in 12 s were never acked)."""

from __future__ import annotations

import json
import os

import pytest
import trio

from hivecore.daemon import Daemon
from hivecore.services import broker as br
from hivecore.services.broker import MAX_QUEUED_PER_SENDER
from tests.conftest import AUTH, call
from tests.web_client import http


@pytest.fixture
async def quiet(hive: Daemon) -> Daemon:
    """``coder`` and ``tester`` exist but are stopped: nobody reads their inboxes but the test."""
    for name in ("coder", "tester"):
        await hive.coordinator.spawn(name)
        await hive.coordinator.stop(name)
    with trio.fail_after(10):
        await hive.agent_sockets.wait_for(lambda a: a.bound() == ["coder", "tester"])
    return hive


async def flood(daemon: Daemon, sender: str, to: str, count: int) -> list[dict[str, object]]:
    """``count`` sends pipelined on one connection of ``sender``'s socket; every answer."""
    stream = await trio.open_unix_socket(os.fspath(daemon.config.agent_socket_path(sender)))
    async with stream:
        line = json.dumps({"cmd": "send", "to": to, "body": "spam"}).encode() + b"\n"
        answers: list[dict[str, object]] = []
        buf = b""
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, line * count)
                while len(answers) < count:
                    buf += await stream.receive_some()
                    *done, buf = buf.split(b"\n")
                    answers += [json.loads(d) for d in done]
    return answers


async def rows(daemon: Daemon, recipient: str) -> list[dict[str, object]]:
    return await daemon.store.call(lambda c: br.inbox(c, recipient))


TARGETS = [("to the operator", "operator"), ("to an agent", "tester"), ("to the manager", "manager")]


@pytest.mark.parametrize(("what", "to"), TARGETS, ids=[t[0] for t in TARGETS])
async def test_a_sender_past_its_quota_is_refused_with_the_quota_named(
    quiet: Daemon, what: str, to: str
) -> None:
    answers = await flood(quiet, "coder", to, MAX_QUEUED_PER_SENDER + 3)
    ok = [a for a in answers if a["ok"]]
    refused = [a for a in answers if not a["ok"]]
    assert len(ok) == MAX_QUEUED_PER_SENDER
    assert len(refused) == 3
    for answer in refused:
        error = str(answer["error"])
        assert "queued-message quota" in error
        assert f"the quota is {MAX_QUEUED_PER_SENDER} per sender" in error
    written = [r for r in await rows(quiet, to) if r["sender"] == "coder"]
    assert len(written) == MAX_QUEUED_PER_SENDER  # nothing written past the quota
    # another sender is not affected, nor the daemon's own helper events, nor the operator
    got = await call(quiet.config.agent_socket_path("tester"), {"cmd": "send", "to": "coder", "body": "hi"})
    assert got["ok"], got
    await quiet.broker.post("system", "coder", '{"event": "kick"}')
    await quiet.broker.send("operator", "coder", "from the operator")


async def test_a_broadcast_counts_one_per_recipient(quiet: Daemon) -> None:
    await quiet.coordinator.spawn("scout")
    await quiet.coordinator.stop("scout")
    quiet.broker.max_queued = 3
    got = await call(quiet.config.agent_socket_path("coder"), {"cmd": "send", "to": "*", "body": "all"})
    assert got["ok"], got
    assert len(got["ids"]) == 2  # tester and scout
    got = await call(quiet.config.agent_socket_path("coder"), {"cmd": "send", "to": "*", "body": "again"})
    assert got["ok"] is False
    assert "this send needs 2 more" in got["error"]


async def test_the_operator_reading_the_inbox_acks_it_and_frees_the_quota(quiet: Daemon) -> None:
    answers = await flood(quiet, "coder", "operator", MAX_QUEUED_PER_SENDER + 1)
    assert answers[-1]["ok"] is False
    assert all(r["acked_at"] is None for r in await rows(quiet, "operator"))
    # the operator opens the dashboard
    status, _, body = await http(quiet, "GET", "/api/state", headers=AUTH)
    assert status == 200
    assert len(json.loads(body)["operator_inbox"]) == 50
    inbox = await rows(quiet, "operator")
    assert len(inbox) == MAX_QUEUED_PER_SENDER
    assert all(r["acked_at"] is not None and r["delivered_at"] is not None for r in inbox)
    # the sender may send again, and a message sent after the read stays unread
    got = await call(
        quiet.config.agent_socket_path("coder"), {"cmd": "send", "to": "operator", "body": "new"}
    )
    assert got["ok"], got
    assert [r["acked_at"] for r in await rows(quiet, "operator")][-1] is None
    # the vacuum reclaims what was read (past its age; here: any age)
    assert await quiet.broker.vacuum(max_age=-1) == MAX_QUEUED_PER_SENDER
    assert [r["body"] for r in await rows(quiet, "operator")] == ["new"]


async def test_hivectl_inbox_shows_the_operators_messages_escaped_and_acks_them(quiet: Daemon) -> None:
    from tests.test_hivectl import hivectl

    evil = "line one\n\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2Aline two"
    got = await call(quiet.config.agent_socket_path("coder"), {"cmd": "send", "to": "operator", "body": evil})
    assert got["ok"], got
    assert all(r["acked_at"] is None for r in await rows(quiet, "operator"))
    result = await hivectl("inbox", sock=quiet.config.host_socket_path)
    assert result.returncode == 0, result
    text = result.stdout.decode()
    assert "from coder" in text
    assert "  line one\n" in text  # the body's own lines are kept
    assert "\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2Aline two" in text  # the controls are shown, not obeyed
    assert "\x1b" not in text
    assert "\x07" not in text
    assert all(r["acked_at"] is not None for r in await rows(quiet, "operator"))  # read means acked
