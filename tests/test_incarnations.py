"""Issue 16 item 2: messages, leases and approvals belong to one incarnation of an agent.

``send`` to ``coder``, ``destroy coder --purge``, ``spawn coder``: the new ``coder`` never reads the
old one's mail, and every sender is told its messages were not delivered. A destroy without purge
keeps the incarnation: a revive reads what was queued. A pending approval of a destroyed agent fails
with ``approval_resolved`` to the manager and on the dashboard's stream, and approving it says why.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.errors import Refused
from hivecore.harness import Channel
from hivecore.services import broker as br
from hivecore.wire.helper import ApprovalResolvedHelper, MessagesUndelivered, helper_from_body
from tests.conftest import AUTH, Parts, call, make_config, start_hub, start_parts
from tests.waiting import eventually
from tests.web_client import event_stream


@pytest.fixture
async def hub(state_dir: Path) -> AsyncIterator[Parts]:
    """The daemon's parts with the broker and sockets; ``coder`` and ``tester`` exist, stopped (no
    harness reads their inboxes but the test)."""
    async with trio.open_nursery() as nursery:
        yield await start_hub(state_dir, nursery)
        nursery.cancel_scope.cancel()


async def _socket(d: Daemon, name: str) -> Path:
    await eventually(lambda: d.agent_sockets.socket(name) is not None, what=f"{name}'s socket bound")
    return d.config.agent_socket_path(name)


async def _bodies(d: Daemon, name: str) -> list[str]:
    """Everything ``name``'s socket hands out now (acked)."""
    got = await call(await _socket(d, name), {"cmd": "recv", "max": 32})
    await call(await _socket(d, name), {"cmd": "ack_turn"})
    return [m["body"] for m in got["messages"]]


def _helpers(rows: list[dict[str, Any]], kind: type) -> list[Any]:
    out = []
    for r in rows:
        if r["sender"] == "system" and r["body"].startswith("{"):
            event = helper_from_body(r["body"])
            if isinstance(event, kind):
                out.append(event)
    return out


async def test_a_purged_agent_s_mail_never_reaches_a_new_agent_of_its_name(hub: Parts) -> None:
    d = hub.daemon
    coder = await _socket(d, "coder")
    [from_manager] = (
        await call(
            d.config.manager_socket_path, {"cmd": "send", "to": "coder", "body": "for the old coder only"}
        )
    )["ids"]
    [from_tester] = (
        await call(await _socket(d, "tester"), {"cmd": "send", "to": "coder", "body": "old: tester"})
    )["ids"]
    [from_operator] = await d.broker.send("operator", "coder", "old: operator")
    # one in flight: handed out on a connection that ends without an ack
    chan = await Channel.open(coder)
    try:
        got = await chan.call({"cmd": "recv"})
    finally:
        await chan.aclose()
    assert [m["id"] for m in got["messages"]] == [from_manager]

    await d.coordinator.destroy("coder", purge=True)
    await d.coordinator.spawn("coder")
    await d.coordinator.stop("coder")
    assert not any(b.startswith(("for the old", "old:")) for b in await _bodies(d, "coder"))
    [fresh] = await d.broker.send("operator", "coder", "for the new coder")
    assert "for the new coder" in await _bodies(d, "coder")

    # every sender was told, once; the daemon's own kicks were not reported
    manager = _helpers(await d.store.call(lambda c: br.inbox(c, "manager")), MessagesUndelivered)
    assert [(e.agent, e.ids, e.delivered) for e in manager] == [("coder", [from_manager], [from_manager])]
    assert (
        manager[0].note
        == "coder will never read 1 message you sent: coder was destroyed and its state purged"
    )
    tester = _helpers(await d.store.call(lambda c: br.inbox(c, "tester")), MessagesUndelivered)
    assert [(e.agent, e.ids, e.delivered) for e in tester] == [("coder", [from_tester], [])]
    operator = [r["body"] for r in await d.store.call(lambda c: br.inbox(c, "operator"))]
    assert operator == [
        "not delivered: coder will never read 1 message you sent: coder was destroyed and its state purged "
        f"(message ids {from_operator})"
    ]
    rows = {r["id"]: r for r in await d.store.call(lambda c: br.inbox(c, "coder"))}
    assert all(rows[i]["undelivered_at"] is not None for i in (from_manager, from_tester, from_operator))
    assert rows[fresh]["undelivered_at"] is None
    assert rows[fresh]["incarnation"] != rows[from_manager]["incarnation"]
    # the quota no longer counts what was never delivered
    assert (await call(d.config.manager_socket_path, {"cmd": "send", "to": "coder", "body": "x"}))["ok"]


