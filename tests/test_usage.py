"""Issue 17 item 6 on a real daemon: ``report_turn`` over the agent and manager sockets (bounded,
rate-limited, capped), usage on the agent row (host.sock, ``/api/state``, ``hivectl usage``), and
the stuck signal (a turn past its limit; mail left unread while the agent does not poll)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import store as st
from hivecore import usage
from hivecore.daemon import Daemon
from hivecore.runtime.base import AgentSpec
from hivecore.verbs import spec
from tests.conftest import AUTH, make_config, write_test_token
from tests.test_hivectl import err, hivectl, out
from tests.waiting import eventually
from tests.web_client import http

TURN = {
    "duration_seconds": 12.5,
    "input_tokens": 1200,
    "output_tokens": 300,
    "cache_read_tokens": 4000,
    "cache_creation_tokens": 500,
    "cost_usd": 0.0123,
    "tool_calls": 3,
    "status": "ok",
}


class Client:
    """A blocking JSON-lines client of one socket (what a harness does), used from a thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.buf = b""

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed the connection"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.sock.close()


async def call(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    return await trio.to_thread.run_sync(client.call, request)


@pytest.fixture
async def hive_fast(state_dir: Path) -> AsyncIterator[Daemon]:
    """A daemon whose stuck limits are seconds, ticking every 0.2 s."""
    from hivecore.daemon import main
    from web.app import daemon_app

    write_test_token(state_dir)
    config = make_config(state_dir, turn_limit=1.5, stuck_after=1.0, crash_watch_interval=0.2)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


async def quiet_agent(hive: Daemon, name: str) -> Client:
    """Spawn ``name`` running a sleeper instead of the harness (so nothing else reads its inbox);
    a client on its socket plays the harness."""
    assert (await hivectl("spawn", name, sock=hive.config.host_socket_path)).returncode == 0
    runtime: Any = hive.runtime
    await runtime.stop(name)
    await runtime.update(AgentSpec(name=name, command=("sleep", "600"), env={"PATH": "/usr/bin:/bin"}))
    await runtime.start(name)
    await hive.views.rescan([name])
    assert hive.views.rows()[name].running
    return await trio.to_thread.run_sync(Client, hive.config.agent_socket_path(name))


def test_report_turn_is_harness_plumbing_not_a_tool() -> None:
    row = spec.BY_KEY["report_turn"]
    assert row.surfaces == {"agent_sock", "manager_sock"}
    assert row.harness_only


async def test_turns_are_recorded_and_shown_on_every_surface(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    client = await quiet_agent(hive, "a")
    manager = await trio.to_thread.run_sync(Client, hive.config.manager_socket_path)
    try:
        assert await call(client, {"cmd": "report_turn", **TURN}) == {"version": 1, "ok": True}
        assert (await call(client, {"cmd": "report_turn", "duration_seconds": 1, "status": "timeout"}))["ok"]
        assert (await call(manager, {"cmd": "report_turn", "duration_seconds": 2, "cost_usd": 1}))["ok"]
    finally:
        client.close()
        manager.close()
    await eventually(lambda: hive.views.rows()["a"].turns_today == 2, what="row updated after reports")
    row = hive.views.rows()["a"]
    assert (row.tokens_today, row.cost_today_usd) == (6000, 0.0123)
    assert row.last_turn_at is not None
    assert row.stuck is None

    answer = json.loads(out(await hivectl("--json", "status", sock=sock)))
    [status] = [r for r in answer["agent_statuses"] if r["name"] == "a"]
    assert {k: status[k] for k in ("turns_today", "tokens_today", "cost_today_usd")} == {
        "turns_today": 2,
        "tokens_today": 6000,
        "cost_today_usd": 0.0123,
    }
    table = out(await hivectl("status", "a", sock=sock)).splitlines()
    assert table[0].split()[-5:] == ["LAST", "TURN", "TURNS", "TOKENS", "COST"]
    assert table[1].split()[-4:] == ["ago", "2", "6.0k", "$0.01"]  # "0s ago" or "1s ago"

    result = await hivectl("usage", sock=sock)
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert lines[0] == "today (UTC):"
    assert lines[1].split()[:4] == ["NAME", "TURNS", "TOKENS", "COST"]
    by_name = {line.split()[0]: line.split() for line in lines[2:]}
    assert by_name["a"][:7] == ["a", "2", "6.0k", "$0.01", "2", "6.0k", "$0.01"]
    assert by_name["a"][-1] == "timeout"
    one = json.loads(out(await hivectl("--json", "usage", "a", sock=sock)))
    assert len(one["usage"]) == 1
    assert one["usage"][0]["turns_total"] == 2
    missing = await hivectl("usage", "nobody", sock=sock)
    assert missing.returncode == 1
    assert 'agent "nobody" is not managed by this hive' in err(missing)

    status_code, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    assert status_code == 200
    [container] = [c for c in json.loads(body)["containers"] if c["name"] == "a"]
    assert (container["turns_today"], container["tokens_today"]) == (2, 6000)
    summaries = await hive.store.call(lambda c: usage.summaries(c, ["hm1nd"], 0))
    assert summaries["hm1nd"].cost_total_usd == 1.0  # the manager's own report, under its name


BAD_REPORTS: list[tuple[dict[str, Any], str]] = [
    ({"duration_seconds": -1}, "duration_seconds must be a number from 0 to 604800"),
    ({"duration_seconds": float("nan")}, "field 'duration_seconds': nan is not a finite number"),
    ({"duration_seconds": 1e300}, "duration_seconds must be a number from 0 to 604800"),
    ({"duration_seconds": 1, "input_tokens": -5}, "input_tokens must be a whole number from 0 to"),
    ({"duration_seconds": 1, "output_tokens": 10**11}, "output_tokens must be a whole number"),
    ({"duration_seconds": 1, "output_tokens": 2**70}, "output_tokens"),
    ({"duration_seconds": 1, "cost_usd": float("inf")}, "field 'cost_usd': inf is not a finite number"),
    ({"duration_seconds": 1, "cost_usd": 20000}, "cost_usd must be a number from 0 to 10000"),
    ({"duration_seconds": 1, "tool_calls": 10**9}, "tool_calls must be a whole number"),
    ({"duration_seconds": 1, "status": "ok; DROP TABLE"}, "status is a word of a-z"),
    ({"duration_seconds": 1, "status": "x" * 40}, "status is a word of a-z"),
    ({"duration_seconds": "long"}, 'bad "report_turn" request'),
    ({"duration_seconds": 1, "input_tokens": 1.5}, 'bad "report_turn" request'),
    ({}, 'bad "report_turn" request'),
]


async def test_hostile_reports_get_one_clear_answer_and_record_nothing(hive: Daemon) -> None:
    client = await quiet_agent(hive, "a")
    try:
        for fields, expected in BAD_REPORTS:
            answer = await call(client, {"cmd": "report_turn", **fields})
            assert answer["ok"] is False, fields
            assert expected in answer["error"], (fields, answer)
        assert (await call(client, {"cmd": "whoami"}))["ok"]  # the connection still serves
    finally:
        client.close()
    assert await hive.store.call(lambda c: usage.summaries(c, None, 0)) == {}


async def test_reports_are_rate_limited_per_agent(hive: Daemon) -> None:
    client = await quiet_agent(hive, "a")
    try:
        for _ in range(usage.MAX_REPORTS_PER_MINUTE):
            assert (await call(client, {"cmd": "report_turn", "duration_seconds": 1}))["ok"]
        answer = await call(client, {"cmd": "report_turn", "duration_seconds": 1})
    finally:
        client.close()
    assert answer == {
        "version": 1,
        "ok": False,
        "error": "report_turn: at most 120 turns a minute per agent; this one was not recorded",
    }
    found = await hive.store.call(lambda c: usage.summaries(c, ["a"], 0))
    assert found["a"].turns_total == usage.MAX_REPORTS_PER_MINUTE


def test_rows_are_capped_per_agent_and_totals_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "MAX_TURNS_KEPT", 3)
    conn = st.connect(tmp_path / "db.sqlite")
    try:
        turn = usage.Turn(duration_seconds=1, input_tokens=10, cost_usd=0.5)
        for i in range(5):
            usage.record(conn, "a", turn, 1000.0 + i)
        usage.record(conn, "b", turn, 2000.0)
        counts = dict(conn.execute("SELECT agent, count(*) FROM turns GROUP BY agent").fetchall())
        assert counts == {"a": 3, "b": 1}  # a's oldest two went; b's row is untouched
        found = usage.summaries(conn, None, 1003)
        assert (found["a"].turns_total, found["a"].tokens_total, found["a"].cost_total_usd) == (5, 50, 2.5)
        assert (found["a"].turns_today, found["a"].last_turn_at) == (2, 1004)
        usage.forget(conn, "a")
        assert "a" not in usage.summaries(conn, None, 0)
    finally:
        conn.close()


def test_stuck_rule() -> None:
    base = {"running": True, "paused": False, "needs_login": False, "turn_limit": 60.0, "stuck_after": 30.0}
    live = usage.Liveness(now=1000.0, turn_since=900.0)
    assert usage.stuck_reason(live, **base) == "its turn has run 1 min, past the 1 min limit"  # type: ignore[arg-type]
    assert usage.stuck_reason(usage.Liveness(now=1000.0, turn_since=950.0), **base) is None  # type: ignore[arg-type]
    mail = usage.Liveness(now=1000.0, idle_since=900.0, oldest_waiting=800)
    assert usage.stuck_reason(mail, **base) == "mail has waited 3 min and it has not polled for 1 min"  # type: ignore[arg-type]
    for quiet in (
        {"running": False},
        {"paused": True},
        {"needs_login": True},  # waiting for a login on purpose
    ):
        assert usage.stuck_reason(mail, **{**base, **quiet}) is None  # type: ignore[arg-type]
    assert usage.stuck_reason(attrs_evolve(mail, polling=True), **base) is None  # type: ignore[arg-type]
    assert usage.stuck_reason(attrs_evolve(mail, idle_since=990.0), **base) is None  # type: ignore[arg-type]
    assert usage.stuck_reason(attrs_evolve(mail, oldest_waiting=None), **base) is None  # type: ignore[arg-type]


def attrs_evolve(live: usage.Liveness, **changes: Any) -> usage.Liveness:
    import attrs

    return attrs.evolve(live, **changes)


async def test_stuck_shows_for_unread_mail_and_for_a_turn_past_its_limit(hive_fast: Daemon) -> None:
    hive = hive_fast
    sock = hive.config.host_socket_path
    client = await quiet_agent(hive, "a")
    try:
        await hive.coordinator.op_send("a", "are you there?")
        await trio.sleep(1.5)  # past stuck_after, but it needs a login: it waits on purpose
        await hive.views.rescan(["a"])
        assert hive.views.rows()["a"].stuck is None
        await hive.coordinator.login("a", "sk-test-key")
        await eventually(lambda: hive.views.rows()["a"].stuck, what="stuck for unread mail")
        assert (hive.views.rows()["a"].stuck or "").startswith("mail has waited")
        table = out(await hivectl("status", "a", sock=sock))
        assert table.splitlines()[1].split()[1] == "STUCK"
        assert "a is stuck: mail has waited" in table

        got = await call(client, {"cmd": "recv", "max": 5})  # the turn begins: not stuck now
        assert [m["body"] for m in got["messages"]] == ["are you there?"]
        await eventually(lambda: hive.views.rows()["a"].stuck is None, what="unstuck by the poll")
        await eventually(lambda: hive.views.rows()["a"].stuck, what="stuck: the turn ran past its limit")
        assert (hive.views.rows()["a"].stuck or "").startswith("its turn has run")
        _status_code, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
        [container] = [c for c in json.loads(body)["containers"] if c["name"] == "a"]
        assert container["stuck"].startswith("its turn has run")

        assert (await call(client, {"cmd": "ack_turn"}))["acked"] == 1
        await eventually(lambda: hive.views.rows()["a"].stuck is None, what="unstuck by the ack")
        assert (await hivectl("pause", "a", sock=sock)).returncode == 0
        await hive.coordinator.op_send("a", "later")
        await trio.sleep(1.5)  # past stuck_after: a paused agent is never stuck
        await hive.views.rescan(["a"])
        assert hive.views.rows()["a"].stuck is None
    finally:
        client.close()
