"""Who a hive is on the wire (issue 20; docs/swarm.md): mail subjects ``hive.<to>.mail.<from>`` whose
sender hive is the subject's, a mail stream of the first scheme moved on join, and (with per-hive
NATS users) what one hive's credentials cannot do as another. Two links with real stores and brokers
in one process, against a real ``nats-server -js``; raw nats-py clients play the hostile hive."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.event_bus import EventBus
from actors.swarm_link import SwarmLink
from hivecore import swarm as sw
from hivecore import swarm_mail as sm
from hivecore.models import ContainerView
from hivecore.services.broker import Broker
from hivecore.store import Store
from tests.nats_server import NatsServer
from tests.test_swarm_link import RowsStandIn
from tests.waiting import eventually


@attrs.define
class Hive:
    link: SwarmLink
    broker: Broker
    store: Store
    views: RowsStandIn


@pytest.fixture
def roots() -> Iterator[Callable[[], Path]]:
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="swa", dir="/tmp")))
        return made[-1]

    yield make
    for p in made:
        shutil.rmtree(p, ignore_errors=True)


async def start_hive(
    nursery: trio.Nursery, url: str, name: str, root: Path, creds: Path | None = None
) -> Hive:
    """A link with its own store, event bus and broker (one agent, ``coder``), running in ``nursery``."""
    bus, store = EventBus(), Store(root / "hive.sqlite")
    views = RowsStandIn()
    views.set("coder", ContainerView(name="coder", container="h-coder"))
    broker = Broker(store, bus, lambda: views.rows().keys())
    await nursery.start(bus.run)
    await nursery.start(store.run)
    await broker.begin_incarnation("coder")
    settings = sw.SwarmSettings(url=url, hive_name=name, creds=creds, heartbeat_ttl=3.0)
    link = SwarmLink(settings, views, root, store=store, broker=broker)  # type: ignore[arg-type]
    nursery.start_soon(link.run)
    return Hive(link, broker, store, views)


def inbox(hive: Hive, recipient: str) -> Any:
    def read(conn: Any) -> list[tuple[str, str]]:
        q = "SELECT sender, body FROM messages WHERE recipient=? ORDER BY id"
        return [(r[0], r[1]) for r in conn.execute(q, (recipient,))]

    return hive.store.call(read)


def nats(fn: Callable[[Any], Coroutine[Any, Any, Any]], url: str, **connect: Any) -> Any:
    """Run ``fn(nc)`` with a fresh raw nats-py connection on its own asyncio loop (in a thread)."""

    async def main() -> Any:
        import nats as nats_py

        nc = await nats_py.connect(url, connect_timeout=5, allow_reconnect=False, **connect)
        try:
            return await fn(nc)
        finally:
            await nc.close()

    return trio.to_thread.run_sync(asyncio.run, main())


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_mail_uses_to_and_from_subjects_and_a_forged_from_hive_is_dropped_acked_and_counted(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    # a stream and consumer of the first scheme (hive.mail.<to>) exist: the join moves them
    async def legacy(nc: Any) -> None:
        from nats.js import api

        js = nc.jetstream()
        await js.add_stream(
            name=sm.STREAM, subjects=[sm.LEGACY_SUBJECTS], retention=api.RetentionPolicy.WORK_QUEUE
        )
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT)
        await js.pull_subscribe("hive.mail.beta", durable="mail-beta", stream=sm.STREAM, config=config)

    await nats(legacy, nats_server.url)
    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)
    await a.broker.send("coder", "coder@beta", "hello")
    await eventually(lambda: _eq(inbox(b, "coder"), [("coder@alpha", "hello")]), 10)

    async def config(nc: Any) -> tuple[list[str], str | None]:
        js = nc.jetstream()
        stream = await js.stream_info(sm.STREAM)
        consumer = await js.consumer_info(sm.STREAM, "mail-beta")
        return list(stream.config.subjects), consumer.config.filter_subject

    assert await nats(config, nats_server.url) == (["hive.*.mail.*"], "hive.beta.mail.*")

    # a publisher on alpha's subject whose payload claims gamma: dropped, acked (gone), counted
    def envelope(i: int, from_hive: str) -> bytes:
        env = sm.Envelope(id=f"x.{i}", from_hive=from_hive, sender="coder", to="coder", body=f"m{i}")
        return sw.encode(env)

    async def publish(nc: Any) -> None:
        js = nc.jetstream()
        await js.publish("hive.beta.mail.alpha", envelope(1, "gamma"), headers={"Nats-Msg-Id": "x.1"})
        await js.publish("hive.beta.mail.alpha", envelope(2, "alpha"), headers={"Nats-Msg-Id": "x.2"})

    await nats(publish, nats_server.url)
    await eventually(lambda: b.link.forged == 1 and b.link.received == 2, 10)
    assert await inbox(b, "coder") == [("coder@alpha", "hello"), ("coder@alpha", "m2")]

    async def left(nc: Any) -> int:
        info = await nc.jetstream().stream_info(sm.STREAM)
        return int(info.state.messages)

    await eventually(lambda: _eq(nats(left, nats_server.url), 0), 10)


async def _eq(value: Any, want: Any) -> bool:
    return bool(await value == want)


def test_mail_subjects_name_both_hives_and_the_origin_check_reads_the_subject() -> None:
    assert sm.subject("beta", "alpha") == "hive.beta.mail.alpha"
    assert sm.subject_hives("hive.beta.mail.alpha") == ("beta", "alpha")
    for bad in ("hive.mail.beta", "hive.beta.mail", "hive.beta.ops.alpha", "hive.Beta.mail.a", "x.b.mail.a"):
        assert sm.subject_hives(bad) is None
    env = sm.Envelope(id="x", from_hive="alpha", sender="coder", to="coder", body="x")
    assert sm.origin_ok(env, "hive.beta.mail.alpha", "beta") is None
    assert "claims to come from 'alpha'" in (sm.origin_ok(env, "hive.beta.mail.gamma", "beta") or "")
    assert "not this hive's mail" in (sm.origin_ok(env, "hive.delta.mail.alpha", "beta") or "")
