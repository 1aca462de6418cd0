"""Alarms (issue 19 item 4): each condition raised and cleared, through the actor on a real sqlite
schema with a clock the test sets (no thread runs: the store is called inline, so virtual time is
exact), the periodic pass on trio's MockClock, the pure decisions, the wire and the hold with real
agent processes (real clock)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.alarms import AlarmWatch
from actors.event_bus import EventBus
from hivecore import alarms as al
from hivecore import store as st
from hivecore.alarms import AgentHeld
from hivecore.models import ContainerView
from hivecore.wire.events import AlarmCleared, AlarmRaised, event_from_dict, event_to_dict
from tests.conftest import Parts
from tests.procs import exited, group_alive
from tests.waiting import eventually

T0 = 1_800_000_000.0


class InlineStore:
    """The store's ``call`` on one connection, inline (no thread: virtual time stays exact)."""

    def __init__(self, path: Path) -> None:
        self.conn = st.connect(path)

    async def call(self, fn: Any) -> Any:
        return fn(self.conn)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path: Path, **thresholds: Any) -> None:
        self.store = InlineStore(tmp_path / "hive.sqlite")
        self.bus = EventBus()
        self.rows: dict[str, ContainerView] = {}
        self.clock = Clock()
        self.watch = AlarmWatch(
            self.store,  # type: ignore[arg-type]  # the store's call, inline
            self.bus,
            lambda: self.rows,
            al.Thresholds(**thresholds),
            disk_paths=[],
            clock=self.clock,
        )

    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    async def keys(self) -> list[str]:
        return [a.key for a in await self.watch.evaluate()]

    def send(self, recipient: str, at: float, sender: str = "alpha") -> int:
        cur = self.conn.execute(
            "INSERT INTO messages(sender, recipient, body, sent_at) VALUES (?,?,?,?)",
            (sender, recipient, "hi", int(at)),
        )
        self.conn.commit()
        assert cur.lastrowid is not None
        return cur.lastrowid


def published(bus: EventBus) -> list[Any]:
    """Every alarm event in the bus's ring, oldest first."""
    return [e for e in bus._ring if isinstance(e, (AlarmRaised, AlarmCleared))]


async def test_manager_unread_raises_and_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    mid = rig.send("manager", T0)
    rig.clock.now = T0 + 14 * 60
    assert await rig.keys() == []
    rig.clock.now = T0 + 16 * 60
    assert await rig.keys() == ["manager_unread"]
    [alarm] = rig.watch.alarms()
    assert "has not read its inbox for 16 min (1 message(s) waiting)" in alarm.message
    assert alarm.since == T0
    # the manager reads it (handed out): cleared, though not acked yet
    rig.conn.execute("UPDATE messages SET delivered_at=? WHERE id=?", (int(rig.clock.now), mid))
    rig.conn.commit()
    assert await rig.keys() == []
    kinds = [(e.KIND, e.key) for e in published(rig.bus)]
    assert kinds == [("alarm_raised", "manager_unread"), ("alarm_cleared", "manager_unread")]


