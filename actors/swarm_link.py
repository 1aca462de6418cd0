"""The swarm link: this hive's one connection to NATS JetStream (docs/swarm.md).

It claims the hive name (``hive_claims``: created once, kept; the same identity key rejoins, another
is refused), writes a heartbeat into ``hive_heartbeats`` (a bucket whose TTL expires it) every third
of the TTL, mirrors every agent row of the views actor into ``hive_agents`` (observed like
:mod:`actors.agent_sockets` does: the callback only marks the name dirty), and watches all three
buckets to keep its picture of the swarm, which :meth:`SwarmLink.status` reports.

``nats-py`` is asyncio: it runs in one thread with its own loop (:mod:`hivecore.aiobridge`); watch
updates and connection events cross to trio on an unbounded memory channel. The link never raises
for NATS trouble: a connection that fails or drops is retried with backoff (state ``reconnecting``)
and a name claimed by another hive leaves the link ``refused`` with the reason; the local hive serves
on either way. A reconnect starts a fresh session: claim, re-publish every row, re-watch (a fresh
watch replays each key's last value, so the picture resyncs).
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client.metrics_core import Metric

from actors.views import RowsApplied, Views
from hivecore import swarm as sw
from hivecore import swarm_ask, swarm_perms
from hivecore import swarm_view as sv
from hivecore.aiobridge import AsyncioThread, asyncio_thread
from hivecore.alarms import Alarm
from hivecore.errors import BadInput, HiveError

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
ALARM_AFTER = 60.0
"""Seconds the link may be down before the ``swarm`` alarm is raised (a NATS restart takes less)."""
PUT_BATCH = 64
"""Agent rows put in one crossing to the asyncio side (concurrent puts there)."""
CALL_TIMEOUT = 5.0
"""Seconds one NATS call (a put, a create) may take before the session is restarted."""


class _Restart(Exception):
    """The connection came back (or closed): start a fresh session."""


class SwarmLink:
    """Construct with the settings and the views, then supervise :meth:`run`."""

    def __init__(
        self,
        settings: sw.SwarmSettings,
        views: Views,
        state_root: Path,
        *,
        host: str | None = None,
        store: Any = None,
        broker: Any = None,
        bus: Any = None,
    ) -> None:
        """``store`` and ``broker`` (both or neither): mail between hives; without them, presence only.
        ``bus``: the event bus the swarm view is broadcast on (:mod:`actors.swarm_feed`)."""
        self.settings = settings
        self.me = settings.hive_name
        self._views = views
        self._state_root = state_root
        self._host = host or socket.gethostname()
        self._state: sw.LinkState = "connecting"
        self._state_since = time.time()
        self.alarm_after = ALARM_AFTER
        """Seconds the link may be down (connecting, reconnecting) before it raises an alarm."""
        self.error: str | None = None
        self.ttl = settings.heartbeat_ttl
        """The heartbeat bucket's TTL as the server has it (the bucket's creator chose it)."""
        self._claims: set[str] = set()
        self._beats: dict[str, tuple[float, float]] = {}
        self._agents: dict[str, dict[str, sw.SwarmAgent]] = {}
        self._published: dict[str, sw.SwarmAgent] = {}
        self._dirty: set[str] = set()
        self._dirty_event = trio.Event()
        self._changed = trio.Event()
        self._synced: dict[str, trio.Event] = {}
        self._store = store
        self._broker = broker
        self._identity = ""
        self._secret = ""
        self._outbox_event = trio.Event()
        self.outbox_depth = 0
        """Remote messages waiting for JetStream's ack (refreshed after every flush)."""
        self.received = self.duplicates = self.bounced = self.forged = 0
        if broker is not None:
            broker.remote = self.send_remote
        self.questions: Any = None
        """The questions service (:class:`hivecore.services.questions.Questions`): asks and answers
        from other hives go to it (set by the daemon)."""
        self.denied: str | None = None
        """The last permissions violation NATS reported in this session (it names the subject)."""
        self.trouble: str | None = None
        """The last connection error nats-py reported in this session, explained
        (:func:`hivecore.swarm.explain_connect_error`): why the link is not connected yet."""
        self._trouble_known = False
        self.sessions = 0
        """How many sessions (connections) were started (tests, the docs' failure story)."""
        self.version = 0
        """Counts the changes of the picture and the link's state (:meth:`changed_event`)."""
        # the swarm view (docs/swarm.md "Events"): HIVE_EVENTS out and in, the dashboards' feed
        self._revs: dict[str, int] = {}
        self._events_nc: Any = None
        self.events_applied = self.events_dropped = 0
        self.pending_approvals: int | None = None
        """This hive's pending approvals (None: not counted; :class:`actors.swarm_feed.PendingApprovals`)."""
        self._approvals: dict[str, int] = {}
        self._approvals_event = trio.Event()
        self.feed: Any = None
        self._bus = bus
        if bus is not None:
            from actors.swarm_feed import SwarmFeed

            self.feed = SwarmFeed(self, bus)
        self.ops: Any = None
        """Operator reach (:class:`actors.swarm_ops.SwarmOps` sets itself): served in every session."""
        views.observe(self._observe)

    # --- what other parts read -------------------------------------------------------------------

    @property
    def state(self) -> sw.LinkState:
        return self._state

    @state.setter
    def state(self, value: sw.LinkState) -> None:
        if value != self._state:
            self._state, self._state_since = value, time.time()

    def alarms(self) -> list[Alarm]:
        """An alarm source (:meth:`actors.alarms.AlarmWatch.add_source`): ``swarm`` crit while the
        name is refused, warn once the link has been down :attr:`alarm_after` seconds."""
        if self._state == "refused":
            return [Alarm("swarm", "swarm", "crit", f"swarm: {self.error}", since=self._state_since)]
        if self._state != "connected" and time.time() - self._state_since >= self.alarm_after:
            waiting = f"; {self.outbox_depth} message(s) wait in the outbox" if self.outbox_depth else ""
            message = f"swarm link to {self.settings.url} down ({self.error or self._state}){waiting}"
            return [Alarm("swarm", "swarm", "warn", message, since=self._state_since)]
        return []

    def status(self) -> sw.SwarmStatus:
        """The link's state and every hive seen (cached; no I/O)."""
        approvals = dict(self._approvals)
        if self.pending_approvals is not None:
            approvals[self.me] = self.pending_approvals
        hives = sw.status_rows(
            self.me, self._beats, self._agents, self._claims, trio.current_time(), self.ttl, approvals
        )
        return sw.SwarmStatus(
            state=self.state,
            hive=self.me,
            server=self.settings.url,
            error=self.error,
            heartbeat_ttl=self.ttl,
            hives=hives,
            outbox=self.outbox_depth,
        )

    def families(self) -> Iterator[Metric]:
        """The link's Prometheus series (a :class:`hivecore.metrics.Metrics` source; docs/swarm.md):
        ``hivecore_swarm_state{state}`` (1 for the current one), ``hivecore_swarm_hives{reachable}``,
        ``hivecore_swarm_outbox``, ``hivecore_swarm_mail_total{outcome}`` and
        ``hivecore_swarm_sessions_total``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily(
            "hivecore_swarm_state", "The swarm link's state (1: current)", labels=["state"]
        )
        for name in ("connecting", "connected", "reconnecting", "refused"):
            state.add_metric([name], 1.0 if self.state == name else 0.0)
        yield state
        hives = GaugeMetricFamily("hivecore_swarm_hives", "Hives seen in the swarm", labels=["reachable"])
        rows = self.status().hives
        hives.add_metric(["true"], sum(1 for h in rows if h.reachable))
        hives.add_metric(["false"], sum(1 for h in rows if not h.reachable))
        yield hives
        yield GaugeMetricFamily(
            "hivecore_swarm_outbox", "Messages to other hives waiting for JetStream", value=self.outbox_depth
        )
        mail = CounterMetricFamily(
            "hivecore_swarm_mail", "Mail from other hives by outcome", labels=["outcome"]
        )
        mail.add_metric(["received"], self.received)
        mail.add_metric(["duplicate"], self.duplicates)
        mail.add_metric(["bounced"], self.bounced)
        mail.add_metric(["forged"], self.forged)
        yield mail
        yield CounterMetricFamily(
            "hivecore_swarm_sessions", "NATS sessions started (a reconnect starts one)", value=self.sessions
        )
        events = CounterMetricFamily(
            "hivecore_swarm_events", "Events read from HIVE_EVENTS by outcome", labels=["outcome"]
        )
        events.add_metric(["applied"], self.events_applied)
        events.add_metric(["dropped"], self.events_dropped)
        yield events

    async def wait_for(self, predicate: Callable[[SwarmLink], bool]) -> None:
        """Return once ``predicate(self)`` holds; checked after every update received (tests)."""
        while not predicate(self):
            await self._changed.wait()

    def set_pending_approvals(self, count: int) -> None:
        """This hive's pending approvals changed: other hives hear it (an ``approvals`` event now,
        the heartbeat for a hive that joins later)."""
        if count != self.pending_approvals:
            self.pending_approvals = count
            self._approvals_event.set()
            self._changed_now()

    def changed_event(self) -> trio.Event:
        """Set at the next change of the picture (or of the link's state)."""
        return self._changed

    def _changed_now(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    def reach(self) -> tuple[tuple[str, bool], ...]:
        """Which heartbeating hives are reachable now (what the clock alone changes; cheap)."""
        now = trio.current_time()
        return tuple((h, sw.reachable(recv, now, self.ttl)) for h, (_, recv) in sorted(self._beats.items()))

    def _observe(self, applied: RowsApplied) -> None:
        self._dirty.update(applied.changes)
        self._dirty_event.set()

    # --- mail between hives (hivecore/swarm_mail.py) ------------------------------------------------

    def unknown_hive(self, hive: str) -> str | None:
        """Why ``hive`` cannot be addressed: no hive of that name has ever joined this swarm (it holds
        no claim). Known only while the link is connected and has read the claims; else None (mail
        then waits in the outbox, as for a hive that is down)."""
        claims = self._synced.get(sw.CLAIMS_BUCKET)
        if self.state != "connected" or claims is None or not claims.is_set() or hive in self._claims:
            return None
        return f"no hive {hive!r} has joined this swarm ('hivectl swarm' lists the hives)"

    async def send_remote(self, sender: str, to: str, body: str) -> int:
        """Queue ``body`` from local ``sender`` to ``name@hive``; the outbox row's id (to this hive's
        own name: an ordinary local send, its message id). :class:`BadInput` for a bad address or a
        hive that never joined (:meth:`unknown_hive`: a typo would wait in JetStream for 14 days)."""
        from hivecore import swarm_mail as sm

        name, hive = sm.parse_address(to)
        if hive == self.me:
            ids: list[int] = await self._broker.send(sender, name, body)
            return ids[0]
        unknown = self.unknown_hive(hive)
        if unknown is not None:
            raise BadInput(f"cannot send to {to}: {unknown}; nothing was sent")
        now = int(time.time())
        row_id: int = await self._store.call(lambda c: sm.add_outbox(c, sender, hive, name, body, now))
        self.outbox_depth += 1
        self._outbox_event.set()
        return row_id

    async def _flush_outbox(self, bridge: AsyncioThread, js: Any) -> None:
        """Publish every outbox row (oldest first) and delete it once JetStream acked it."""
        from hivecore import swarm_mail as sm

        while True:
            self._outbox_event = trio.Event()
            rows = await self._store.call(sm.pending_outbox)
            for row in rows:
                env = swarm_ask.envelope(row, sw.envelope_id(self.me, self._secret, row.id), self.me)
                headers = {"Nats-Msg-Id": env.id}
                await self._call(
                    bridge,
                    partial(js.publish, sm.subject(row.hive, self.me), sw.encode(env), headers=headers),
                )
                await self._store.call(partial(sm.published, outbox_id=row.id))
            self.outbox_depth = await self._store.call(sm.outbox_depth)
            self._changed_now()
            if not rows:
                await self._outbox_event.wait()

    async def _consume(self, bridge: AsyncioThread, sub: Any, js: Any) -> None:
        """Take this hive's mail: insert into the broker (de-duplicated), then ack."""
        import nats.errors

        while True:
            try:
                msgs = await self._call(bridge, partial(sub.fetch, 16, timeout=1.0))
            except (nats.errors.TimeoutError, TimeoutError):
                # an empty fetch; nats-py sometimes lets asyncio's own TimeoutError out of it (a
                # race in its _fetch_n), which ended the session: "TimeoutError; retrying"
                continue
            for msg in msgs:
                await self._deliver(bridge, js, msg)
                await self._call(bridge, msg.ack_sync)

    async def _deliver(self, bridge: AsyncioThread, js: Any, msg: Any) -> None:
        from hivecore import swarm_mail as sm

        env = sw.decode(msg.data, sm.Envelope) if len(msg.data) <= sm.MAX_ENVELOPE_BYTES * 2 else None
        if not sm.envelope_ok(env):
            log.warning("swarm: dropped a malformed mail envelope (%d bytes)", len(msg.data))
            return
        assert env is not None
        refused = sm.origin_ok(env, msg.subject, self.me)
        if refused is not None:
            self.forged += 1
            self._changed_now()
            log.warning("swarm: refused a mail envelope %s (dropped)", refused)
            return
        problem = swarm_ask.envelope_problem(env)
        if problem is not None:
            kind = env.kind[:20]
            log.warning("swarm: dropped a malformed %s envelope from %s: %s", kind, env.from_hive, problem)
            return
        if env.kind != "mail":
            await self._deliver_question(env)
            return
        recipients = set(self._views.rows())
        inbox = env.to
        if inbox not in ("manager", "operator") and inbox not in recipients:
            await self._bounce(bridge, js, env, f"no agent {env.to!r} on hive {self.me!r}")
            return
        sender = f"{env.sender}@{env.from_hive}"
        try:
            got = await self._broker.receive_remote(
                partial(sm.receive, envelope=env, recipient=inbox), sender, inbox, env.body
            )
        except sm.InboxFull as exc:
            await self._bounce(bridge, js, env, str(exc))
            return
        if got is None:
            self.duplicates += 1
        else:
            self.received += 1
        self._changed_now()

    async def _deliver_question(self, env: Any) -> None:
        """An ask, an answer or a cancel (:mod:`hivecore.swarm_ask`) to the questions service, before
        the ack."""
        from hivecore.names import MANAGER_AGENT, MANAGER_NAME

        if self.questions is None:
            log.warning("swarm: dropped an %s from %s: no questions service here", env.kind, env.from_hive)
            return
        if env.kind == "ask":
            target = MANAGER_NAME if env.to == MANAGER_AGENT else env.to
            if target != MANAGER_NAME and target not in set(self._views.rows()):
                target = None
            outcome = await self.questions.deliver_ask(env, target)
        elif env.kind == "cancel":
            outcome = await self.questions.deliver_cancel(env)
        else:
            outcome = await self.questions.deliver_answer(env)
        if outcome == "duplicate":
            self.duplicates += 1
        elif outcome == "received":
            self.received += 1
        else:
            self.bounced += 1
        self._changed_now()

    def wake_outbox(self) -> None:
        """An ask or an answer was queued in the outbox by another service: flush it now."""
        self._outbox_event.set()

    async def _bounce(self, bridge: AsyncioThread, js: Any, env: Any, why: str) -> None:
        from hivecore import swarm_mail as sm

        self.bounced += 1
        if env.sender == sm.BOUNCER:
            log.warning("swarm: dropped an undeliverable bounce from %s: %s", env.from_hive, why)
            return
        shown = env.body if len(env.body) <= 200 else env.body[:200] + "…"
        back = sm.Envelope(
            id=f"bounce.{env.id}",
            from_hive=self.me,
            sender=sm.BOUNCER,
            to=env.sender,
            body=f"undeliverable: your message to {env.to}@{self.me}: {why}. It said: {shown}",
        )
        headers = {"Nats-Msg-Id": back.id}
        await self._call(
            bridge, partial(js.publish, sm.subject(env.from_hive, self.me), sw.encode(back), headers=headers)
        )

    # --- the actor -------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.feed is not None:
                nursery.start_soon(self.feed.run)
            if self._bus is not None and self._store is not None:
                from actors.swarm_feed import PendingApprovals

                nursery.start_soon(PendingApprovals(self, self._bus, self._store).run)
            await self._run(task_status=task_status)

    async def _run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        _quiet_asyncio_tls()
        try:
            self._secret = await trio.to_thread.run_sync(sw.load_secret, self._state_root)
            identity = self._identity = sw.fingerprint(self._secret)
        except (HiveError, OSError) as exc:
            self._refuse(str(exc))
            await trio.sleep_forever()
        async with asyncio_thread("swarm-nats") as bridge:
            backoff = 0.5
            while True:
                started = trio.current_time()
                try:
                    await self._session(bridge, identity)
                except Exception as exc:
                    leaf = _leaf(exc)
                    if isinstance(leaf, sw.SwarmRefused):
                        self._refuse(str(leaf))
                        await trio.sleep_forever()
                    if isinstance(leaf, _Restart):
                        backoff = 0.5
                        continue
                    self.state = "reconnecting"
                    self.error = _describe(leaf)
                    if self.trouble is not None:  # nats-py said why (a wrong password, a certificate)
                        self.error = self.trouble
                    elif isinstance(leaf, trio.TooSlowError):
                        wait = CALL_TIMEOUT * 2
                        self.error = f"no answer from NATS at {self.settings.url} within {wait:g} s"
                    if self.denied is not None:
                        self.error = (
                            f"NATS refused this hive's user: {self.denied} ({self.error}); give it the "
                            f"permissions 'hive-c0re swarm-permissions {self.me}' prints (docs/swarm.md)"
                        )
                    self._changed_now()
                    log.warning("swarm: %s; retrying in %.1fs", self.error, backoff)
                if trio.current_time() - started > 30:
                    backoff = 0.5
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _trouble(self, text: str) -> None:
        """nats-py's error callback, on trio: while the link is not connected, its state line says
        why at once (a wrong password, an untrusted certificate), not only when the attempt times out."""
        if self.state not in ("connecting", "reconnecting"):
            return
        explained = sw.explain_connect_error(text, self.settings)
        if explained == text and self.trouble is not None and self._trouble_known:
            return  # a broken pipe after an Authorization Violation: the violation is the news
        self.trouble, self._trouble_known = explained, explained != text
        if self.error != self.trouble:
            self.error = self.trouble
            self._changed_now()

    def _refuse(self, reason: str) -> None:
        self.state = "refused"
        self.error = reason
        self._changed_now()
        log.error("swarm: %s", reason)

    async def _session(self, bridge: AsyncioThread, identity: str) -> None:
        import nats

        send, receive = trio.open_memory_channel[tuple[Any, ...]](math.inf)
        post = bridge.to_trio(send.send_nowait)

        async def disconnected() -> None:
            post(("disconnected",))

        async def reconnected() -> None:
            post(("reconnected",))

        async def closed() -> None:
            post(("closed",))

        async def error(exc: Exception) -> None:
            text = _describe(exc)
            if "permissions violation" in text.lower():
                self.denied = text  # read on trio after the call that needed it timed out
            else:
                trouble(text)
            post(("error", text))

        trouble = bridge.to_trio(self._trouble)

        tls = None
        if self.settings.tls_ca is not None:
            tls = ssl.create_default_context(cafile=str(self.settings.tls_ca))
        self.sessions += 1
        self.denied = self.trouble = None
        auth: dict[str, Any] = {}
        if self.settings.creds is not None:
            creds = await trio.to_thread.run_sync(sw.load_credentials, self.settings.creds)
            auth = creds.connect_options()
        with trio.fail_after(CALL_TIMEOUT * 2):
            nc = await bridge.call(
                lambda: nats.connect(
                    servers=[self.settings.url],
                    name=f"hive-c0re {self.me}",
                    inbox_prefix=swarm_perms.inbox_prefix(self.me),
                    tls=tls,
                    connect_timeout=CALL_TIMEOUT,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    closed_cb=closed,
                    error_cb=error,
                    **auth,
                )
            )
        pumps: list[Any] = []
        try:
            js = nc.jetstream(timeout=CALL_TIMEOUT)
            claims = await self._call(bridge, lambda: _bucket(js, sw.CLAIMS_BUCKET, None))
            beats = await self._call(
                bridge, lambda: _bucket(js, sw.HEARTBEATS_BUCKET, self.settings.heartbeat_ttl)
            )
            agents = await self._call(bridge, lambda: _bucket(js, sw.AGENTS_BUCKET, None))
            self.ttl = await self._call(bridge, lambda: _ttl(beats, self.settings.heartbeat_ttl))
            await self._claim(bridge, claims, identity)
            await self._beat(bridge, beats)
            synced = {
                name: trio.Event() for name in (sw.CLAIMS_BUCKET, sw.HEARTBEATS_BUCKET, sw.AGENTS_BUCKET)
            }
            self._synced = synced
            self._revs.clear()  # the replay below resyncs every row
            self._events_nc = None
            await self._call(bridge, partial(_events_stream, js))
            await self._call(bridge, partial(_events_subscription, js, post))
            self._events_nc = nc
            pumps.extend(
                [await self._call(bridge, partial(_watch, kv, post)) for kv in (claims, beats, agents)]
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, receive, synced)
                await synced[sw.AGENTS_BUCKET].wait()
                await self._reconcile(bridge, agents)
                self.state = "connected"
                self.error = None
                self._changed_now()
                log.info("swarm: %s joined %s (heartbeat TTL %gs)", self.me, self.settings.url, self.ttl)
                nursery.start_soon(self._heartbeats, bridge, beats)
                nursery.start_soon(self._approvals_out, bridge, beats)
                nursery.start_soon(self._publisher, bridge, agents)
                if self.ops is not None:
                    nursery.start_soon(self.ops.serve, bridge, nc)
                if self._broker is not None:
                    sub = await self._call(bridge, partial(_mail_consumer, js, self.me))
                    nursery.start_soon(self._consume, bridge, sub, js)
                    nursery.start_soon(self._flush_outbox, bridge, js)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await bridge.call(lambda: _close(nc, pumps))

    async def _call(self, bridge: AsyncioThread, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with trio.fail_after(CALL_TIMEOUT * 2):
            return await bridge.call(fn)

    async def _claim(self, bridge: AsyncioThread, claims: Any, identity: str) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        mine = sw.Claim(identity=identity, host=self._host, claimed_at=time.time())
        try:
            await self._call(bridge, lambda: claims.create(self.me, sw.encode(mine)))
            log.info("swarm: claimed the hive name %s", self.me)
            return
        except KeyWrongLastSequenceError:
            pass
        entry = await self._call(bridge, lambda: claims.get(self.me))
        held = sw.decode(entry.value or b"", sw.Claim)
        if held is None or held.identity != identity:
            who = (
                f"host {held.host!r}, since {time.ctime(held.claimed_at)}" if held else "an unreadable claim"
            )
            raise sw.SwarmRefused(
                f"the hive name {self.me!r} is claimed in this swarm by another hive ({who}); pick another "
                f"--hive-name, or if that hive is gone for good remove its claim (docs/swarm.md)"
            )

    async def _beat(self, bridge: AsyncioThread, beats: Any) -> None:
        beat = sw.Heartbeat(at=time.time(), agents=len(self._views.rows()), approvals=self.pending_approvals)
        await self._call(bridge, lambda: beats.put(self.me, sw.encode(beat)))

    async def _heartbeats(self, bridge: AsyncioThread, beats: Any) -> None:
        while True:
            await trio.sleep(self.ttl / 3)
            await self._beat(bridge, beats)

    async def _approvals_out(self, bridge: AsyncioThread, beats: Any) -> None:
        """Tell the swarm this hive's pending approvals on every change: an event, then a heartbeat
        carrying it (what a hive that joins later, or resyncs, reads)."""
        while True:
            self._approvals_event = trio.Event()
            if self.pending_approvals is not None:
                await self._event_out(bridge, "approvals", sv.ApprovalsEvent(pending=self.pending_approvals))
                await self._beat(bridge, beats)
            await self._approvals_event.wait()

    async def _reconcile(self, bridge: AsyncioThread, agents: Any) -> None:
        """After a (re)join: delete our keys of agents that are gone, publish every row afresh."""
        rows = self._views.rows()
        for name in sorted(set(self._agents.get(self.me, {})) - set(rows)):
            await self._call(bridge, partial(agents.delete, sw.agent_key(self.me, name)))
        self._published.clear()
        self._dirty.update(rows)
        self._dirty_event.set()

    async def _publisher(self, bridge: AsyncioThread, agents: Any) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            names, self._dirty = sorted(self._dirty), set()
            puts: list[tuple[str, sw.SwarmAgent]] = []
            for name in names:
                view = self._views.row(name)
                key = sw.agent_key(self.me, name)
                if view is None:
                    if self._published.pop(name, None) is not None or name in self._agents.get(self.me, {}):
                        await self._call(bridge, partial(agents.delete, key))
                        await self._event_out(bridge, "agent_removed", sv.AgentRemovedEvent(name=name))
                    continue
                row = sw.agent_row(view)
                if self._published.get(name) != row:
                    puts.append((name, row))
            # a burst (a join, a resync, a rebuild of many) goes in batches: one crossing each
            for at in range(0, len(puts), PUT_BATCH):
                batch = puts[at : at + PUT_BATCH]
                await self._call(bridge, partial(_put_rows, agents, self._events_nc, self.me, batch))
                self._published.update(batch)

    async def _event_out(self, bridge: AsyncioThread, kind: str, record: object) -> None:
        """Publish one of this hive's events on HIVE_EVENTS: a core publish, not waited for (an
        event lost with the connection is resynced from the key-value row it mirrors; a row too big
        to go is skipped, the key-value row still carries it)."""
        data = sv.encode(record)
        if self._events_nc is None or len(data) > sv.MAX_EVENT_BYTES:
            return
        await self._call(bridge, partial(self._events_nc.publish, sv.subject(self.me, kind), data))

    async def _receive(
        self, receive: trio.MemoryReceiveChannel[tuple[Any, ...]], synced: dict[str, trio.Event]
    ) -> None:
        async for event in receive:
            kind = event[0]
            if kind == "entry":
                self._apply(event[1], event[2])
            elif kind == "event":
                self._apply_event(event[1], event[2])
            elif kind == "synced":
                synced[event[1]].set()
            elif kind == "disconnected":
                self.state = "reconnecting"
                self.error = "disconnected from NATS"
                log.warning("swarm: disconnected from %s; reconnecting", self.settings.url)
            elif kind in ("reconnected", "closed"):
                raise _Restart(kind)
            elif kind == "error":  # explained by _trouble (posted first) while not connected
                self.error = event[1] if self.state == "connected" else (self.trouble or event[1])
            self._changed_now()

    def _apply(self, bucket: str, entry: Any) -> None:
        deleted = entry.operation in ("DEL", "PURGE")
        value = entry.value or b""
        if len(value) > sw.MAX_VALUE_BYTES:
            return
        if bucket == sw.CLAIMS_BUCKET:
            if sw.split_agent_key(f"{entry.key}.x") is None or not self._room(entry.key):
                return
            (self._claims.discard if deleted else self._claims.add)(entry.key)
        elif bucket == sw.HEARTBEATS_BUCKET:
            beat = None if deleted else sw.decode(value, sw.Heartbeat)
            if beat is None or sw.split_agent_key(f"{entry.key}.x") is None or not self._room(entry.key):
                return
            if entry.key != self.me and sw.approvals_ok(beat.approvals):
                self._approvals[entry.key] = beat.approvals
            now = trio.current_time()
            # a value from the watch's replay counts from when it was written (at most a TTL ago)
            replayed = not self._synced[bucket].is_set()
            age = min(max(0.0, time.time() - beat.at), self.ttl + 1) if replayed else 0.0
            self._beats[entry.key] = (beat.at, now - age)
        elif bucket == sw.AGENTS_BUCKET:
            parts = sw.split_agent_key(entry.key)
            if parts is None:
                return
            hive, agent = parts
            rev = entry.revision or 0
            if rev and rev <= self._revs.get(entry.key, 0):
                return  # HIVE_EVENTS brought a newer row first
            if deleted:
                if self._agents.get(hive, {}).pop(agent, None) is not None or entry.key in self._revs:
                    self._note_rev(entry.key, rev)  # kept: a late event older than this stays out
                return
            row = sw.decode(value, sw.SwarmAgent)
            if row is not None and row.name == agent and self._room(hive, agent):
                self._note_rev(entry.key, rev)
                self._agents.setdefault(hive, {})[agent] = row

    def _note_rev(self, key: str, rev: int) -> None:
        """Remember ``key``'s newest revision; bounded: past the picture's caps twice over, the
        revisions of rows no longer in the picture are forgotten (a writer churning names)."""
        if not rev:
            return
        self._revs[key] = rev
        if len(self._revs) > 2 * sv.MAX_HIVES * sv.MAX_AGENTS_PER_HIVE:
            live = {sw.agent_key(h, a) for h, rows in self._agents.items() for a in rows}
            self._revs = {k: v for k, v in self._revs.items() if k in live}

    def _room(self, hive: str, agent: str | None = None) -> bool:
        """Whether the picture takes ``hive`` (and its ``agent``): caps against a writer inventing
        names (:data:`hivecore.swarm_view.MAX_HIVES`, :data:`~hivecore.swarm_view.MAX_AGENTS_PER_HIVE`)."""
        known = hive in self._agents or hive in self._beats or hive in self._claims
        if not known and len(set(self._agents) | set(self._beats) | self._claims) >= sv.MAX_HIVES:
            return False
        rows = self._agents.get(hive, {})
        return agent is None or agent in rows or len(rows) < sv.MAX_AGENTS_PER_HIVE

    def _apply_event(self, subject: str, data: bytes) -> None:
        """One message from HIVE_EVENTS (another hive's: hostile; its hive is the subject's)."""
        parsed = sv.parse(subject, data)
        if parsed is None:
            self.events_dropped += 1
            return
        hive, record = parsed
        if hive == self.me:
            return
        if isinstance(record, sv.ApprovalsEvent):
            if not self._room(hive):
                return
            self._approvals[hive] = record.pending
        elif isinstance(record, sv.AgentRemovedEvent):
            self._agents.get(hive, {}).pop(record.name, None)
        else:
            key = sw.agent_key(hive, record.agent.name)
            if record.rev <= self._revs.get(key, 0) or not self._room(hive, record.agent.name):
                return
            self._note_rev(key, record.rev)
            self._agents.setdefault(hive, {})[record.agent.name] = record.agent
        self.events_applied += 1


# --- the asyncio side (runs on the bridge's loop) -----------------------------------------------------


async def _bucket(js: Any, name: str, ttl: float | None) -> Any:
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=name, history=1, ttl=ttl)


async def _ttl(kv: Any, default: float) -> float:
    status = await kv.status()
    ttl = status.stream_info.config.max_age
    return float(ttl) if ttl else default


MAIL_MAX_AGE = 14 * 24 * 3600.0
"""Seconds mail waits in JetStream for a hive that does not come back (the stream's max age)."""


async def _mail_consumer(js: Any, me: str) -> Any:
    """The mail stream (created if missing: work-queue retention, file storage; a stream of the first
    scheme, ``hive.mail.*``, is moved to ``hive.*.mail.*``) and this hive's durable, explicitly acked
    pull consumer ``mail-<me>`` on ``hive.<me>.mail.*`` (one with another filter is replaced)."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    from hivecore import swarm_mail as sm

    try:
        info = await js.stream_info(sm.STREAM)
    except NotFoundError:
        await js.add_stream(
            name=sm.STREAM,
            subjects=[sm.STREAM_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=MAIL_MAX_AGE,
            duplicate_window=120.0,
        )
    else:
        if list(info.config.subjects or []) != [sm.STREAM_SUBJECTS]:
            log.warning(
                "swarm: moving the stream %s from subjects %s to %s (mail still on the old subjects "
                "stays until it expires)",
                sm.STREAM,
                info.config.subjects,
                sm.STREAM_SUBJECTS,
            )
            await js.update_stream(info.config.evolve(subjects=[sm.STREAM_SUBJECTS]))
    name, wanted = sm.consumer_name(me), sm.inbox_filter(me)
    try:
        held = await js.consumer_info(sm.STREAM, name)
    except NotFoundError:
        held = None
    if held is not None and held.config.filter_subject != wanted:
        log.warning("swarm: replacing the consumer %s (filter %s)", name, held.config.filter_subject)
        await js.delete_consumer(sm.STREAM, name)
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=-1)
    return await js.pull_subscribe(wanted, durable=name, stream=sm.STREAM, config=config)


async def _put_rows(kv: Any, nc: Any, me: str, rows: list[tuple[str, sw.SwarmAgent]]) -> None:
    """Put ``rows`` into ``hive_agents`` (concurrently, each acked), then publish each as an
    ``agent`` event with the revision its put got (``nc`` None: no events this session)."""
    import asyncio

    revs = await asyncio.gather(*(kv.put(sw.agent_key(me, name), sw.encode(row)) for name, row in rows))
    if nc is None:
        return
    for (_, row), rev in zip(rows, revs, strict=True):
        data = sv.encode(sv.AgentEvent(rev=int(rev), agent=row))
        if len(data) <= sv.MAX_EVENT_BYTES:
            await nc.publish(sv.subject(me, "agent"), data)


async def _events_stream(js: Any) -> None:
    """The events stream (created if missing; docs/swarm.md "Events" has the limits)."""
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(sv.STREAM)
    except NotFoundError:
        await js.add_stream(sv.stream_config())


async def _events_subscription(js: Any, post: Callable[..., None]) -> Any:
    """Every hive's events from now on (an ordered consumer: nothing to ack; a reconnect re-watches
    the key-value buckets, which resyncs what was missed)."""
    from nats.js import api

    async def cb(msg: Any) -> None:
        post(("event", msg.subject, msg.data))

    return await js.subscribe(
        sv.SUBJECTS, stream=sv.STREAM, cb=cb, ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
    )


async def _close(nc: Any, pumps: list[Any]) -> None:
    for task in pumps:
        task.cancel()
    await nc.close()


async def _watch(kv: Any, post: Callable[..., None]) -> Any:
    """Start a watch of every key of ``kv``; its updates go to ``post`` from an asyncio task (returned)."""
    import asyncio

    watcher = await kv.watchall()
    bucket = kv._name

    async def pump() -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    post(("synced", bucket))
                else:
                    post(("entry", bucket, entry))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            post(("error", _describe(exc)))

    return asyncio.get_running_loop().create_task(pump())


def _eof_warning(record: logging.LogRecord) -> bool:
    return "eof_received() has no effect when using ssl" not in record.getMessage()


def _quiet_asyncio_tls() -> None:
    """asyncio logs a warning each time a TLS peer closes on nats-py (``returning true from
    eof_received() has no effect when using ssl``): twice a second while a wrong password is retried.
    It says nothing to an operator; the link's own line says what is wrong."""
    logger = logging.getLogger("asyncio")
    if _eof_warning not in logger.filters:
        logger.addFilter(_eof_warning)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (trio's nurseries wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
