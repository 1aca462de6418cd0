"""The broker over real sockets: send/recv/ack, long-poll wake-ups, leases and redelivery, refusals,
fan-out, identity, per-agent socket lifecycle, the manager's verbs, vacuum, the harness end to end."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from hivecore import agent_users, harness
from hivecore.daemon import Daemon, ensure_manager
from hivecore.harness import Channel, HarnessSettings, run_harness
from hivecore.kick import agent_state_dir, kick_body
from hivecore.names import MANAGER_NAME
from hivecore.runtime.nixos import container_binds
from hivecore.services import broker as br
from hivecore.services.broker import Broker
from hivecore.services.meta_build import MetaBuild
from tests.conftest import Parts, call, make_config, start_hub, start_parts
from tests.procs import exited
from tests.waiting import eventually


@attrs.define
class Hub:
    parts: Parts

    @property
    def daemon(self) -> Daemon:
        return self.parts.daemon

    @property
    def broker(self) -> Broker:
        return self.daemon.broker

    def agent_sock(self, name: str) -> Path:
        return self.daemon.config.agent_socket_path(name)

    @property
    def manager_sock(self) -> Path:
        return self.daemon.config.manager_socket_path

    async def rows(self, recipient: str) -> list[dict[str, Any]]:
        return await self.daemon.store.call(lambda c: br.inbox(c, recipient))

    async def count(self) -> int:
        return int(
            await self.daemon.store.call(lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0])
        )


@pytest.fixture
async def hub(state_dir: Path) -> AsyncIterator[Hub]:
    """Store, views, lane, broker, the agent sockets and the manager socket; agents ``coder`` and
    ``tester`` exist but are stopped (so no harness reads their inboxes but the test)."""
    async with trio.open_nursery() as nursery:
        yield Hub(await start_hub(state_dir, nursery))
        nursery.cancel_scope.cancel()


async def test_send_recv_ack_over_real_sockets(hub: Hub) -> None:
    sent = await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "please review #4"})
    assert sent["ok"]
    assert len(sent["ids"]) == 1
    chan = await Channel.open(hub.agent_sock("coder"))
    try:
        got = await chan.call({"cmd": "recv"})
        assert got["ok"]
        [m] = got["messages"]
        assert (m["sender"], m["recipient"], m["body"], m["redelivered"]) == (
            "manager",
            "coder",
            "please review #4",
            False,
        )
        assert (await chan.call({"cmd": "ack_turn"}))["acked"] == 1
        assert (await chan.call({"cmd": "recv"}))["messages"] == []
        # an agent's message carries its socket's identity, whatever the body claims
        reply = await chan.call({"cmd": "send", "to": "manager", "body": "done", "in_reply_to": m["id"]})
        assert reply["ok"]
        assert (await chan.call({"cmd": "whoami"}))["whoami"] == {
            "name": "coder",
            "inbox": "coder",
            "role": "agent",
        }
    finally:
        await chan.aclose()
    [row] = await hub.rows("coder")
    assert row["delivered_at"] is not None
    assert row["acked_at"] is not None
    [back] = [r for r in await hub.rows("manager") if r["sender"] == "coder"]
    assert (back["sender"], back["in_reply_to"]) == ("coder", m["id"])


async def test_long_poll_wakes_at_once_on_send(hub: Hub) -> None:
    answer: dict[str, Any] = {}

    async def poll() -> None:
        answer.update(await call(hub.agent_sock("tester"), {"cmd": "recv", "wait_seconds": 120}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        with trio.fail_after(10):
            await hub.broker.wait_parked("tester")  # the recv is waiting, not racing the send
        started = time.monotonic()
        await call(hub.agent_sock("coder"), {"cmd": "send", "to": "tester", "body": "wake up"})
    assert time.monotonic() - started < 5  # nowhere near the 120 s wait
    assert [m["body"] for m in answer["messages"]] == ["wake up"]
    assert hub.broker.parked("tester") == 0


async def test_long_poll_times_out_empty(hub: Hub) -> None:
    with trio.fail_after(10):
        answer = await call(hub.agent_sock("tester"), {"cmd": "recv", "wait_seconds": 0.2})
    assert answer == {"version": 1, "ok": True, "messages": []}


async def test_redelivery_after_a_restart_and_never_twice_without_the_flag(hub: Hub) -> None:
    for body in ("one", "two"):
        await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": body})
    first = await Channel.open(hub.agent_sock("coder"))
    got = await first.call({"cmd": "recv", "max": 1})
    assert [(m["body"], m["redelivered"]) for m in got["messages"]] == [("one", False)]
    # the same connection never sees it again; the next one comes fresh
    got = await first.call({"cmd": "recv", "max": 5})
    assert [(m["body"], m["redelivered"]) for m in got["messages"]] == [("two", False)]
    # a second live connection cannot take what the first holds
    assert (await call(hub.agent_sock("coder"), {"cmd": "recv", "max": 5}))["messages"] == []
    await first.aclose()  # the harness "restarts" without acking
    second = await Channel.open(hub.agent_sock("coder"))
    try:
        got = await second.call({"cmd": "recv", "max": 5})
        assert [(m["body"], m["redelivered"]) for m in got["messages"]] == [("one", True), ("two", True)]
        assert (await second.call({"cmd": "recv", "max": 5}))["messages"] == []
        assert (await second.call({"cmd": "ack_turn"}))["acked"] == 2
    finally:
        await second.aclose()
    assert (await call(hub.agent_sock("coder"), {"cmd": "recv", "max": 5}))["messages"] == []
    assert all(r["acked_at"] is not None for r in await hub.rows("coder"))


async def test_ack_on_a_new_connection_acks_what_an_ended_one_received(hub: Hub) -> None:
    await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "x"})
    assert len((await call(hub.agent_sock("coder"), {"cmd": "recv"}))["messages"]) == 1
    assert (await call(hub.agent_sock("coder"), {"cmd": "ack_turn"}))["acked"] == 1
    assert (await call(hub.agent_sock("coder"), {"cmd": "recv"}))["messages"] == []


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"cmd": "send", "to": "tester", "body": "x" * 4097}, "body is 4097 bytes; the limit is 4096"),
        ({"cmd": "send", "to": "nobody", "body": "hi"}, 'no such recipient "nobody"'),
        ({"cmd": "send", "to": "../etc", "body": "hi"}, 'no such recipient "../etc"'),
        ({"cmd": "send", "to": "tester", "body": "  "}, "body is empty"),
        ({"cmd": "send", "to": "tester", "body": "hi", "in_reply_to": 999999}, "in_reply_to 999999"),
        ({"cmd": "send", "to": 7, "body": "hi"}, "field 'to': expected str"),
        ({"cmd": "recv", "max": 0}, "max must be at least 1"),
        ({"cmd": "recv", "wait_seconds": -1}, "wait_seconds must be 0 or more"),
        ({"cmd": "kill", "name": "tester"}, 'unknown cmd "kill"'),
        ({"cmd": "approve", "id": 1}, 'unknown cmd "approve"'),
        ({"cmd": "request_spawn", "name": "evil"}, 'unknown cmd "request_spawn"'),
        ({"cmd": "set_status", "text": "y" * 2000}, "status text is 2000 bytes"),
        ({"to": "tester"}, 'request has no "cmd" field'),
    ],
)
async def test_refusals_change_nothing_and_keep_the_connection(
    hub: Hub, request_: dict[str, Any], error: str
) -> None:
    before = await hub.count()
    chan = await Channel.open(hub.agent_sock("coder"))
    try:
        answer = await chan.call(request_)
        assert answer["ok"] is False, answer
        assert error in answer["error"], answer
        assert set(answer) == {"version", "ok", "error"}
        assert (await chan.call({"cmd": "whoami"}))["ok"]  # one error line, the connection lives on
    finally:
        await chan.aclose()
    assert await hub.count() == before


async def test_garbage_lines_get_one_error_line_each(hub: Hub) -> None:
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(str(hub.agent_sock("coder")))
        async with stream:
            await stream.send_all(b"not json\n[1]\n\xff\n")
            data = b""
            while data.count(b"\n") < 3:
                data += await stream.receive_some(65536)
    errors = [json.loads(line)["error"] for line in data.splitlines()]
    assert errors[0].startswith("request is not valid JSON")
    assert errors[1] == "request must be a JSON object, got array"
    assert errors[2].startswith("request is not valid UTF-8")


async def test_broadcast_fans_out_to_every_other_agent(hub: Hub) -> None:
    answer = await call(hub.agent_sock("coder"), {"cmd": "send", "to": "*", "body": "standup"})
    assert len(answer["ids"]) == 1  # tester only: no manager exists here, never the sender itself
    assert [r["body"] for r in await hub.rows("tester")] == ["standup"]
    assert await hub.rows("coder") == []
    answer = await call(hub.manager_sock, {"cmd": "send", "to": "*", "body": "all hands"})
    assert len(answer["ids"]) == 2
    assert [r["body"] for r in await hub.rows("coder")] == ["all hands"]


async def test_sent_and_delivered_events(hub: Hub) -> None:
    with hub.daemon.bus.subscribe(kinds=["sent", "delivered"]) as sub:
        await call(hub.manager_sock, {"cmd": "send", "to": "tester", "body": "ev"})
        await call(hub.agent_sock("tester"), {"cmd": "recv"})
        with trio.fail_after(5):
            sent, delivered = await sub.receive(), await sub.receive()
    from hivecore.wire.events import event_to_dict

    s, d = event_to_dict(sent), event_to_dict(delivered)
    assert (s["kind"], s["from"], s["to"], s["body"]) == ("sent", "manager", "tester", "ev")
    assert (d["kind"], d["from"], d["to"], d["redelivered"]) == ("delivered", "manager", "tester", False)


async def test_status_and_set_status_never_follow_symlinks(hub: Hub, tmp_path: Path) -> None:
    answer = await call(hub.agent_sock("coder"), {"cmd": "set_status", "text": "reviewing #4"})
    assert answer["ok"]
    state = hub.daemon.config.paths.agent_state("coder")
    assert (state / "hyperhive-status").read_text() == "reviewing #4\n"
    status = (await call(hub.agent_sock("coder"), {"cmd": "status"}))["status"]
    assert status["name"] == "coder"
    assert status["running"] is False
    # a planted symlink is replaced, never written through
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (state / "hyperhive-status").unlink()
    (state / "hyperhive-status").symlink_to(outside)
    assert (await call(hub.agent_sock("coder"), {"cmd": "set_status", "text": "x"}))["ok"]
    assert outside.read_text() == "keep"
    assert not (state / "hyperhive-status").is_symlink()


async def test_agent_socket_follows_the_agent(hub: Hub) -> None:
    sock_dir = hub.daemon.config.agent_socket_dir("tester")
    assert (sock_dir / "mcp.sock").is_socket()
    st = (sock_dir / "mcp.sock").stat()
    who = agent_users.credentials(hub.daemon.config.paths, "tester")
    if who is None:  # a non-root daemon: its own socket, the admin group's bits
        assert oct(st.st_mode & 0o777) == "0o660"
    else:  # a root daemon: the agent's uid alone may connect (issue 14, finding 6)
        assert (oct(st.st_mode & 0o777), st.st_uid) == ("0o600", who.uid)
    await hub.daemon.coordinator.destroy("tester")
    with trio.fail_after(10):
        await hub.daemon.agent_sockets.wait_for(lambda a: "tester" not in a.bound())
    assert not sock_dir.exists()
    await hub.daemon.coordinator.spawn("newbie")
    with trio.fail_after(10):
        await hub.daemon.agent_sockets.wait_for(lambda a: "newbie" in a.bound())
    assert hub.agent_sock("newbie").is_socket()
    assert (await call(hub.agent_sock("newbie"), {"cmd": "whoami"}))["whoami"]["name"] == "newbie"
    # the destroyed agent is no recipient any more
    answer = await call(hub.manager_sock, {"cmd": "send", "to": "tester", "body": "hi"})
    assert 'no such recipient "tester"' in answer["error"]


async def test_manager_verbs(hub: Hub) -> None:
    who = (await call(hub.manager_sock, {"cmd": "whoami"}))["whoami"]
    assert who == {"name": MANAGER_NAME, "inbox": "manager", "role": "manager"}
    for verb in ("kill", "start", "restart", "update"):
        answer = await call(hub.manager_sock, {"cmd": verb, "name": MANAGER_NAME})
        assert answer["ok"] is False
        assert answer["error"] == f"refusing to {verb} the manager"  # the record's check (hivecore.verbs)
    answer = await call(hub.manager_sock, {"cmd": "start", "name": "nobody"})
    assert answer["error"] == 'agent "nobody" is not managed by this hive'
    answer = await call(hub.manager_sock, {"cmd": "request_spawn", "name": "newbie"})
    assert answer["ok"] is True, answer
    assert [(a.agent, a.kind, a.status) for a in await hub.daemon.coordinator.approvals()] == [
        ("newbie", "spawn", "pending")
    ]
    answer = await call(
        hub.manager_sock, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": "HEAD"}
    )
    assert answer["ok"] is False, answer
    assert "hex" in answer["error"], answer
    answer = await call(hub.manager_sock, {"cmd": "request_update_meta_inputs", "inputs": ["nope"]})
    assert answer["ok"] is False, answer
    assert "unknown meta input(s): nope" in answer["error"], answer
    answer = await call(hub.manager_sock, {"cmd": "set_status", "text": "x"})
    assert 'unknown cmd "set_status"' in answer["error"]
    # start goes through the lane and kicks the agent
    assert (await call(hub.manager_sock, {"cmd": "start", "name": "coder"}))["ok"]
    assert hub.daemon.coordinator.views()["coder"].running
    kicks = [r for r in await hub.rows("coder") if r["sender"] == "system"]
    assert kicks
    assert kicks[-1]["body"].startswith("container started")


async def test_get_logs_tails_agent_log_and_refuses_symlinks(hub: Hub, tmp_path: Path) -> None:
    log_file = hub.daemon.config.paths.agent_run("coder") / "agent.log"
    log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    answer = await call(hub.manager_sock, {"cmd": "get_logs", "name": "coder", "lines": 3})
    assert answer["lines"] == ["line 97", "line 98", "line 99"]
    assert answer["log_offset"] == log_file.stat().st_size
    with log_file.open("a") as f:
        f.write("line 100\nline 1")
    since = {"cmd": "get_logs", "name": "coder", "offset": answer["log_offset"]}
    answer = await call(hub.manager_sock, since)
    assert (answer["lines"], answer["log_offset"]) == (["line 100"], log_file.stat().st_size - len("line 1"))
    log_file.unlink()
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    log_file.symlink_to(secret)
    answer = await call(hub.manager_sock, {"cmd": "get_logs", "name": "coder"})
    assert answer["ok"] is False
    assert "cannot read" in answer["error"]


async def test_a_restarted_harness_marks_redelivered_messages(hub: Hub) -> None:
    await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "half done"})
    chan = await Channel.open(hub.agent_sock("coder"))
    assert len((await chan.call({"cmd": "recv"}))["messages"]) == 1
    await chan.aclose()  # died mid-turn
    state = hub.daemon.config.paths.agent_state("coder")
    settings = HarnessSettings(
        backend="inbox",
        label="coder",
        state_dir=state,
        heartbeat_seconds=3600,
        hive_env={"HIVE_OPERATOR_PRONOUNS": "they/them"},
        socket=hub.agent_sock("coder"),
        recv_wait=5,
    )
    inbox = state / harness.INBOX_FILE
    async with trio.open_nursery() as nursery:
        await nursery.start(run_harness, settings)
        await eventually(lambda: inbox.exists() and inbox.read_text().count("\n") >= 1)
        await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "fresh"})
        await eventually(lambda: inbox.read_text().count("\n") >= 2)
        nursery.cancel_scope.cancel()
    first, second = (json.loads(line) for line in inbox.read_text().splitlines())
    assert (first["body"], first.get("possibly_handled")) == ("half done", True)
    assert (second["body"], second.get("possibly_handled")) == ("fresh", None)
    prompt = (state / harness.PROMPT_FILE).read_text()
    assert "You are coder" in prompt
    assert "they/them" in prompt


async def test_vacuum_deletes_only_old_acked_rows(state_dir: Path) -> None:
    config = make_config(state_dir)
    now = [1_000_000_000.0]
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        store = parts.store
        broker = Broker(store, parts.bus, lambda: ["coder"], clock=lambda: now[0])
        for name in ("coder", "tester"):  # as their spawns would
            await broker.begin_incarnation(name)
        lease = broker.open_lease()

        async def acked(body: str, recipient: str = "coder") -> int:
            message_id = await broker.post("system", recipient, body)
            assert [m.id for m in await broker.recv(recipient, lease=lease)] == [message_id]
            await broker.ack_turn(recipient, lease=lease)
            return message_id

        old = await acked("old and acked")
        parent = await acked("old, acked, replied to")
        [reply] = await broker.send("coder", "manager", "reply", in_reply_to=parent)
        in_flight = await broker.post("system", "operator", "old, delivered, never acked")
        await broker.recv("operator", lease=lease)
        queued = await broker.post("system", "coder", "old, never delivered")
        await store.call(
            lambda c: c.execute(
                "INSERT INTO approvals(agent, kind, requested_at) "
                "VALUES ('coder', 'spawn', '2000-01-01T00:00:00Z')"
            )
        )
        now[0] += br.VACUUM_AGE + 10
        recent = await acked("recent and acked", "tester")
        assert await broker.vacuum() == 1
        rows = await store.call(lambda c: c.execute("SELECT id FROM messages").fetchall())
        assert {r["id"] for r in rows} == {parent, reply, in_flight, queued, recent}
        assert old not in {r["id"] for r in rows}
        assert len(await store.call(lambda c: c.execute("SELECT * FROM approvals").fetchall())) == 1
        nursery.cancel_scope.cancel()


class MemoryStore:
    """A stand-in for the store actor with no thread (so virtual time stays exact): ``call`` runs
    ``fn`` at once on an in-memory database with the real schema."""

    def __init__(self) -> None:
        from hivecore import store as st

        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        st.migrate(self.conn)

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(self.conn)


async def test_vacuum_runs_at_start_and_hourly(autojump_clock: trio.testing.MockClock) -> None:
    from actors.event_bus import EventBus

    starts: list[float] = []
    third = trio.Event()

    class Recording(Broker):
        async def vacuum(self, max_age: float = br.VACUUM_AGE) -> int:
            starts.append(trio.current_time())
            deleted = await super().vacuum(max_age)
            if len(starts) == 3:
                third.set()
            return deleted

    broker = Recording(MemoryStore(), EventBus(), lambda: [])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        begin = trio.current_time()
        await nursery.start(broker.run)
        await third.wait()
        nursery.cancel_scope.cancel()
    assert [t - begin for t in starts] == [0.0, 3600.0, 7200.0]  # at start, then hourly
    assert broker.statistics().sweeps == 3


async def test_migration_3_upgrades_a_version_2_database(tmp_path: Path) -> None:
    from hivecore import store as st

    db = tmp_path / "hive.sqlite"
    raw = sqlite3.connect(db, isolation_level=None)
    for statement in st._statements(st.MIGRATIONS[0]) + st._statements(st.MIGRATIONS[1]):
        raw.execute(statement)
    raw.execute("PRAGMA user_version=2")
    raw.execute(
        "INSERT INTO messages(sender, recipient, body, sent_at, delivered_at) VALUES ('a','b','c',1,2)"
    )
    raw.close()
    conn = st.connect(db)
    row = conn.execute("SELECT lease, redelivered FROM messages").fetchone()
    assert (row["lease"], row["redelivered"]) == (None, 0)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION  # 3 and every later one
    conn.close()


# --- through a real daemon -------------------------------------------------------------------------


async def test_kick_reaches_a_real_harness_inbox_log(hive: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # the record-only backend acks what it records (the Claude backend waits for a login first)
    real = MetaBuild.agent_spec
    monkeypatch.setattr(
        MetaBuild,
        "agent_spec",
        lambda self, name: attrs.evolve(
            real(self, name), env={**real(self, name).env, "HIVE_AGENT_BACKEND": "inbox"}
        ),
    )
    await hive.coordinator.spawn("coder")
    inbox = hive.config.paths.agent_state("coder") / harness.INBOX_FILE
    await hive.coordinator.restart("coder")
    await eventually(lambda: (hive.config.paths.agent_state("coder") / "env.json").exists())
    await eventually(lambda: inbox.exists() and "container restarted" in inbox.read_text(), timeout=30)
    [line] = [json.loads(ln) for ln in inbox.read_text().splitlines() if "container restarted" in ln]
    assert line["sender"] == "system"
    assert line["recipient"] == "coder"
    env = json.loads((hive.config.paths.agent_state("coder") / "env.json").read_text())
    assert env["HIVE_SOCKET"] == str(hive.config.agent_socket_path("coder"))
    # acked by the harness: the row is done
    await eventually(lambda: _acked(hive, "coder"), timeout=10)


async def test_every_path_and_port_an_agent_is_shown_is_true_under_the_process_runtime(hive: Daemon) -> None:
    """Issue 16: kicks and prompts named ``/agents/<n>/state`` (a nixos container's path, absent here)
    and every row showed a web-UI port nothing listens on."""
    await hive.coordinator.spawn("coder")
    state = hive.config.paths.agent_state("coder")
    inbox = state / harness.INBOX_FILE
    await hive.coordinator.restart("coder")
    await eventually(lambda: inbox.exists() and "container restarted" in inbox.read_text(), timeout=30)
    [kick] = [json.loads(ln)["body"] for ln in inbox.read_text().splitlines() if "container restarted" in ln]
    await eventually((state / harness.PROMPT_FILE).exists)
    prompt = (state / harness.PROMPT_FILE).read_text()
    for text in (kick, prompt):
        assert str(state) in text
        assert state.is_dir()
        assert "/agents/" not in text.replace(str(state), ""), text  # no path of another runtime
    assert (
        kick_body("coder", "x", agent_state_dir("nixos", hive.config.paths, "coder")).count(
            "/agents/coder/state"
        )
        == 1
    )
    nixos_state = [b.target for b in container_binds("coder", hive.config.paths, hive.config.runtime_path)]
    assert agent_state_dir("nixos", hive.config.paths, "coder") in nixos_state  # true there too
    # no web-UI port: nothing serves one (the view, and so the dashboard's row, shows none)
    assert hive.coordinator.views()["coder"].port == 0


def _acked(hive: Daemon, recipient: str) -> bool:
    with sqlite3.connect(hive.config.paths.db) as db:
        rows = db.execute("SELECT acked_at FROM messages WHERE recipient=?", (recipient,)).fetchall()
    return bool(rows) and all(r[0] is not None for r in rows)


async def test_ensure_manager_spawns_then_starts_the_manager(state_dir: Path) -> None:
    from hivecore.daemon import main

    config = make_config(state_dir, ensure_manager=True)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(main, config)
        await eventually(
            lambda: (row := daemon.coordinator.views().get(MANAGER_NAME)) is not None and row.running
        )
        env_file = config.paths.agent_state(MANAGER_NAME) / "env.json"
        await eventually(env_file.exists)
        assert json.loads(env_file.read_text())["HIVE_SOCKET"] == str(config.manager_socket_path)
        assert await ensure_manager(daemon) == "running"
        # the operator's stop stands: ensure_manager (a restarted daemon) leaves it stopped
        await daemon.coordinator.stop(MANAGER_NAME)
        assert await ensure_manager(daemon) == "stopped on purpose"
        assert not (await daemon.runtime.list([MANAGER_NAME]))[MANAGER_NAME].running
        # a manager that died on its own (not stopped on purpose) is started again
        await daemon.coordinator.start(MANAGER_NAME)
        pid = (await daemon.runtime.list([MANAGER_NAME]))[MANAGER_NAME].pid
        assert pid is not None
        await exited(pid, kill=signal.SIGKILL, group=True)

        async def dead() -> bool:  # the whole group, not only the shim
            return not (await daemon.runtime.list([MANAGER_NAME]))[MANAGER_NAME].running

        await eventually(dead)
        assert await ensure_manager(daemon) == "started"
        assert daemon.coordinator.views()[MANAGER_NAME].running
        # the manager's harness reads the manager inbox: a helper event lands in its inbox.log
        inbox = config.paths.agent_state(MANAGER_NAME) / harness.INBOX_FILE
        await eventually(lambda: inbox.exists() and inbox.read_text().strip() != "", timeout=30)
        nursery.cancel_scope.cancel()
    assert (config.paths.agent_state(MANAGER_NAME) / harness.PROMPT_FILE).exists()


async def test_turn_command_gets_the_messages_on_stdin(hub: Hub) -> None:
    state = hub.daemon.config.paths.agent_state("coder")
    turns = state / "turns.log"
    settings = HarnessSettings(
        backend="inbox",
        label="coder",
        state_dir=state,
        heartbeat_seconds=3600,
        socket=hub.agent_sock("coder"),
        turn_command=f"cat >> {turns}",
        recv_wait=5,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_harness, settings)
        await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "run the tests"})
        await eventually(lambda: turns.exists() and "run the tests" in turns.read_text())
        await eventually(lambda: hub.broker.statistics().acked >= 1)
        nursery.cancel_scope.cancel()
    [turn] = [json.loads(line) for line in turns.read_text().splitlines()]
    assert (turn["sender"], turn["body"]) == ("manager", "run the tests")


async def test_harness_reconnects_after_a_daemon_restart(state_dir: Path) -> None:
    from hivecore.daemon import main

    config = make_config(state_dir)
    inbox = config.paths.agent_state("coder") / harness.INBOX_FILE
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(main, config)
        await daemon.coordinator.spawn("coder")
        await call(config.manager_socket_path, {"cmd": "send", "to": "coder", "body": "hello"})
        await eventually(lambda: inbox.exists() and "hello" in inbox.read_text(), timeout=30)
        nursery.cancel_scope.cancel()
    assert not config.agent_socket_path("coder").exists()  # the old daemon's socket is gone
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(main, config)
        with trio.fail_after(10):
            await daemon.agent_sockets.wait_for(lambda a: "coder" in a.bound())
        await call(config.manager_socket_path, {"cmd": "send", "to": "coder", "body": "are you back?"})
        await eventually(lambda: "are you back?" in inbox.read_text(), timeout=30)
        nursery.cancel_scope.cancel()


def test_runtime_dir_flag_places_every_socket(tmp_path: Path) -> None:
    from hivecore.cli.daemon import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "serve",
            "--state-dir",
            str(tmp_path / "s"),
            "--runtime-dir",
            str(tmp_path / "r"),
            "--no-ensure-manager",
        ]
    )
    config = config_from_args(args)
    assert config.ensure_manager is False
    assert config.host_socket_path == tmp_path / "r" / "host.sock"
    assert config.manager_socket_path == tmp_path / "r" / "manager" / "mcp.sock"
    assert config.agent_socket_path("coder") == tmp_path / "r" / "agents" / "coder" / "mcp.sock"
    assert config.agent_socket_path(MANAGER_NAME) == config.manager_socket_path
    default = config_from_args(build_parser().parse_args(["serve", "--state-dir", str(tmp_path / "s")]))
    assert default.ensure_manager is True
    assert default.host_socket_path == tmp_path / "s" / "run" / "host.sock"


async def test_a_recv_answer_that_cannot_be_written_puts_the_messages_back(hub: Hub) -> None:
    stream = await trio.open_unix_socket(str(hub.agent_sock("tester")))
    await stream.send_all(b'{"cmd":"recv","wait_seconds":60}\n')
    with trio.fail_after(10):
        await hub.broker.wait_parked("tester")
    await stream.aclose()  # hung up while waiting
    await call(hub.manager_sock, {"cmd": "send", "to": "tester", "body": "lost?"})

    async def released() -> bool:
        [row] = await hub.rows("tester")
        return hub.broker.statistics().delivered == 1 and row["delivered_at"] is None

    await eventually(released)  # the server's handler has no event for us
    got = await call(hub.agent_sock("tester"), {"cmd": "recv"})
    assert [(m["body"], m["redelivered"]) for m in got["messages"]] == [("lost?", False)]


async def test_concurrent_senders_each_message_delivered_once_in_order(hub: Hub) -> None:
    per_sender = 40
    received: list[dict[str, Any]] = []

    async def sender(path: Path, tag: str) -> None:
        chan = await Channel.open(path)
        try:
            for i in range(per_sender):
                assert (await chan.call({"cmd": "send", "to": "tester", "body": f"{tag} {i}"}))["ok"]
        finally:
            await chan.aclose()

    async def reader() -> None:
        chan = await Channel.open(hub.agent_sock("tester"))
        try:
            while len(received) < 2 * per_sender:
                got = await chan.call({"cmd": "recv", "wait_seconds": 10, "max": 7})
                received.extend(got["messages"])
                await chan.call({"cmd": "ack_turn"})
        finally:
            await chan.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(sender, hub.agent_sock("coder"), "coder")
            nursery.start_soon(sender, hub.manager_sock, "manager")
    assert len({m["id"] for m in received}) == len(received) == 2 * per_sender
    assert not any(m["redelivered"] for m in received)
    for tag in ("coder", "manager"):
        mine = [m["body"] for m in received if m["sender"] == tag]
        assert mine == [f"{tag} {i}" for i in range(per_sender)]
    assert all(r["acked_at"] is not None for r in await hub.rows("tester"))


async def test_internal_posts_may_exceed_the_socket_cap_but_not_64k(hub: Hub) -> None:
    long_note = "n" * 10_000
    message_id = await hub.broker.post("system", "manager", long_note)
    assert [r["id"] for r in await hub.rows("manager") if r["body"] == long_note] == [message_id]
    with pytest.raises(br.BadMessage, match="the limit is 65536"):
        await hub.broker.post("system", "manager", "n" * 70_000)


async def test_a_failed_bind_is_retried_on_the_next_row_change(hub: Hub) -> None:
    path = hub.agent_sock("late")
    path.parent.mkdir(parents=True)
    path.write_text("not a socket")  # binding refuses to replace a regular file
    await hub.daemon.coordinator.spawn("late")
    with trio.fail_after(10):
        await hub.daemon.agent_sockets.wait_for(lambda a: a.statistics().bind_failures >= 1)
    assert "late" not in hub.daemon.agent_sockets.bound()
    path.unlink()
    await hub.daemon.coordinator.set_paused("late", True)  # any row change
    with trio.fail_after(10):
        await hub.daemon.agent_sockets.wait_for(lambda a: "late" in a.bound())
    assert (await call(path, {"cmd": "whoami"}))["whoami"]["name"] == "late"


async def test_in_reply_to_names_only_a_message_the_caller_sent_or_received(hub: Hub) -> None:
    """Issue 16 item 9: no existence oracle over other inboxes, no pinning another inbox's row."""
    [to_tester] = (await call(hub.manager_sock, {"cmd": "send", "to": "tester", "body": "for tester"}))["ids"]
    [to_coder] = (await call(hub.manager_sock, {"cmd": "send", "to": "coder", "body": "for coder"}))["ids"]
    refused = "no message you sent or received has that id"
    for message_id in (to_tester, 999999):  # another inbox's row answers like a missing one
        got = await call(
            hub.agent_sock("coder"), {"cmd": "send", "to": "manager", "body": "re", "in_reply_to": message_id}
        )
        assert got == {"version": 1, "ok": False, "error": f"in_reply_to {message_id}: {refused}"}
    # queued for coder but not handed out yet: not received
    got = await call(
        hub.agent_sock("coder"), {"cmd": "send", "to": "manager", "body": "re", "in_reply_to": to_coder}
    )
    assert got["ok"] is False, got
    assert refused in got["error"], got
    got = await call(
        hub.agent_sock("coder"), {"cmd": "send", "to": "manager", "body": "re", "in_reply_to": -1}
    )
    assert got["error"] == "in_reply_to is a message id (a positive number), got -1", got
    assert [r["id"] for r in await hub.rows("manager") if r["sender"] == "coder"] == []
    # once received, coder may answer it; the manager may refer to what it sent
    assert [m["id"] for m in (await call(hub.agent_sock("coder"), {"cmd": "recv"}))["messages"]] == [to_coder]
    ok = await call(
        hub.agent_sock("coder"), {"cmd": "send", "to": "manager", "body": "re", "in_reply_to": to_coder}
    )
    assert ok["ok"] is True, ok
    again = await call(
        hub.manager_sock, {"cmd": "send", "to": "tester", "body": "ping", "in_reply_to": to_tester}
    )
    assert again["ok"] is True, again