async def test_oldest_unacked_raises_and_clears_and_the_operator_inbox_is_not_watched(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    mid = rig.send("coder", T0, sender="manager")
    rig.send("operator", T0)
    rig.conn.execute("UPDATE messages SET delivered_at=? WHERE id=?", (int(T0 + 1), mid))
    rig.conn.commit()
    rig.clock.now = T0 + 29 * 60
    assert await rig.keys() == []
    rig.clock.now = T0 + 31 * 60
    assert await rig.keys() == ["unacked:coder"]
    [alarm] = rig.watch.alarms()
    assert alarm.agent == "coder"
    assert "coder's oldest unacked message from manager is 31 min old" in alarm.message
    # counting on is not a new raise
    rig.clock.now = T0 + 40 * 60
    assert await rig.keys() == ["unacked:coder"]
    assert sum(1 for e in published(rig.bus) if isinstance(e, AlarmRaised)) == 1
    assert "40 min" in rig.watch.alarms()[0].message  # the strip shows the current text
    # an agent that is paused (or not running) leaves its mail on purpose
    rig.rows["coder"] = ContainerView(name="coder", container="coder", running=True, paused=True)
    assert await rig.keys() == []
    rig.rows["coder"] = ContainerView(name="coder", container="coder", running=False)
    assert await rig.keys() == []
    rig.rows["coder"] = ContainerView(name="coder", container="coder", running=True)
    assert await rig.keys() == ["unacked:coder"]
    rig.conn.execute("UPDATE messages SET acked_at=? WHERE id=?", (int(rig.clock.now), mid))
    rig.conn.commit()
    assert await rig.keys() == []


async def test_pending_approval_age_raises_and_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    at = dt.datetime.fromtimestamp(T0, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cur = rig.conn.execute(
        "INSERT INTO approvals(agent, kind, requested_at) VALUES ('coder', 'apply_commit', ?)", (at,)
    )
    rig.conn.commit()
    rig.clock.now = T0 + 23 * 3600
    assert await rig.keys() == []
    rig.clock.now = T0 + 25 * 3600
    assert await rig.keys() == [f"approval:{cur.lastrowid}"]
    assert "pending for 25 h" in rig.watch.alarms()[0].message
    rig.conn.execute("UPDATE approvals SET status='denied' WHERE id=?", (cur.lastrowid,))
    rig.conn.commit()
    assert await rig.keys() == []


async def test_stuck_raises_and_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.rows["coder"] = ContainerView(
        name="coder", container="coder", running=True, stuck="turn past its limit"
    )
    assert await rig.keys() == ["stuck:coder"]
    assert rig.watch.alarms()[0].message == "coder is stuck: turn past its limit"
    rig.rows["coder"] = ContainerView(name="coder", container="coder", running=True)
    assert await rig.keys() == []


async def test_a_source_raises_and_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    failing: list[al.Alarm] = [al.Alarm("notify", "notify", "warn", "http://x: 3 deliveries failed")]
    rig.watch.add_source(lambda: list(failing))
    assert await rig.keys() == ["notify"]
    failing.clear()
    assert await rig.keys() == []


async def test_crash_loop_holds_then_release_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path, crash_loop_crashes=3, crash_loop_window=600.0)
    rig.watch.record_crash("coder")
    rig.clock.now += 700  # the first crash leaves the window
    rig.watch.record_crash("coder")
    rig.clock.now += 60
    rig.watch.record_crash("coder")
    assert rig.watch.holds.get("coder") is None  # only 2 within 10 min
    rig.clock.now += 60
    rig.watch.record_crash("coder")
    hold = rig.watch.holds.get("coder")
    assert hold is not None
    assert hold.reason == "crash loop (3 crashes within 10 min)"
    with pytest.raises(AgentHeld, match="hivectl release coder"):
        rig.watch.holds.refuse_start("coder")
    assert await rig.keys() == ["crash_loop:coder"]
    assert rig.watch.alarms()[0].level == "crit"
    assert st.read_holds(rig.conn) == [("coder", hold.reason, hold.since)]  # kept across restarts
    # a new actor on the same database loads it
    again = AlarmWatch(rig.store, EventBus(), dict, disk_paths=[], clock=rig.clock)  # type: ignore[arg-type]
    await again.load()
    assert again.holds.get("coder") == hold
    assert await rig.watch.release("coder")
    assert rig.watch.holds.get("coder") is None
    assert st.read_holds(rig.conn) == []
    assert rig.watch.alarms() == []
    assert not await rig.watch.release("coder")  # not held: nothing to release
    kinds = [(e.KIND, e.key) for e in published(rig.bus)]
    assert kinds == [("alarm_raised", "crash_loop:coder"), ("alarm_cleared", "crash_loop:coder")]


async def test_a_destroyed_agent_leaves_no_crash_history_or_hold_to_its_successor(tmp_path: Path) -> None:
    """Destroy ends an agent's hold (``holds.discard``, as the lifecycle's destroy does): a new agent
    of the same name starts with no crash history (its first crash does not hold it for its
    predecessor's two), and a hold not yet written to the store when the agent went is not written."""
    rig = Rig(tmp_path, crash_loop_crashes=3, crash_loop_window=600.0)
    rig.watch.record_crash("coder")
    rig.watch.record_crash("coder")
    rig.watch.holds.discard("coder")  # destroyed, then spawned again under the same name
    rig.clock.now += 1
    rig.watch.record_crash("coder")
    assert rig.watch.holds.get("coder") is None
    rig.watch.record_crash("coder")
    rig.watch.record_crash("coder")  # three of the new agent's own: held
    assert rig.watch.holds.get("coder") is not None
    rig.watch.holds.discard("coder")  # destroyed before the alarms pass wrote the hold
    st.delete_hold(rig.conn, "coder")
    assert await rig.keys() == []
    assert st.read_holds(rig.conn) == []


async def test_raises_clears_and_holds_are_recorded_for_the_audit_trail(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rows: list[tuple[str, dict[str, Any]]] = []

    async def record(action: str, args: Any) -> None:
        rows.append((action, dict(args)))

    rig.watch.record = record
    for _ in range(3):
        rig.watch.record_crash("coder")
    await rig.keys()
    await rig.watch.release("coder")
    assert [(a, r.get("key", r.get("agent"))) for a, r in rows] == [
        ("agent_held", "coder"),
        ("alarm_raised", "crash_loop:coder"),
        ("alarm_cleared", "crash_loop:coder"),
    ]
    assert rows[1][1]["level"] == "crit"

    async def broken(action: str, args: Any) -> None:
        raise RuntimeError("the audit store is gone")

    rig.watch.record = broken  # a failing hook never fails a pass
    rig.rows["coder"] = ContainerView(name="coder", container="coder", stuck="x")
    assert await rig.keys() == ["stuck:coder"]


async def test_disk_raises_and_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path, disk_warn=0.0, disk_crit=1.01)  # any filesystem is "full"
    rig.watch.disk_paths = [("state dir", str(tmp_path)), ("again", str(tmp_path))]
    assert await rig.keys() == ["disk:state dir"]  # one per filesystem
    assert rig.watch.alarms()[0].level == "warn"
    rig.watch.thresholds = al.Thresholds(disk_warn=0.0, disk_crit=0.0)
    assert await rig.keys() == ["disk:state dir"]
    assert rig.watch.alarms()[0].level == "crit"
    assert [e.level for e in published(rig.bus) if isinstance(e, AlarmRaised)] == ["warn", "crit"]
    rig.watch.thresholds = al.Thresholds(disk_warn=1.01, disk_crit=1.02)
    assert await rig.keys() == []


async def test_the_pass_runs_every_interval(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig(tmp_path)
    rig.watch.interval = 15.0
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.watch.run)
        assert rig.watch.statistics().passes == 1
        rig.rows["coder"] = ContainerView(name="coder", container="coder", stuck="mail unread")
        await trio.sleep(14.9)
        assert rig.watch.alarms() == []
        await trio.sleep(0.2)
        assert [a.key for a in rig.watch.alarms()] == ["stuck:coder"]
        assert rig.watch.statistics().passes == 2
        rig.watch.record_crash("coder")
        rig.watch.record_crash("coder")
        rig.watch.record_crash("coder")  # a hold asks for a pass at once
        await trio.sleep(0.01)
        assert [a.key for a in rig.watch.alarms()] == ["crash_loop:coder", "stuck:coder"]
        assert rig.watch.statistics().raised == 2
        nursery.cancel_scope.cancel()


def test_pure_decisions() -> None:
    t = al.Thresholds()
    assert al.crash_loop([T0, T0 + 60, T0 + 120], T0 + 130, t)
    assert not al.crash_loop([T0, T0 + 60, T0 + 120], T0 + 601, t)
    before = {"a": al.Alarm("a", "stuck", "warn", "x", since=5.0)}
    after = al.carry_since(
        before, {"a": al.Alarm("a", "stuck", "warn", "y"), "b": al.Alarm("b", "k", "crit", "z")}, 9.0
    )
    assert (after["a"].since, after["b"].since) == (5.0, 9.0)
    raised, cleared = al.diff(before, {"b": after["b"]})
    assert ([a.key for a in raised], [a.key for a in cleared]) == (["b"], ["a"])
    obs = al.Observation(now=T0, inboxes={"manager": al.Inbox(2, T0 - 3600, None)})
    assert al.evaluate(obs, t) == {}  # handed out (in a turn), not unread; the manager's is not "unacked"


def test_alarm_events_round_trip() -> None:
    raised = AlarmRaised(key="stuck:a", alarm_kind="stuck", level="warn", message="m", agent="a", since=1.0)
    wire = event_to_dict(raised)
    assert wire["kind"] == "alarm_raised"
    assert event_from_dict(wire) == raised
    cleared = AlarmCleared(key="disk:nix store", alarm_kind="disk")
    assert event_from_dict(event_to_dict(cleared)) == cleared


# --- the hold with real agent processes -------------------------------------------------------------


async def crash(parts: Parts, name: str) -> None:
    pid = (await parts.runtime.list())[name].pid
    assert pid is not None
    await exited(pid, kill=signal.SIGKILL, group=True)
    await eventually(lambda: not group_alive(pid), what=f"group {pid} gone")
    await parts.crash_watch.tick()


async def test_a_crash_looping_agent_is_held_until_released(parts: Parts) -> None:
    c = parts.coordinator
    watch = parts.daemon.alarm_watch
    watch.disk_paths = []
    await c.spawn("alpha")
    (parts.config.paths.agent_claude("alpha") / ".credentials.json").write_text("x")
    await parts.nursery.start(parts.crash_watch.run)
    await parts.nursery.start(watch.run)
    for _ in range(2):
        await crash(parts, "alpha")
        assert watch.holds.get("alpha") is None
        await c.start("alpha", source="manager")  # the manager restarts it, as it would
        assert c.views()["alpha"].running
    await crash(parts, "alpha")  # the third within 10 minutes
    assert watch.holds.get("alpha") is not None
    await eventually(lambda: [a.key for a in c.alarms()] == ["crash_loop:alpha"], what="alarm raised")
    # host.sock's alarms verb and hivectl's table of it
    from hivecore.cli.hivectl import render_alarms
    from hivecore.verbs import bind
    from hivecore.wire.host import HostResponse, encode_response

    rows = await bind.call("alarms", bind.Context(c, bind.OPERATOR_SOCK), {})
    answer = json.loads(encode_response(HostResponse(ok=True, alarms=rows)))
    [row] = answer["alarms"]
    assert (row["key"], row["kind"], row["level"], row["agent"]) == (
        "crash_loop:alpha",
        "crash_loop",
        "crit",
        "alpha",
    )
    shown = render_alarms(answer).splitlines()
    assert shown[0].split() == ["LEVEL", "FOR", "ALARM"]
    assert shown[1].startswith("CRIT") and "alpha is held stopped" in shown[1]  # noqa: PT018
    assert render_alarms({"ok": True, "alarms": []}) == "no alarms"
    # nobody starts it again: not the manager, not the operator, not a restart
    for attempt in (
        lambda: c.start("alpha", source="manager"),
        lambda: c.start("alpha"),
        lambda: c.restart("alpha"),
    ):
        with pytest.raises(AgentHeld, match="is held stopped: crash loop"):
            await attempt()
        assert not (await parts.runtime.list())["alpha"].running
    # the operator releases it (the verb row, as host.sock runs it) and starts it
    await bind.call("release", bind.Context(c, bind.OPERATOR_SOCK), {"name": "alpha"})
    assert watch.holds.get("alpha") is None
    assert c.alarms() == []
    await c.start("alpha")
    assert c.views()["alpha"].running
    with pytest.raises(Exception, match="alpha is not held"):
        await bind.call("release", bind.Context(c, bind.OPERATOR_SOCK), {"name": "alpha"})
    # the audit trail: the daemon held it, raised the alarm, and cleared it after the release (the
    # release itself is the verb's row where a surface runs it: host.sock, the dashboard)
    audit = parts.daemon.audit
    assert audit is not None
    rows = await audit.read(agent="alpha")
    seen = [(r.verb, r.principal) for r in sorted(rows, key=lambda r: r.seq)]
    held = seen.index(("agent_held", "daemon"))
    raised = seen.index(("alarm_raised", "daemon"))
    cleared = seen.index(("alarm_cleared", "daemon"))
    assert held < raised < cleared, seen


def test_threshold_flags() -> None:
    from hivecore.cli.daemon import build_parser, config_from_args
    from hivecore.errors import HiveError

    def config(*flags: str) -> Any:
        return config_from_args(build_parser().parse_args(["serve", "--runtime", "process", *flags]))

    assert config().alarm_thresholds == al.Thresholds()  # the defaults: 15 min, 30 min, 3/10, 24 h
    t = config(
        "--alarm-manager-unread",
        "1.5",
        "--alarm-unacked",
        "2",
        "--crash-loop",
        "5/2.5",
        "--alarm-approval-age",
        "0.5",
    ).alarm_thresholds
    assert (
        t.manager_unread,
        t.oldest_unacked,
        t.crash_loop_crashes,
        t.crash_loop_window,
        t.approval_age,
    ) == (
        90.0,
        120.0,
        5,
        150.0,
        1800.0,
    )
    for bad in (
        ["--crash-loop", "3"],
        ["--crash-loop", "0/10"],
        ["--crash-loop", "x/y"],
        ["--alarm-unacked", "0"],
    ):
        with pytest.raises(HiveError, match=bad[0]):
            config(*bad)
