"""The swarm view (docs/swarm.md "Events"): HIVE_EVENTS out and in against a real ``nats-server
-js``, hostile messages on it, the dashboard's deltas (pure) and their way onto the event bus and
the SSE stream. The page itself (Chromium) is tests/test_swarm_browser.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.event_bus import EventBus
from actors.swarm_link import SwarmLink
from hivecore import swarm as sw
from hivecore import swarm_view as sv
from hivecore.aiobridge import asyncio_thread
from hivecore.models import ContainerView
from hivecore.wire import events as ev
from hivecore.wire.converter import converter
from tests.nats_server import NatsServer
from tests.test_swarm_link import RowsStandIn, hive, hive_of, roots, running
from tests.waiting import eventually

__all__ = ["roots"]  # the fixture, used by name


def status(*hives: sw.SwarmHive, state: sw.LinkState = "connected") -> sw.SwarmStatus:
    return sw.SwarmStatus(
        state=state, hive="alpha", server="nats://x:1", heartbeat_ttl=2.0, hives=list(hives)
    )


def a_hive(name: str, *rows: sw.SwarmAgent, reachable: bool = True, seen: float = 1.0) -> sw.SwarmHive:
    return sw.SwarmHive(
        name=name, reachable=reachable, last_seen=seen, local=name == "alpha", agents=list(rows)
    )


# --- pure ------------------------------------------------------------------------------------------


def test_changes_are_per_row_and_per_hive_and_a_first_look_is_the_whole_picture() -> None:
    coder = sw.SwarmAgent(name="coder", running=True)
    before = sv.shown(status(a_hive("alpha", sw.SwarmAgent(name="hm1nd")), a_hive("beta", coder)))
    assert before.hives[0].agents == []  # this hive's own rows are the page's containers
    assert sv.changes(None, before) == [ev.SwarmStateEvent(swarm=before)]
    assert sv.changes(before, before) == []
    writer = sw.SwarmAgent(name="writer", status_text="hi")
    after = sv.shown(
        status(
            a_hive("alpha", sw.SwarmAgent(name="hm1nd", running=True)),
            a_hive("beta", writer, reachable=False, seen=2.0),
            a_hive("gamma"),
            state="reconnecting",
        )
    )
    assert sv.changes(before, after) == [
        ev.SwarmLinkChanged(state="reconnecting", heartbeat_ttl=2.0),
        ev.SwarmHiveChanged(name="beta", reachable=False, last_seen=2.0),
        ev.SwarmAgentChanged(hive="beta", agent=writer),
        ev.SwarmAgentRemoved(hive="beta", name="coder"),
        ev.SwarmHiveChanged(name="gamma", reachable=True, last_seen=1.0),
    ]
    # another hive's pending approvals changed: its hive event carries the count
    counted = sv.shown(attrs.evolve(after, hives=[attrs.evolve(h, approvals=2) for h in after.hives]))
    assert ev.SwarmHiveChanged(name="gamma", reachable=True, last_seen=1.0, approvals=2) in sv.changes(
        after, counted
    )
    # a hive gone from the picture, or a burst over MAX_DELTAS rows: one whole picture instead
    assert sv.changes(after, status(a_hive("alpha"))) == [ev.SwarmStateEvent(swarm=status(a_hive("alpha")))]
    many = sv.shown(status(a_hive("beta", *(sw.SwarmAgent(name=f"a{i}") for i in range(sv.MAX_DELTAS + 1)))))
    assert sv.changes(sv.shown(status(a_hive("beta"))), many) == [ev.SwarmStateEvent(swarm=many)]
    # a long status text from another hive is cut for the page
    long_row = sw.SwarmAgent(name="coder", status_text="x" * 5000)
    text = sv.shown(status(a_hive("beta", long_row))).hives[0].agents[0].status_text
    assert text is not None
    assert len(text) == sv.MAX_SHOWN_TEXT + 1
    odd = sw.SwarmAgent(name="coder", pending="p" * 100, stuck="s" * 5000)
    cut = sv.shown(status(a_hive("beta", odd))).hives[0].agents[0]
    assert (cut.pending, cut.stuck) == ("p" * sv.MAX_SHOWN_WORD + "…", "s" * sv.MAX_SHOWN_TEXT + "…")


def test_an_event_from_another_hive_is_read_defensively() -> None:
    row = sw.SwarmAgent(name="coder", running=True, status_text="<img src=x onerror=alert(1)>")
    good = sv.encode(sv.AgentEvent(rev=7, agent=row))
    assert sv.parse("hive.beta.events.agent", good) == ("beta", sv.AgentEvent(rev=7, agent=row))
    gone = sv.encode(sv.AgentRemovedEvent(name="coder"))
    assert sv.parse("hive.beta.events.agent_removed", gone) == ("beta", sv.AgentRemovedEvent(name="coder"))
    # the hive is the subject's: a body naming another hive changes nothing (the converter drops it)
    forged = json.dumps({"rev": 1, "hive": "alpha", "agent": {"name": "coder"}}).encode()
    parsed = sv.parse("hive.beta.events.agent", forged)
    assert parsed is not None
    assert parsed[0] == "beta"
    bad_subjects = [
        "hive.Beta.events.agent",
        "hive.h-x.events.agent",
        "hive.beta.events.agent.more",
        "hive.beta.mail.agent",
        "hive.beta.events.unknown",
        "hive..events.agent",
    ]
    for subject in bad_subjects:
        assert sv.parse(subject, good) is None, subject
    for body in [
        b"",
        b"not json",
        b"[]",
        b'{"rev": 1}',
        b'{"rev": -1, "agent": {"name": "coder"}}',
        b'{"rev": "x", "agent": {"name": "coder"}}',
        json.dumps({"rev": 1, "agent": {"name": "<img src=x>"}}).encode(),
        json.dumps({"rev": 1, "agent": {"name": 3}}).encode(),
        json.dumps({"rev": 1, "agent": {"name": "coder", "running": "yes"}}).encode(),
        json.dumps({"rev": 1, "agent": {"name": "coder", "status_text": "x" * sv.MAX_EVENT_BYTES}}).encode(),
        b"[" * 100_000,
    ]:
        assert sv.parse("hive.beta.events.agent", body) is None, body[:60]
    assert sv.parse("hive.beta.events.agent_removed", b'{"name": "../x"}') is None
    # approvals: a count, nothing else
    assert sv.parse("hive.beta.events.approvals", b'{"pending": 3}') == ("beta", sv.ApprovalsEvent(pending=3))
    for body in [
        b'{"pending": -1}',
        b'{"pending": "3"}',
        b'{"pending": true}',
        b'{"pending": 10000000}',
        b"{}",
    ]:
        assert sv.parse("hive.beta.events.approvals", body) is None, body


def test_broadcast_reaches_only_streams_that_asked_by_kind_and_takes_no_seq() -> None:
    bus = EventBus()
    swarm_sub = bus.subscribe(kinds=["swarm_agent_removed"])
    every = bus.subscribe()
    bus.publish(ev.ContainerRemoved(name="x"))
    took = bus.broadcast(ev.SwarmAgentRemoved(hive="beta", name="coder"))
    assert took == 1
    assert bus.current_seq() == 1  # not stamped, not in the ring: Last-Event-ID replay is local only
    assert every.backlog() == 1
    assert swarm_sub.backlog() == 1
    late = bus.subscribe(kinds=["swarm_agent_removed", "container_removed"], after_seq=0)
    assert late.backlog() == 1  # the replay has the local event only


# --- against a real NATS server -----------------------------------------------------------------


def with_bus(server: NatsServer, name: str, root: Path, bus: EventBus) -> SwarmLink:
    settings = sw.SwarmSettings(url=server.url, hive_name=name, heartbeat_ttl=2.0)
    return SwarmLink(settings, RowsStandIn(), root, bus=bus)  # type: ignore[arg-type]


async def test_rows_go_out_on_hive_events_and_reach_the_other_hives_bus_hostile_ones_do_not(
    nats_server: NatsServer, roots: Callable[[], Path]
) -> None:
    import nats

    bus = EventBus()
    a_root, b_root = roots(), roots()
    a = with_bus(nats_server, "alpha", a_root, bus)
    b, b_views = hive(nats_server, "beta", b_root)
    sub = bus.subscribe(kinds=sorted(ev.SWARM_VIEW_KINDS))
    seen: list[Any] = []

    async def collect() -> None:
        async for event in sub:
            seen.append(event)  # noqa: PERF401  # as they come

    raw: list[tuple[str, bytes]] = []

    async def tap(msg: Any) -> None:
        raw.append((msg.subject, msg.data))

    async with asyncio_thread("tap") as bridge, trio.open_nursery() as nursery:
        nc = await bridge.call(lambda: nats.connect(nats_server.url))
        await bridge.call(lambda: nc.subscribe("hive.*.events.>", cb=tap))
        js = nc.jetstream()

        async def publish(subject: str, data: bytes) -> None:
            await bridge.call(lambda: js.publish(subject, data))

        nursery.start_soon(collect)
        await running(nursery, a)
        await running(nursery, b)
        await eventually(lambda: a.state == "connected" and b.state == "connected", 20)
        b_views.set("coder", ContainerView(name="coder", container="h-coder", running=True))

        def row_on_bus(name: str, running: bool) -> bool:
            return any(
                isinstance(e, ev.SwarmAgentChanged)
                and e.hive == "beta"
                and e.agent.name == name
                and e.agent.running is running
                for e in seen
            )

        await eventually(lambda: row_on_bus("coder", True), 10)
        assert all(e.seq == 0 for e in seen)
        # what went out on the wire: the shared row, on beta's subject
        await eventually(lambda: any(s == "hive.beta.events.agent" for s, _ in raw), 5)
        _subject, data = next((s, d) for s, d in raw if s == "hive.beta.events.agent")
        body = json.loads(data)
        assert body["agent"]["name"] == "coder"
        assert body["rev"] >= 1
        assert set(body["agent"]) <= {f.name for f in attrs.fields(sw.SwarmAgent)}
        b_views.set("coder", None)
        await eventually(
            lambda: any(isinstance(e, ev.SwarmAgentRemoved) and e.name == "coder" for e in seen), 10
        )
        await eventually(lambda: any(s == "hive.beta.events.agent_removed" for s, _ in raw), 5)

        # hostile writers on the stream: malformed, oversized (refused by the server), a bad name,
        # a forged hive in the body; then one good row from a hive that does not heartbeat
        dropped = a.events_dropped
        await publish("hive.gamma.events.agent", b"{not json")
        await publish(
            "hive.gamma.events.agent", json.dumps({"rev": 1, "agent": {"name": "<script>"}}).encode()
        )
        await publish("hive.gamma.events.agent_removed", b'{"name": "coder", "hive": "beta"}')
        evil = sw.SwarmAgent(name="evil", status_text="<img src=x onerror=alert(1)>")
        await publish("hive.gamma.events.agent", sv.encode(sv.AgentEvent(rev=1, agent=evil)))
        await eventually(lambda: (h := hive_of(a, "gamma")) is not None and h.agents == [evil], 10)
        assert a.events_dropped == dropped + 2
        assert not hive_of(a, "gamma").reachable  # type: ignore[union-attr]
        # a stale event (an older revision than the row a has) changes nothing
        b_views.set("coder", ContainerView(name="coder", container="h-coder", status_text="new"))
        await eventually(lambda: row_on_bus("coder", False), 10)
        stale = sw.SwarmAgent(name="coder", status_text="old")
        await publish("hive.beta.events.agent", sv.encode(sv.AgentEvent(rev=1, agent=stale)))
        applied = a.events_applied
        await publish("hive.gamma.events.agent", sv.encode(sv.AgentEvent(rev=2, agent=evil)))
        await eventually(lambda: a.events_applied > applied, 10)
        beta = hive_of(a, "beta")
        assert beta is not None
        assert [r.status_text for r in beta.agents] == ["new"]

        # beta's pending approvals: a count reaches a at once (an event), and a hive that joins
        # later reads it from beta's heartbeat
        b.set_pending_approvals(3)
        await eventually(
            lambda: any(
                isinstance(e, ev.SwarmHiveChanged) and e.name == "beta" and e.approvals == 3 for e in seen
            ),
            10,
        )
        await eventually(lambda: any(s == "hive.beta.events.approvals" for s, _ in raw), 5)
        late, _ = hive(nats_server, "delta", roots())
        await running(nursery, late)
        await eventually(lambda: (h := hive_of(late, "beta")) is not None and h.approvals == 3, 20)
        await publish("hive.gamma.events.approvals", b'{"pending": -5}')
        await publish("hive.gamma.events.approvals", b'{"pending": 2}')
        await eventually(lambda: hive_of(a, "gamma").approvals == 2, 10)  # type: ignore[union-attr]
        await bridge.call(nc.close)
        nursery.cancel_scope.cancel()


async def test_a_stopped_hive_turns_unreachable_on_the_bus_within_the_ttl(
    nats_server: NatsServer, roots: Callable[[], Path]
) -> None:
    bus = EventBus()
    a_root = roots()
    a = with_bus(nats_server, "alpha", a_root, bus)
    b, b_views = hive(nats_server, "beta", roots())
    b_views.set("coder", ContainerView(name="coder", container="h-coder"))
    sub = bus.subscribe(kinds=["swarm_hive", "swarm_state"])
    flips: list[tuple[float, bool]] = []

    async def collect() -> None:
        async for event in sub:
            if isinstance(event, ev.SwarmHiveChanged) and event.name == "beta":
                flips.append((trio.current_time(), event.reachable))  # noqa: PERF401  # as they come

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await running(nursery, a)
        b_scope = await running(nursery, b)
        await eventually(lambda: any(r for _, r in flips), 20)
        b_scope.cancel()
        stopped = trio.current_time()
        await eventually(lambda: flips[-1][1] is False, 10, interval=0.05)
        # the TTL (2 s) after its last heartbeat, plus a feed pass (at most 0.35 s) and scheduling
        assert flips[-1][0] - stopped <= 2.0 + 1.0
        nursery.cancel_scope.cancel()


async def test_pending_approvals_are_counted_from_the_store_after_each_approval_event(tmp_path: Path) -> None:
    from actors.swarm_feed import PendingApprovals
    from hivecore.store import Store

    counts: list[int] = []

    class Link:
        def set_pending_approvals(self, count: int) -> None:
            counts.append(count)

    def add(conn: Any, status: str) -> int:
        cur = conn.execute(
            "INSERT INTO approvals (agent, kind, requested_at, status) VALUES ('coder', 'spawn', '0', ?)",
            (status,),
        )
        return int(cur.lastrowid)

    bus, store = EventBus(), Store(tmp_path / "hive.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(store.run)
        nursery.start_soon(PendingApprovals(Link(), bus, store).run)
        await eventually(lambda: counts == [0], 5)
        first = await store.call(lambda c: add(c, "pending"))
        await store.call(lambda c: add(c, "denied"))
        bus.publish(ev.ApprovalAdded(id=first, agent="coder", approval_kind="spawn"))
        await eventually(lambda: counts[-1:] == [1], 5)
        await store.call(
            lambda c: c.execute("UPDATE approvals SET status = 'approved' WHERE id = ?", (first,))
        )
        bus.publish(ev.ApprovalResolved(id=first, agent="coder", status="approved"))
        await eventually(lambda: counts[-1:] == [0], 5)
        nursery.cancel_scope.cancel()


def test_a_swarm_frame_carries_no_id_so_last_event_id_counts_local_events_only() -> None:
    from web.stream import SseHub

    hub = SseHub(facade=None)
    removed = ev.SwarmAgentRemoved(hive="beta", name="coder")
    frame = hub.frame_of(removed)
    assert frame.startswith(b"data: ")
    assert b"\nid:" not in frame
    assert json.loads(frame[len(b"data: ") :]) == {
        "kind": "swarm_agent_removed",
        "hive": "beta",
        "name": "coder",
    }
    assert hub.frame_of(removed) is frame  # one encoding for every stream
    local = hub.frame_of(ev.ContainerRemoved(name="x", seq=7))
    assert local.startswith(b"id: 7\n")


def test_hivectl_swarm_names_the_other_hives_pending_approvals() -> None:
    from hivecore.cli.hivectl import render_swarm

    status = sw.SwarmStatus(
        state="connected",
        hive="alpha",
        server="nats://x:1",
        hives=[
            sw.SwarmHive(name="alpha", reachable=True, local=True, approvals=4),
            sw.SwarmHive(name="beta", reachable=True, approvals=2),
            sw.SwarmHive(name="gamma", reachable=False, approvals=0),
        ],
    )
    text = render_swarm({"swarm": converter.unstructure(status)})
    assert text.splitlines()[1] == (
        "approvals pending on other hives (approve them there, or here with 'hivectl approve ID@HIVE' "
        "if that hive lists this one in --swarm-operator-hives): beta 2"
    )


def test_hivectl_swarm_says_an_unreachable_hives_agent_states_are_as_last_heard() -> None:
    from hivecore.cli.hivectl import render_swarm

    row = sw.SwarmAgent(name="coder", running=True)
    status = sw.SwarmStatus(
        state="connected",
        hive="alpha",
        server="nats://x:1",
        hives=[
            sw.SwarmHive(name="alpha", reachable=True, local=True, agents=[row]),
            sw.SwarmHive(name="beta", reachable=True, agents=[row]),
            sw.SwarmHive(name="gamma", reachable=False, agents=[row]),
        ],
    )
    lines = render_swarm({"swarm": converter.unstructure(status)}).splitlines()[2:]
    assert [line.split()[:2] + line.split()[-3:-1] for line in lines] == [
        ["alpha", "(this)", "coder", "running"],
        ["beta", "reachable", "coder", "running"],
        ["gamma", "unreachable", "was", "running"],
    ]


def test_hivectl_swarm_shows_the_outbox_depth_when_mail_waits() -> None:
    from hivecore.cli.hivectl import render_swarm

    status = sw.SwarmStatus(state="reconnecting", hive="alpha", server="nats://x:1", error="down", outbox=3)
    head = render_swarm({"swarm": converter.unstructure(status)}).splitlines()[0]
    assert head == (
        "hive alpha on nats://x:1: reconnecting (down); outbox 3 (mail to other hives waiting for "
        "JetStream; it goes on reconnect)"
    )
    status = attrs.evolve(status, state="connected", error=None, outbox=0)
    assert render_swarm({"swarm": converter.unstructure(status)}).splitlines()[0] == (
        "hive alpha on nats://x:1: connected"
    )


async def test_a_writer_inventing_hives_and_agents_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sv, "MAX_HIVES", 4)
    monkeypatch.setattr(sv, "MAX_AGENTS_PER_HIVE", 10)
    settings = sw.SwarmSettings(url="nats://127.0.0.1:1", hive_name="alpha")
    link = SwarmLink(settings, RowsStandIn(), tmp_path)  # type: ignore[arg-type]

    def row(hive: str, name: str, rev: int) -> None:
        link._apply_event(
            sv.subject(hive, "agent"), sv.encode(sv.AgentEvent(rev=rev, agent=sw.SwarmAgent(name=name)))
        )

    for i in range(15):
        row("evil", f"a{i}", i + 1)
    for i in range(8):
        row(f"x{i}", "coder", 1)
    assert sorted(link._agents["evil"]) == sorted(f"a{i}" for i in range(10))
    assert len(link._agents) == 4
    assert len(link.status().hives) == 4
    # a known agent still changes when its hive is full
    row("evil", "a0", 100)
    assert link._agents["evil"]["a0"] == sw.SwarmAgent(name="a0")
    # churning names (each removed, a new one made) does not grow what the link remembers
    for i in range(500):
        link._apply_event(
            sv.subject("evil", "agent_removed"), sv.encode(sv.AgentRemovedEvent(name=f"a{i + 1}"))
        )
        row("evil", f"a{i + 11}", 1000 + i)
        assert len(link._revs) <= 2 * 4 * 10
    assert len(link._agents["evil"]) == 10


async def test_an_idle_feed_tick_looks_at_nothing(tmp_path: Path) -> None:
    bus = EventBus()
    settings = sw.SwarmSettings(url="nats://127.0.0.1:1", hive_name="alpha", heartbeat_ttl=1.0)
    link = SwarmLink(settings, RowsStandIn(), tmp_path, bus=bus)  # type: ignore[arg-type]
    feed = link.feed
    assert feed is not None
    sub = bus.subscribe(kinds=sorted(ev.SWARM_VIEW_KINDS))
    assert feed.step() == 1  # the first look: the whole picture
    assert (feed.step(), feed.passes) == (0, 1)  # nothing changed: not even looked at
    link._beats["beta"] = (0.0, trio.current_time())
    link._changed_now()
    assert feed.step() == 1  # beta heartbeats: one swarm_hive
    assert (feed.step(), feed.passes) == (0, 2)
    await trio.sleep(1.1)  # the clock alone: beta's heartbeat is older than the TTL now
    assert feed.step() == 1
    assert sub.backlog() == 3
