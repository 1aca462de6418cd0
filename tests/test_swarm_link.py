"""The swarm link against a real ``nats-server -js``: joining, the name claim, presence through the
key-value buckets, and a NATS outage that the local side survives. The views are a small stand-in
(rows set by the test, observers called as the views actor calls them); the processes test with two
real ``hive-c0re serve`` is tests/test_swarm_serve.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.swarm_link import MAIL_MAX_AGE, SwarmLink
from actors.views import RowsApplied
from hivecore import swarm as sw
from hivecore.aiobridge import asyncio_thread
from hivecore.errors import HiveError, InvalidName
from hivecore.models import ContainerView
from tests.nats_server import NatsServer
from tests.waiting import eventually


class RowsStandIn:
    """The part of :class:`actors.views.Views` the link reads."""

    def __init__(self) -> None:
        self._rows: dict[str, ContainerView] = {}
        self._observers: list[Callable[[RowsApplied], None]] = []

    def rows(self) -> dict[str, ContainerView]:
        return dict(self._rows)

    def row(self, name: str) -> ContainerView | None:
        return self._rows.get(name)

    def observe(self, fn: Callable[[RowsApplied], None]) -> None:
        self._observers.append(fn)

    def set(self, name: str, view: ContainerView | None) -> None:
        old = self._rows.get(name)
        if view is None:
            self._rows.pop(name, None)
        else:
            self._rows[name] = view
        for fn in self._observers:
            fn(RowsApplied({name: (old, view)}))


@pytest.fixture
def roots() -> Iterator[Callable[[], Path]]:
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="sw", dir="/tmp")))
        return made[-1]

    yield make
    for p in made:
        shutil.rmtree(p, ignore_errors=True)


def hive(server: NatsServer, name: str, root: Path, ttl: float = 2.0) -> tuple[SwarmLink, RowsStandIn]:
    views = RowsStandIn()
    settings = sw.SwarmSettings(url=server.url, hive_name=name, heartbeat_ttl=ttl)
    return SwarmLink(settings, views, root), views  # type: ignore[arg-type]


def hive_of(link: SwarmLink, name: str) -> sw.SwarmHive | None:
    return next((h for h in link.status().hives if h.name == name), None)


async def running(nursery: trio.Nursery, link: SwarmLink) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await link.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def test_two_hives_see_each_others_agents_and_a_stopped_hive_turns_unreachable(
    nats_server: NatsServer, roots: Callable[[], Path]
) -> None:
    a, _ = hive(nats_server, "alpha", roots())
    b, b_views = hive(nats_server, "beta", roots())
    b_views.set("coder", ContainerView(name="coder", container="h-coder", running=True))
    async with trio.open_nursery() as nursery:
        await running(nursery, a)
        b_scope = await running(nursery, b)
        await eventually(lambda: a.state == "connected" and b.state == "connected", 20)
        await eventually(lambda: (h := hive_of(a, "beta")) is not None and h.reachable and h.agents, 5)
        beta = hive_of(a, "beta")
        assert beta is not None
        assert [(r.name, r.running) for r in beta.agents] == [("coder", True)]
        # a row change reaches the other hive; a removed agent is removed there
        b_views.set("coder", ContainerView(name="coder", container="h-coder", running=False))
        await eventually(lambda: not hive_of(a, "beta").agents[0].running, 5)  # type: ignore[union-attr]
        b_views.set("writer", ContainerView(name="writer", container="h-writer"))
        b_views.set("coder", None)
        await eventually(lambda: [r.name for r in hive_of(a, "beta").agents] == ["writer"], 5)  # type: ignore[union-attr]
        # b stops heartbeating: a shows it unreachable within the TTL (2 s here), its rows kept
        b_scope.cancel()
        with trio.fail_after(2.0 + 1.5):
            await eventually(lambda: not hive_of(a, "beta").reachable, 10, interval=0.05)  # type: ignore[union-attr]
        assert hive_of(a, "alpha").reachable  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_name_claimed_by_another_identity_is_refused_and_the_same_identity_rejoins(
    nats_server: NatsServer, roots: Callable[[], Path]
) -> None:
    b_root = roots()
    b, _ = hive(nats_server, "beta", b_root)
    async with trio.open_nursery() as nursery:
        scope = await running(nursery, b)
        await eventually(lambda: b.state == "connected", 20)
        # another host (another state dir: another identity key) claims the same name
        impostor, _ = hive(nats_server, "beta", roots())
        await running(nursery, impostor)
        await eventually(lambda: impostor.state == "refused", 20)
        assert [(x.key, x.level) for x in impostor.alarms()] == [("swarm", "crit")]
        assert impostor.error is not None
        assert "'beta' is claimed" in impostor.error
        scope.cancel()
        # the same hive (its state dir) comes back before its heartbeat expired: it rejoins
        again, _ = hive(nats_server, "beta", b_root)
        await running(nursery, again)
        await eventually(lambda: again.state == "connected", 20)
        assert impostor.state == "refused"
        nursery.cancel_scope.cancel()


async def test_a_nats_outage_leaves_the_link_reconnecting_and_it_resyncs_when_nats_returns(
    nats_server: NatsServer, roots: Callable[[], Path]
) -> None:
    a, a_views = hive(nats_server, "alpha", roots())
    b, b_views = hive(nats_server, "beta", roots())
    async with trio.open_nursery() as nursery:
        await running(nursery, a)
        await running(nursery, b)
        await eventually(lambda: a.state == "connected" and b.state == "connected", 20)
        assert a.alarms() == []
        a.alarm_after = 0.5
        await trio.to_thread.run_sync(nats_server.kill)
        await eventually(lambda: a.state == "reconnecting" and b.state == "reconnecting", 20)
        await eventually(lambda: a.alarms(), 10)
        (alarm,) = a.alarms()
        assert (alarm.key, alarm.level) == ("swarm", "warn")
        assert "down" in alarm.message
        # the local side goes on: rows still change, the status still answers
        b_views.set("late", ContainerView(name="late", container="h-late"))
        a_views.set("coder", ContainerView(name="coder", container="h-coder"))
        assert a.status().state == "reconnecting"
        await trio.to_thread.run_sync(nats_server.start)
        await eventually(lambda: a.state == "connected" and b.state == "connected", 30)
        await eventually(lambda: [r.name for r in hive_of(a, "beta").agents] == ["late"], 10)  # type: ignore[union-attr]
        await eventually(lambda: [r.name for r in hive_of(b, "alpha").agents] == ["coder"], 10)  # type: ignore[union-attr]
        assert a.sessions >= 2
        assert a.alarms() == []
        from prometheus_client.core import CollectorRegistry
        from prometheus_client.exposition import generate_latest

        class Source:
            def collect(self) -> Any:
                return a.families()

        registry = CollectorRegistry()
        registry.register(Source())
        text = generate_latest(registry).decode()
        assert 'hivecore_swarm_state{state="connected"} 1.0' in text
        assert 'hivecore_swarm_hives{reachable="true"} 2.0' in text
        assert "hivecore_swarm_sessions_total" in text
        nursery.cancel_scope.cancel()


async def test_hive_names_and_server_urls_are_validated() -> None:
    for bad in ("", "Beta", "h-x", "a.b", "toolongname", "x/y", 3):
        with pytest.raises(InvalidName):
            sw.validate_hive_name(bad)
    for url in ("http://x:1", "nats://x", "nats://u:p@x:4222", "nats://x:4222/path"):
        with pytest.raises(HiveError):
            sw.validate_server_url(url)
    assert sw.validate_server_url("nats://10.0.0.2:4222") == "nats://10.0.0.2:4222"


async def test_the_bridge_runs_coroutines_and_cancels_them() -> None:
    import asyncio

    async with asyncio_thread("t") as bridge:

        async def add(x: int) -> int:
            await asyncio.sleep(0)
            return x + 1

        assert await bridge.call(lambda: add(1)) == 2
        started = asyncio.Event()
        cancelled: list[bool] = []

        async def forever() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        with trio.move_on_after(0.2):
            await bridge.call(forever)
        await eventually(lambda: cancelled == [True], 5)

        async def boom() -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            await bridge.call(boom)


async def test_an_abandoned_call_that_fails_as_it_is_cancelled_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nats-py's fetch, cancelled while its connection closes, raises ConnectionClosedError rather
    than CancelledError: nobody reads it, and asyncio used to log "Task exception was never
    retrieved" with a traceback at every swarm link stop (seen in ``make bench``'s swarm bench)."""
    import asyncio
    import gc

    finished: list[bool] = []
    async with asyncio_thread("t") as bridge:

        async def fails_when_cancelled() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                finished.append(True)
                raise ConnectionError("closed under it") from None

        with trio.move_on_after(0.2):
            await bridge.call(fails_when_cancelled)
        await eventually(lambda: finished == [True], 5)
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_a_redelivered_envelope_is_inserted_once_and_the_outbox_has_a_quota(tmp_path: Path) -> None:
    from hivecore import store as st
    from hivecore import swarm_mail as sm

    conn = st.connect(tmp_path / "hive.sqlite")
    st.migrate(conn)
    env = sm.Envelope(id="alpha.abc.1", from_hive="alpha", sender="coder", to="writer", body="hi")
    first = sm.receive(conn, 100, envelope=env, recipient="writer")
    # JetStream redelivers when the ack was lost (the receiver crashed after its insert)
    assert sm.receive(conn, 101, envelope=env, recipient="writer") is None
    rows = [tuple(r) for r in conn.execute("SELECT id, sender, recipient, body FROM messages")]
    assert rows == [(first, "coder@alpha", "writer", "hi")]
    for i in range(sm.MAX_OUTBOX_PER_SENDER):
        sm.add_outbox(conn, "coder", "beta", "x", f"m{i}", 100)
    with pytest.raises(HiveError, match="swarm outbox quota"):
        sm.add_outbox(conn, "coder", "beta", "x", "one more", 100)
    sm.add_outbox(conn, "writer", "beta", "x", "another sender is not held up", 100)
    oldest = sm.pending_outbox(conn, 1)[0]
    sm.published(conn, outbox_id=oldest.id)
    assert sm.outbox_depth(conn) == sm.MAX_OUTBOX_PER_SENDER
    conn.close()