async def test_a_destroy_keeps_the_incarnation_and_a_revive_reads_its_mail(hub: Parts) -> None:
    d = hub.daemon
    await d.broker.send("operator", "coder", "kept for the revived coder")
    await d.coordinator.destroy("coder")
    await d.coordinator.spawn("coder")  # the tombstone is revived
    await d.coordinator.stop("coder")
    assert "kept for the revived coder" in await _bodies(d, "coder")
    assert [r["body"] for r in await d.store.call(lambda c: br.inbox(c, "operator"))] == []


async def test_a_purge_of_kept_state_ends_the_incarnation(hub: Parts) -> None:
    d = hub.daemon
    [queued] = await d.broker.send("operator", "coder", "queued before the destroy")
    await d.coordinator.destroy("coder")
    await d.coordinator.purge_tombstone("coder")
    await d.coordinator.spawn("coder")
    await d.coordinator.stop("coder")
    assert "queued before the destroy" not in await _bodies(d, "coder")
    [notice] = [r["body"] for r in await d.store.call(lambda c: br.inbox(c, "operator"))]
    assert notice.endswith(f"the kept state of coder was purged (message ids {queued})")


async def test_a_restart_ends_an_incarnation_whose_agent_is_gone(state_dir: Path) -> None:
    """A name purged while the daemon was down (or a crash between a purge's steps): the next start
    ends its incarnation and tells the senders."""
    config = make_config(state_dir, crash_watch_interval=3600.0)
    config.paths.create_layout()
    conn = st.connect(config.paths.db)
    try:
        live = st.begin_incarnation(conn, "ghost", 1)
        conn.execute(
            "INSERT INTO messages(sender, recipient, body, sent_at, incarnation) "
            "VALUES ('manager', 'ghost', 'hi', 1, ?)",
            (live,),
        )
    finally:
        conn.close()
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        await nursery.start(parts.daemon.broker.run)
        d = parts.daemon
        assert await d.store.call(st.live_incarnations) == []
        [event] = _helpers(await d.store.call(lambda c: br.inbox(c, "manager")), MessagesUndelivered)
        assert (event.agent, event.note) == (
            "ghost",
            "ghost will never read 1 message you sent: ghost was purged",
        )
        nursery.cancel_scope.cancel()


def test_the_migration_binds_old_rows_and_keeps_the_reference_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for target in range(1, 6):
        for statement in st._statements(st.MIGRATIONS[target - 1]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=5")
    conn.execute("INSERT INTO messages(sender, recipient, body, sent_at) VALUES ('manager','coder','a',1)")
    conn.execute("INSERT INTO messages(sender, recipient, body, sent_at) VALUES ('coder','manager','b',1)")
    conn.close()
    conn = st.connect(db)
    try:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
        assert columns[:8] == [
            "id",
            "sender",
            "recipient",
            "body",
            "sent_at",
            "delivered_at",
            "acked_at",
            "in_reply_to",
        ]
        rows = {r["recipient"]: r["incarnation"] for r in conn.execute("SELECT * FROM messages")}
        assert rows == {"coder": st.live_incarnation(conn, "coder"), "manager": None}
        assert rows["coder"] is not None
    finally:
        conn.close()


async def test_a_destroy_fails_a_pending_approval_with_approval_resolved_everywhere(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    approval = await hive.store.call(
        lambda c: st.insert_approval(c, "coder", "apply_commit", "abc1234", "a change", requester="manager")
    )
    with trio.fail_after(30):
        async with event_stream(hive, "/api/dashboard/stream?kinds=approval_resolved", AUTH) as sse:
            await sse.wait_connected()
            await hive.coordinator.destroy("coder")
            live = await sse.next_data()
    note = "coder was destroyed while this approval was pending; nothing was deployed"
    assert (live["kind"], live["id"], live["status"], live["note"]) == (
        "approval_resolved",
        approval.id,
        "failed",
        note,
    )
    rows = await hive.store.call(lambda c: br.inbox(c, "manager"))
    [event] = _helpers(rows, ApprovalResolvedHelper)
    assert (event.id, event.status, event.note, event.description) == (
        approval.id,
        "failed",
        note,
        "a change",
    )
    with pytest.raises(Refused) as refused:
        await hive.coordinator.approve(approval.id)
    assert str(refused.value) == f"approval {approval.id} is already failed: {note}"
    assert json.loads(rows[-1]["body"])["event"] in ("destroyed", "approval_resolved")
