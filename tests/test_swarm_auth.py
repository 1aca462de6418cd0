"""Who a hive is on the wire (issue 20; docs/swarm.md): mail subjects ``hive.<to>.mail.<from>`` whose
sender hive is the subject's, a mail stream of the first scheme moved on join, and (with per-hive
NATS users) what one hive's credentials cannot do as another. Two links with real stores and brokers
in one process, against a real ``nats-server -js``; raw nats-py clients play the hostile hive."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from actors.swarm_ops import SwarmOps
from hivecore import swarm as sw
from hivecore import swarm_mail as sm
from hivecore.errors import HiveError
from hivecore.models import ContainerView
from hivecore.services.broker import Broker
from hivecore.services.questions import Questions
from hivecore.store import Store
from hivecore.wire.converter import converter
from tests.nats_server import ADMIN_PASSWORD, NatsServer
from tests.test_swarm_link import RowsStandIn
from tests.waiting import eventually


@attrs.define
class Hive:
    link: SwarmLink
    broker: Broker
    store: Store
    views: RowsStandIn
    questions: Questions
    ops: SwarmOps


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
    link = SwarmLink(settings, views, root, store=store, broker=broker, bus=bus)  # type: ignore[arg-type]
    # the questions service wired as hivecore/daemon.py wires it (ask across hives)
    questions = Questions(store, bus, broker, lambda: views.rows().keys())
    await nursery.start(questions.run)
    link.questions, questions.hive, questions.outbox_added = questions, name, link.wake_outbox
    questions.unknown_hive = link.unknown_hive
    ops = SwarmOps(link, (), None)  # operator reach, served (no operator hives: it refuses)
    nursery.start_soon(link.run)
    return Hive(link, broker, store, views, questions, ops)


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


async def mail_ready(url: str, *hives: str) -> None:
    """Wait until each of ``hives`` has its mail consumer (a link says ``connected`` a moment
    before it creates the stream and its consumer)."""

    async def ready(nc: Any) -> bool:
        js = nc.jetstream()
        try:
            for hive in hives:
                await js.consumer_info(sm.STREAM, sm.consumer_name(hive))
        except Exception:
            return False
        return True

    await eventually(lambda: nats(ready, url), 30, interval=0.1)


async def test_another_hive_cannot_make_a_hives_mail_look_like_a_duplicate(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    # mallory (a hostile hive, its own subject) reads alpha's public claim and publishes, first, what
    # alpha's next envelopes would be: the Nats-Msg-Id of alpha's outbox row 1 (JetStream's de-dup
    # window is stream-wide) and an envelope carrying the id of alpha's row 2 (the receiver's de-dup)
    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)
    await mail_ready(nats_server.url, "alpha", "beta")

    async def forge(nc: Any) -> None:
        js = nc.jetstream()
        entry = await (await js.key_value(sw.CLAIMS_BUCKET)).get("alpha")
        claim = sw.decode(entry.value or b"", sw.Claim)
        assert claim is not None
        predicted = [f"alpha.{claim.identity[:16]}.{n}" for n in (1, 2)]
        for i, msg_id in enumerate(predicted):
            env = sm.Envelope(id=f"m.{i}", from_hive="mallory", sender="coder", to="coder", body=f"j{i}")
            await js.publish("hive.beta.mail.mallory", sw.encode(env), headers={"Nats-Msg-Id": msg_id})
            env = attrs.evolve(env, id=msg_id, body=f"r{i}")
            await js.publish("hive.beta.mail.mallory", sw.encode(env), headers={"Nats-Msg-Id": f"m.r{i}"})

    await nats(forge, nats_server.url)
    await eventually(lambda: b.link.received == 4, 10)
    await a.broker.send("coder", "coder@beta", "one")
    await a.broker.send("coder", "coder@beta", "two")

    async def from_alpha() -> list[str]:
        return [body for sender, body in await inbox(b, "coder") if sender == "coder@alpha"]

    await eventually(lambda: _eq(from_alpha(), ["one", "two"]), 10)
    assert b.link.duplicates == 0


async def test_a_hive_mailing_an_agent_that_does_not_read_is_bounced_past_its_quota(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sm, "MAX_QUEUED_PER_HIVE", 3)
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: b.link.state == "connected", 30)
    await mail_ready(nats_server.url, "beta")

    async def flood(nc: Any) -> None:  # mallory, its own subject, senders it invents
        js = nc.jetstream()
        for i in range(6):
            env = sm.Envelope(id=f"mallory.{i}", from_hive="mallory", sender=f"s{i}", to="coder", body=str(i))
            await js.publish("hive.beta.mail.mallory", sw.encode(env), headers={"Nats-Msg-Id": env.id})

    await nats(flood, nats_server.url)
    await eventually(lambda: b.link.received == 3 and b.link.bounced == 3, 10)
    assert [body for _, body in await inbox(b, "coder")] == ["0", "1", "2"]

    async def bounces(nc: Any) -> list[str]:  # what mallory hears back: why, not silence
        sub = await nc.jetstream().pull_subscribe("hive.mallory.mail.beta", durable="mail-mallory")
        return [json.loads(m.data)["body"] for m in await sub.fetch(3, timeout=5)]

    heard = await nats(bounces, nats_server.url)
    assert len(heard) == 3
    assert all("quota per hive" in body for body in heard)


async def test_a_non_finite_number_from_another_hive_never_reaches_a_page(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    # NaN / Infinity would go out in /api/state and on the SSE stream, and JSON.parse refuses them
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: b.link.state == "connected", 30)

    async def hostile(nc: Any) -> None:
        js = nc.jetstream()
        beats = await js.key_value(sw.HEARTBEATS_BUCKET)
        for hive, at in (("nan", b"NaN"), ("inf", b"1e999"), ("ninf", b"-Infinity"), ("zed", b"1.5")):
            await beats.put(hive, b'{"at":' + at + b',"agents":1}')
        await js.publish("hive.inf.events.approvals", b'{"pending":1e999}')

    await nats(hostile, nats_server.url)
    await eventually(lambda: hive_of(b.link, "zed") is not None, 10)
    await eventually(lambda: b.link.events_dropped >= 1, 10)
    status = json.dumps(converter.unstructure(b.link.status()), allow_nan=False)  # raises on NaN
    assert "zed" in status
    for hive in ("nan", "inf", "ninf"):
        assert hive_of(b.link, hive) is None
    assert sw.decode(b'{"at":NaN}', sw.Heartbeat) is None
    assert sw.decode(b'{"at":2.5}', sw.Heartbeat) == sw.Heartbeat(at=2.5)


def test_the_received_key_of_an_envelope_is_its_senders() -> None:
    def env(id_: str, hive: str) -> sm.Envelope:
        return sm.Envelope(id=id_, from_hive=hive, sender="coder", to="coder", body="x")

    assert sm.received_key(env("alpha.abc.1", "alpha")) == "alpha.abc.1"
    assert sm.received_key(env("alpha.abc.1", "mallory")) == "mallory/alpha.abc.1"
    assert sm.received_key(env("bounce.alpha.abc.1", "beta")) == "beta/bounce.alpha.abc.1"
    secret = "ab" * 32
    ids = {sw.envelope_id("alpha", secret, n) for n in range(1, 1000)}
    assert len(ids) == 999
    assert all(i.startswith("alpha.") for i in ids)
    assert sw.envelope_id("alpha", secret, 7) == sw.envelope_id("alpha", secret, 7)  # stable per row
    assert sw.fingerprint(secret)[:16] not in sw.envelope_id("alpha", secret, 7)


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


def hive_of(link: SwarmLink, name: str) -> sw.SwarmHive | None:
    return next((h for h in link.status().hives if h.name == name), None)


def agents_of(link: SwarmLink, name: str) -> list[str]:
    h = hive_of(link, name)
    return [] if h is None else [r.name for r in h.agents]


async def test_two_hives_with_their_own_nats_users_join_see_each_other_and_mail(
    nats_auth_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    from hivecore.wire.host import SwarmOpRequest

    server = nats_auth_server
    # alpha logs in with user:password, gamma with an nkey seed; both have only their permissions
    a = await start_hive(nursery, server.url, "alpha", roots(), creds=server.creds("alpha"))
    g = await start_hive(nursery, server.url, "gamma", roots(), creds=server.creds("gamma"))
    await eventually(lambda: a.link.state == "connected" and g.link.state == "connected", 30)
    await eventually(
        lambda: agents_of(a.link, "gamma") == ["coder"] and agents_of(g.link, "alpha") == ["coder"]
    )
    await a.broker.send("coder", "coder@gamma", "over the permissioned link")
    await a.broker.send("coder", "ghost@gamma", "to nobody")
    await eventually(lambda: _eq(inbox(g, "coder"), [("coder@alpha", "over the permissioned link")]), 10)

    async def bounced() -> bool:
        return any(s == "system@gamma" and "undeliverable" in b for s, b in await inbox(a, "coder"))

    await eventually(bounced, 10)
    g.views.set("coder", ContainerView(name="coder", container="h-coder", status_text="busy"))
    await eventually(
        lambda: (h := hive_of(a.link, "gamma")) is not None and h.agents[0].status_text == "busy"
    )

    async def events_from(nc: Any) -> list[str]:  # both published on HIVE_EVENTS under their users
        info = await nc.jetstream().stream_info("HIVE_EVENTS", subjects_filter=">")
        return sorted(info.state.subjects or {})

    want = [f"hive.{h}.events.{kind}" for h in ("alpha", "gamma") for kind in ("agent", "approvals")]
    await eventually(lambda: _eq(nats(events_from, server.url, user="admin", password=ADMIN_PASSWORD), want))
    # operator reach under the permissions: alpha's request on hive.gamma.ops.alpha, gamma's answer
    # (a refusal: alpha is not one of its operator hives) under _INBOX.alpha (allow_responses)
    with pytest.raises(HiveError, match="operator commands from hive alpha are not taken here"):
        await a.ops.ask(SwarmOpRequest(op="stop", target="coder@gamma", timeout=10), None)
    assert a.link.denied is None
    assert g.link.denied is None
    assert "Violation" not in server.log.read_text()  # nats-server logs "Publish Violation - User …"


async def test_one_hives_nats_user_cannot_write_read_or_delete_as_another(
    nats_auth_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    server = nats_auth_server
    a = await start_hive(nursery, server.url, "alpha", roots(), creds=server.creds("alpha"))
    await eventually(lambda: a.link.state == "connected", 30)
    await eventually(lambda: agents_of(a.link, "alpha") == ["coder"])
    password = server.secrets["beta"].partition(":")[2]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def attacks(nc: Any) -> dict[str, str]:
        from nats.js import api

        js = nc.jetstream(timeout=1.5)
        fake = sw.encode(sw.SwarmAgent(name="evil"))
        env = sm.Envelope(id="f.1", from_hive="alpha", sender="coder", to="coder", body="forged")
        steal = api.ConsumerConfig(
            name="mail-beta", durable_name="mail-beta", filter_subject="hive.alpha.mail.*"
        )
        tries: dict[str, Coroutine[Any, Any, Any]] = {
            # control: beta may write its own heartbeat (the connection works)
            "own heartbeat": js.publish("$KV.hive_heartbeats.beta", sw.encode(sw.Heartbeat(at=1.0))),
            "heartbeat as alpha": js.publish("$KV.hive_heartbeats.alpha", sw.encode(sw.Heartbeat(at=1.0))),
            "agent row as alpha": js.publish("$KV.hive_agents.alpha.evil", fake),
            "claim as alpha": js.publish(
                "$KV.hive_claims.alpha", b'{"identity":"x","host":"h","claimed_at":1}'
            ),
            "mail as alpha": js.publish("hive.gamma.mail.alpha", sw.encode(env)),
            "event as alpha": js.publish("hive.alpha.events.agent", b"{}"),
            "operator request as alpha": nc.request("hive.gamma.ops.alpha", b"{}", timeout=1.5),
            "mail to alpha as alpha": js.publish("hive.alpha.mail.alpha", sw.encode(env)),
            "read alpha's mail": nc.request(
                "$JS.API.CONSUMER.MSG.NEXT.HIVE_MAIL.mail-alpha", b"1", timeout=1.5
            ),
            "ephemeral consumer on mail": js.add_consumer(
                sm.STREAM, api.ConsumerConfig(filter_subject="hive.alpha.mail.*")
            ),
            "own consumer on alpha's mail": nc.request(
                "$JS.API.CONSUMER.CREATE.HIVE_MAIL.mail-beta.hive.beta.mail.*",
                json.dumps({"stream_name": sm.STREAM, "config": steal.as_dict()}).encode(),
                timeout=1.5,
            ),
            "delete alpha's consumer": js.delete_consumer(sm.STREAM, "mail-alpha"),
            "delete the mail stream": js.delete_stream(sm.STREAM),
            "purge the mail stream": js.purge_stream(sm.STREAM),
            "delete the agents bucket": js.delete_key_value(sw.AGENTS_BUCKET),
            "purge the claims": js.purge_stream("KV_hive_claims"),
            "update the heartbeats": js.update_stream(
                api.StreamConfig(name="KV_hive_heartbeats", subjects=["x"])
            ),
        }

        async def attempt(coro: Coroutine[Any, Any, Any]) -> str:
            try:
                got = await coro
            except Exception as exc:
                return f"refused: {type(exc).__name__} {exc}"
            if hasattr(got, "data") and b'"error"' in (got.data or b""):
                return f"refused: {got.data[:200]!r}"
            return "done"

        outcomes = await asyncio.gather(*(attempt(c) for c in tries.values()))
        # the inboxes and the operator requests of alpha are not beta's to read
        for subject in ("_INBOX.alpha.>", "hive.alpha.ops.*"):
            await nc.subscribe(subject)
        await nc.flush()
        await asyncio.sleep(0.3)
        return dict(zip(tries, outcomes, strict=True))

    outcomes = await nats(
        attacks, server.url, user="beta", password=password, inbox_prefix="_INBOX.beta", error_cb=on_error
    )
    assert outcomes.pop("own heartbeat") == "done"
    assert all(v.startswith("refused") for v in outcomes.values()), outcomes
    assert "did not match filtered subject" in outcomes["own consumer on alpha's mail"], outcomes
    text = "\n".join(errors).lower()  # nats-py reports the server's error in lower case
    for subject in (
        "$KV.hive_heartbeats.alpha",
        "$KV.hive_agents.alpha.evil",
        "$KV.hive_claims.alpha",
        "hive.gamma.mail.alpha",
        "hive.alpha.events.agent",
        "hive.gamma.ops.alpha",
        "$JS.API.CONSUMER.MSG.NEXT.HIVE_MAIL.mail-alpha",
        "$JS.API.STREAM.DELETE.HIVE_MAIL",
        "$JS.API.STREAM.DELETE.KV_hive_agents",
        "$JS.API.STREAM.PURGE.KV_hive_claims",
        "$JS.API.STREAM.UPDATE.KV_hive_heartbeats",
        "$JS.API.CONSUMER.CREATE.HIVE_MAIL",
        "$JS.API.CONSUMER.DELETE.HIVE_MAIL.mail-alpha",
        "_INBOX.alpha.>",
        "hive.alpha.ops.*",
    ):
        assert f'permissions violation for publish to "{subject.lower()}"' in text or (
            f'permissions violation for subscription to "{subject.lower()}"' in text
        ), (subject, text)

    # nothing changed: alpha's rows, claim and mail consumer are as alpha left them
    async def intact(nc: Any) -> tuple[list[str], str | None]:
        js = nc.jetstream(timeout=3)
        kv = await js.key_value(sw.AGENTS_BUCKET)
        keys = sorted(await kv.keys())
        consumer = await js.consumer_info(sm.STREAM, "mail-alpha")
        claims = await js.key_value(sw.CLAIMS_BUCKET)
        claim = sw.decode((await claims.get("alpha")).value, sw.Claim)
        assert claim is not None
        assert claim.host != "h"
        return keys, consumer.config.filter_subject

    assert await nats(intact, server.url, user="admin", password=ADMIN_PASSWORD) == (
        ["alpha.coder"],
        "hive.alpha.mail.*",
    )
    assert agents_of(a.link, "alpha") == ["coder"]
    assert a.link.received == 0


def test_the_permission_list_is_per_hive_and_renders_for_the_server_and_nsc() -> None:
    from hivecore import swarm_perms as sp

    p = sp.permissions("alpha")
    assert "hive.*.mail.alpha" in p.publish
    assert "$KV.hive_agents.alpha.>" in p.publish
    assert not [s for s in p.publish if "beta" in s or (s.endswith(".>") and s.startswith("hive.*"))]
    assert p.subscribe == ("_INBOX.alpha.>", "hive.alpha.ops.*")
    assert not any("DELETE.HIVE_MAIL\n" in s or "STREAM.DELETE" in s or "PURGE" in s for s in p.publish)
    assert '"$KV.hive_claims.alpha"' in sp.server_user("alpha", password="pw")
    assert "$ALPHA_NATS_PASSWORD" in sp.server_user("alpha")
    assert "--allow-pub 'hive.*.mail.alpha'" in sp.nsc_command("alpha")
    with pytest.raises(HiveError):
        sp.permissions("Alpha")


def test_swarm_creds_is_a_creds_file_an_nkey_seed_or_user_password(tmp_path: Path) -> None:
    path = tmp_path / "c"
    creds = "-----BEGIN NATS USER JWT-----\neyJ\n------END NATS USER JWT------\n"
    creds += "-----BEGIN USER NKEY SEED-----\nSUA\n"
    assert sw.parse_credentials(creds, path).connect_options() == {"user_credentials": str(path)}
    seed = "SU" + "A" * 56
    assert sw.parse_credentials(seed + "\n", path).connect_options() == {"nkeys_seed_str": seed}
    assert sw.parse_credentials("lab:s3cret\n", path).connect_options() == {
        "user": "lab",
        "password": "s3cret",
    }
    for bad in ("", "lab", "lab:", ":pw", "lab:pw\nmore:lines", "lab:p w"):
        with pytest.raises(HiveError, match="--swarm-creds") as info:
            sw.parse_credentials(bad, path)
        assert "pw" not in str(info.value) or bad == ""
    path.write_text("lab:s3cret\n")
    path.chmod(0o644)
    with pytest.raises(HiveError, match="chmod 600"):
        sw.load_credentials(path)
    path.chmod(0o600)
    assert sw.load_credentials(path).user == "lab"


def test_swarm_permissions_prints_a_user_entry_nats_server_accepts_and_serve_checks_the_creds_file(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    from hivecore.cli.daemon import build_parser, swarm_settings
    from tests.nats_server import NATS_SERVER

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "hivecore.cli.daemon", "swarm-permissions", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    out = cli("lab")
    assert out.returncode == 0, out.stderr
    assert '"hive.*.mail.lab"' in out.stdout
    assert "$LAB_NATS_PASSWORD" in out.stdout
    assert "--allow-pub '$KV.hive_agents.lab.>'" in cli("lab", "--nsc").stdout
    bad = cli("Lab")
    assert bad.returncode == 1
    assert "invalid hive name" in bad.stderr
    if NATS_SERVER is not None:
        conf = tmp_path / "nats.conf"
        conf.write_text(
            "accounts { HIVES { jetstream: enabled, users: [\n" + out.stdout + "\n] } }\njetstream {}\n"
        )
        env = {**os.environ, "LAB_NATS_PASSWORD": "pw"}
        checked = subprocess.run(
            [NATS_SERVER, "-c", str(conf), "-t"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr + checked.stdout
    creds = tmp_path / "lab.creds"
    creds.write_text("lab:pw\n")
    creds.chmod(0o644)
    argv = ["serve", "--swarm", "nats://127.0.0.1:4222", "--hive-name", "lab", "--swarm-creds", str(creds)]
    with pytest.raises(HiveError, match="chmod 600"):
        swarm_settings(build_parser().parse_args(argv))
    creds.chmod(0o600)
    settings = swarm_settings(build_parser().parse_args(argv))
    assert settings is not None
    assert settings.creds == creds


async def test_a_missing_permission_leaves_the_link_reconnecting_naming_the_refused_subject(
    roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    from tests.nats_server import NATS_SERVER, auth_server

    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed")
    servers = auth_server(omit="$JS.API.CONSUMER.INFO.KV_hive_claims.*")
    server = next(servers)
    try:
        a = await start_hive(nursery, server.url, "alpha", roots(), creds=server.creds("alpha"))
        await eventually(lambda: a.link.error is not None and "permissions violation" in a.link.error, 30)
        assert a.link.state == "reconnecting"
        error = a.link.error or ""
        assert '"$js.api.consumer.info.kv_hive_claims.' in error
        assert "hive-c0re swarm-permissions alpha" in error
    finally:  # the link (the nursery fixture's) outlives the server: it only reconnects
        with contextlib.suppress(StopIteration):
            next(servers)