def test_one_hive_cannot_fill_the_database_with_mail(tmp_path: Path) -> None:
    from hivecore import store as st
    from hivecore import swarm_mail as sm

    conn = st.connect(tmp_path / "hive.sqlite")
    st.migrate(conn)

    def env(hive: str, sender: str, n: int) -> sm.Envelope:
        return sm.Envelope(id=f"{hive}.x.{n}", from_hive=hive, sender=sender, to="writer", body=f"m{n}")

    # mallory's senders (invented names) share one quota; beta's mail is not held up by it
    for n in range(3):
        assert sm.receive(conn, 100, envelope=env("mallory", f"s{n}", n), recipient="writer", max_queued=3)
    with pytest.raises(HiveError, match="quota per hive"):
        sm.receive(conn, 100, envelope=env("mallory", "s9", 9), recipient="manager", max_queued=3)
    assert sm.receive(conn, 100, envelope=env("beta", "coder", 1), recipient="writer", max_queued=3)
    (rows,) = conn.execute("SELECT count(*) FROM messages WHERE sender GLOB '*@mallory'").fetchone()
    assert rows == 3
    # once read (acked), the quota is free again; the refused envelope was not recorded as received
    conn.execute("UPDATE messages SET acked_at=101 WHERE sender='s0@mallory'")
    assert sm.receive(conn, 102, envelope=env("mallory", "s9", 9), recipient="manager", max_queued=3)
    conn.close()


def test_an_envelope_id_is_short_printable_ascii() -> None:
    # it is kept in swarm_received (a de-dup row per envelope) and sent back in a bounce's header
    from hivecore import swarm_mail as sm

    def ok(id_: str) -> bool:
        return sm.envelope_ok(sm.Envelope(id=id_, from_hive="b", sender="coder", to="c", body="x"))

    assert ok("b.0123456789abcdef.1")
    assert ok("bounce." + "b" * 121)
    for bad in ("", "x" * 129, "x" * 100_000, "a\nb", "a\x1b[2Jb", "a b", "caf\u00e9", "\u202eb"):
        assert not ok(bad), bad


def test_the_vacuum_forgets_received_envelopes_jetstream_can_no_longer_redeliver(tmp_path: Path) -> None:
    # one de-dup row per envelope ever received grew swarm_received without bound
    from hivecore import store as st
    from hivecore import swarm_mail as sm
    from hivecore.services import broker

    conn = st.connect(tmp_path / "hive.sqlite")
    st.migrate(conn)
    day = 24 * 3600
    assert broker.VACUUM_AGE > MAIL_MAX_AGE  # the mail stream's max age (actors/swarm_link.py MAIL_MAX_AGE)
    for n, at in enumerate((100, 100 + 40 * day)):
        env = sm.Envelope(id=f"b.x.{n}", from_hive="b", sender="coder", to="writer", body="x")
        sm.receive(conn, at, envelope=env, recipient="writer")
    broker._vacuum(conn, 100 + 40 * day - broker.VACUUM_AGE)
    assert [r[0] for r in conn.execute("SELECT envelope FROM swarm_received")] == ["b.x.1"]
    conn.close()


def test_addresses_are_name_at_hive() -> None:
    from hivecore import swarm_mail as sm

    assert sm.parse_address("coder@beta") == ("coder", "beta")
    assert sm.parse_address("hm1nd@beta") == ("manager", "beta")
    assert sm.parse_address("operator@beta") == ("operator", "beta")
    for bad in ("coder@", "@beta", "coder@Beta", "../x@beta", "a@b@c", "system@beta"):
        with pytest.raises(HiveError):
            sm.parse_address(bad)
    assert not sm.envelope_ok(None)
    assert not sm.envelope_ok(sm.Envelope(id="x", from_hive="B", sender="a", to="b", body="x"))
    assert not sm.envelope_ok(sm.Envelope(id="x", from_hive="b", sender="a", to="b", body=""))


def test_an_envelope_with_a_forged_or_odd_sender_is_refused() -> None:
    from hivecore import swarm_mail as sm

    for sender in ("coder", "hm1nd", "manager", "operator", "system"):
        assert sm.envelope_ok(sm.Envelope(id="x", from_hive="b", sender=sender, to="c", body="x"))
    for sender in ("", "a\nb", "Operator", "x" * 65, "coder@other"):
        assert not sm.envelope_ok(sm.Envelope(id="x", from_hive="b", sender=sender, to="c", body="x"))
