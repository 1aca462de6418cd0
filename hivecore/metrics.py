"""Prometheus metrics of one daemon (``/metrics``; the series are listed in ``docs/operations.md``).

Shape
    Each daemon owns one :class:`Metrics`: its own ``CollectorRegistry`` (never the process-wide
    default: tests run several daemons in one process). Almost every series is read at scrape time
    from what the actors already count (their ``statistics()``, the views' rows) and from one store
    call (inbox depths, pending approvals, usage totals): :class:`DaemonCollector`. Only what is an
    event with a duration is recorded where it happens, at one place each: a job's end
    (:meth:`Metrics.job_finished`, called by the job lane) and a nix child's end
    (:meth:`Metrics.nix_ran`, called by :class:`hivecore.meta.MetaRepo`).

Scrapes
    :meth:`Metrics.scrape` gathers the database facts through the store actor (its worker thread;
    nothing blocking on the trio thread), then renders the exposition synchronously, so what it
    shows is one instant of the in-memory state. Scrapes that overlap share one gather
    (single flight); ``max_age`` lets a caller (the unauthenticated loopback listener) take a
    rendering up to that old instead, so no request rate turns into store load.

Labels
    Bounded sets only: job kinds, outcomes, states, actor names (the supervisor's table), agent names
    and inbox names (validated names, plus ``manager`` and ``operator``). Never free text.

Other engineers' series
    :meth:`Metrics.set_source` takes a named callable that yields ``prometheus_client`` metric
    families at scrape time; a second call with the same name replaces the first (a restarted actor
    registers again): the notifications' series (:mod:`hivecore.alarm_metrics`). The alarms need
    none: their actor's ``alarms()`` and ``statistics()`` are read like every other actor's.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, get_args

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hivecore.models import JOB_KINDS, TRANSIENT_KINDS, ApprovalKind, Job
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, OPERATOR_NAME

if TYPE_CHECKING:
    from hivecore.daemon import Daemon

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's media type (``prometheus_client.CONTENT_TYPE_LATEST``)."""

JOB_OUTCOMES = ("done", "failed", "cancelled")
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds: light verbs take well under a second, builds minutes."""
NIX_OPERATIONS = ("eval", "lock", "update", "copy", "build")
NIX_OUTCOMES = ("ok", "failed", "timeout")
NIX_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
AGENT_STATES = ("running", "paused", "stopped", "failed", *TRANSIENT_KINDS)
"""``hivecore_agents{state}``: a transient (``spawning``, ``rebuilding`` …) wins, then failed, paused
(running, paused), running, stopped."""

ALARM_KINDS = ("manager_unread", "unacked", "crash_loop", "stuck", "disk", "approval", "notify")
"""The alarms' kinds (:class:`hivecore.alarms.Alarm`), each shown from 0; a kind another part adds
appears while it is raised."""

Source = Callable[[], Iterable[Metric]]


@attrs.frozen
class InboxFacts:
    """One inbox's unacked rows: not handed out yet, handed out and not acked, the oldest's
    ``sent_at`` (Unix seconds)."""

    queued: int
    in_flight: int
    oldest_sent_at: int


@attrs.frozen
class UsageFacts:
    turns: int
    tokens: int
    cost_usd: float


@attrs.frozen
class DbFacts:
    """What a scrape reads from sqlite, in one store call (:func:`read_db_facts`)."""

    inboxes: Mapping[str, InboxFacts]
    approvals_pending: Mapping[str, int]
    """Pending approvals by kind."""
    oldest_approval_at: float | None
    """Unix seconds of the oldest pending approval's request (None: none pending)."""
    usage: Mapping[str, UsageFacts]


INBOX_QUERY = (
    "SELECT recipient, sum(delivered_at IS NULL), sum(delivered_at IS NOT NULL), min(sent_at) "
    "FROM messages WHERE acked_at IS NULL AND undelivered_at IS NULL GROUP BY recipient"
)
"""Per inbox: queued, in flight, the oldest unacked ``sent_at``; walks index ``messages_open`` (the
open rows only: store migration 13)."""


def read_db_facts(conn: sqlite3.Connection) -> DbFacts:
    """The database half of a scrape (the store thread): :data:`INBOX_QUERY`, then the pending
    approvals and the usage totals (small tables)."""
    inboxes = {
        recipient: InboxFacts(queued, in_flight, int(oldest))
        for recipient, queued, in_flight, oldest in conn.execute(INBOX_QUERY)
    }
    pending: dict[str, int] = {}
    oldest: float | None = None
    for kind, count, first in conn.execute(
        "SELECT kind, count(*), min(requested_at) FROM approvals WHERE status='pending' GROUP BY kind"
    ):
        pending[kind] = count
        at = _rfc3339(first)
        if at is not None and (oldest is None or at < oldest):
            oldest = at
    usage = {
        agent: UsageFacts(turns, tokens, cost)
        for agent, turns, tokens, cost in conn.execute(
            "SELECT agent, turns, tokens, cost_usd FROM usage_totals"
        )
    }
    return DbFacts(inboxes, pending, oldest, usage)


def _rfc3339(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


class Metrics:
    """One daemon's registry, its event instruments and its scrape (module doc)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._clock = clock
        self.jobs: dict[tuple[str, str], int] = {(k, o): 0 for k in JOB_KINDS for o in JOB_OUTCOMES}
        """Jobs finished by (kind, outcome); every pair from zero, so rate() sees the first job."""
        self.job_duration = Buckets(JOB_BUCKETS)
        self.nix_duration = Buckets(NIX_BUCKETS)
        self.registry.register(_Events(self))
        self._sources: dict[str, Source] = {}
        self._gather: Callable[[], Awaitable[object]] | None = None
        self._collector: DaemonCollector | None = None
        self._flight: _Flight | None = None
        self._last: tuple[float, bytes] | None = None
        self.scrapes = 0
        """Scrapes rendered (a shared or cached one counts once)."""
        self.sse_clients: Callable[[], int] | None = None
        """How many dashboard event streams are open (set by the dashboard app it belongs to)."""

    # --- events (synchronous, called where they happen) ------------------------------------------

    def job_finished(self, job: Job) -> None:
        """A job ended (the lane calls this once per job, as it leaves the lane)."""
        if job.state not in JOB_OUTCOMES:
            return
        self.jobs[(job.kind, job.state)] = self.jobs.get((job.kind, job.state), 0) + 1
        if job.started_at is not None and job.finished_at is not None:
            self.job_duration.observe((job.kind,), job.finished_at - job.started_at)

    def nix_ran(self, operation: str, outcome: str, seconds: float) -> None:
        """A nix child of :class:`hivecore.meta.MetaRepo` ended (``operation``: :data:`NIX_OPERATIONS`)."""
        if operation in NIX_OPERATIONS and outcome in NIX_OUTCOMES:
            self.nix_duration.observe((operation, outcome), seconds)

    # --- sources ----------------------------------------------------------------------------------

    def set_source(self, name: str, source: Source | None) -> None:
        """Series that another part yields at scrape time (``None`` removes them). A source that
        raises is logged and skipped; the scrape goes on."""
        if source is None:
            self._sources.pop(name, None)
        else:
            self._sources[name] = source

    def sources(self) -> Iterator[Metric]:
        for name, source in list(self._sources.items()):
            try:
                yield from list(source())
            except Exception:
                log.warning("metrics: source %s failed; its series are left out", name, exc_info=True)

    def attach(self, daemon: Daemon) -> None:
        """Read ``daemon``'s actors at every scrape (once, when the graph is built)."""
        collector = DaemonCollector(daemon, self, self._clock)
        self._collector = collector
        self.registry.register(collector)
        self._gather = lambda: daemon.store.call(read_db_facts)

    # --- the scrape -------------------------------------------------------------------------------

    async def scrape(self, max_age: float = 0.0) -> bytes:
        """The exposition (Prometheus text format). ``max_age`` > 0: a rendering at most that many
        seconds old is returned as it is. Overlapping scrapes share one gather (if its leader is
        cancelled, a waiter leads the next)."""
        while True:
            last = self._last
            if last is not None and max_age > 0 and time.monotonic() - last[0] <= max_age:
                return last[1]
            flight = self._flight
            if flight is None:
                return await self._lead()
            await flight.done.wait()
            if flight.body is not None:
                return flight.body

    async def _lead(self) -> bytes:
        flight = self._flight = _Flight()
        try:
            facts = await self._gather() if self._gather is not None else None
            if self._collector is not None:
                self._collector.facts = facts if isinstance(facts, DbFacts) else None
            try:
                # synchronous: one instant of the actors' state, as immutable metric families
                families = _Families(list(self.registry.collect()))
            finally:
                if self._collector is not None:
                    self._collector.facts = None
            # the text rendering (most of the cost) reads only those families: a worker thread
            body = await trio.to_thread.run_sync(generate_latest, families)
            self.scrapes += 1
            self._last = (time.monotonic(), body)
            flight.body = body
            return body
        finally:
            self._flight = None
            flight.done.set()


class Buckets:
    """A histogram's cumulative counts per label values (plain data, changed on the trio thread;
    rendered by ``prometheus_client`` as a ``HistogramMetricFamily``). A series appears at its first
    observation."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        value = max(0.0, seconds)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def count(self, labels: tuple[str, ...]) -> int:
        found = self.series.get(labels)
        return sum(found[0]) if found is not None else 0

    def family(self, name: str, doc: str, labelnames: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labelnames)
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # le="0.5", as prometheus_client writes
        for labels, (counts, total) in sorted(self.series.items()):
            family.add_metric(
                list(labels), list(zip(edges, itertools.accumulate(counts), strict=True)), total[0]
            )
        return family


class _Events(Collector):
    """The event instruments of a :class:`Metrics` (jobs, durations)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        jobs = CounterMetricFamily(
            "hivecore_jobs",
            "Jobs the lane finished, by kind and outcome (done, failed, cancelled).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in m.jobs.items():
            jobs.add_metric([kind, outcome], count)
        yield jobs
        yield m.job_duration.family(
            "hivecore_job_duration_seconds",
            "Seconds a job ran (from its start to its end; the wait for a build turn excluded).",
            ["kind"],
        )
        yield m.nix_duration.family(
            "hivecore_nix_duration_seconds",
            "Seconds a nix child ran, by operation (eval, lock, update, copy, build) and outcome.",
            ["operation", "outcome"],
        )


@attrs.frozen
class _Families:
    """Collected metric families, rendered by ``generate_latest`` in a worker thread."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


@attrs.define(eq=False)
class _Flight:
    """One gather in progress; the scrapes that overlap it wait for its :attr:`body`."""

    done: trio.Event = attrs.field(factory=trio.Event)
    body: bytes | None = None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def agent_state(row: object) -> str:
    """One of :data:`AGENT_STATES` for a views row."""
    pending = getattr(row, "pending", None)
    if pending is not None:
        return str(pending)
    if getattr(row, "failed", False):
        return "failed"
    if getattr(row, "running", False):
        return "paused" if getattr(row, "paused", False) else "running"
    return "stopped"


class DaemonCollector(Collector):
    """Everything read at scrape time (module doc). :attr:`facts` is set by :meth:`Metrics.scrape`
    around one synchronous rendering."""

    def __init__(self, daemon: Daemon, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._d = daemon
        self._metrics = metrics
        self._clock = clock
        self.facts: DbFacts | None = None

    def collect(self) -> Iterator[Metric]:
        d = self._d
        yield from self._agents()
        yield from self._lane()
        yield from self._actors()
        yield from self._broker()
        yield from self._bus()
        store = d.store.statistics()
        yield _counter("hivecore_store_calls", "Requests the store actor ran.", store.calls)
        yield _gauge("hivecore_store_queue_depth", "Requests waiting for the store thread.", store.queued)
        if d.usage is not None:
            reports = CounterMetricFamily(
                "hivecore_turn_reports", "report_turn calls, by outcome.", labels=["outcome"]
            )
            reports.add_metric(["recorded"], d.usage.recorded)
            reports.add_metric(["refused"], d.usage.refused)
            yield reports
        yield from self._dashboard()
        yield from self._alarms()
        if self.facts is not None:
            yield from self._db(self.facts)
        yield _counter("hivecore_metrics_scrapes", "Scrapes rendered before this one.", self._metrics.scrapes)
        yield from self._metrics.sources()

    def _agents(self) -> Iterator[Metric]:
        rows = self._d.views.rows()
        by_state = dict.fromkeys(AGENT_STATES, 0)
        up = GaugeMetricFamily("hivecore_agent_up", "1 while the agent runs, else 0.", labels=["agent"])
        stuck = needs_login = needs_update = 0
        for name, row in sorted(rows.items()):
            state = agent_state(row)
            by_state[state] = by_state.get(state, 0) + 1
            up.add_metric([name], 1.0 if row.running else 0.0)
            stuck += row.stuck is not None
            needs_login += row.needs_login
            needs_update += row.needs_update
        agents = GaugeMetricFamily("hivecore_agents", "Agents by state.", labels=["state"])
        for state, count in by_state.items():
            agents.add_metric([state], count)
        yield agents
        yield up
        conditions = GaugeMetricFamily(
            "hivecore_agents_flagged",
            "Agents flagged stuck, needing a login, needing an update.",
            labels=["condition"],
        )
        conditions.add_metric(["stuck"], stuck)
        conditions.add_metric(["needs_login"], needs_login)
        conditions.add_metric(["needs_update"], needs_update)
        yield conditions
        crash = self._d.crash_watch.statistics()
        crashes = CounterMetricFamily(
            "hivecore_agent_crashes",
            "Agents that stopped without a stop request (crash_watch).",
            labels=["agent"],
        )
        for name, count in sorted(self._d.crash_watch.crashes_by_agent().items()):
            crashes.add_metric([name], count)
        yield crashes
        yield _counter("hivecore_crash_watch_ticks", "crash_watch's full-scan ticks.", crash.ticks)

    def _lane(self) -> Iterator[Metric]:
        lane = self._d.lane.statistics()
        depth = GaugeMetricFamily("hivecore_job_lane_jobs", "Jobs in the lane, by state.", labels=["state"])
        depth.add_metric(["queued"], lane.queued)
        depth.add_metric(["running"], lane.running)
        yield depth

    def _actors(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "hivecore_actor_restarts", "Restarts of each supervised actor after a crash.", labels=["actor"]
        )
        running = GaugeMetricFamily(
            "hivecore_actor_running",
            "1 while the actor runs (0: starting, backing off, stopped, failed).",
            labels=["actor"],
        )
        for child in self._d.supervisor.statistics():
            restarts.add_metric([child.name], child.restarts)
            running.add_metric([child.name], 1.0 if child.state == "running" else 0.0)
        yield restarts
        yield running

    def _broker(self) -> Iterator[Metric]:
        b = self._d.broker.statistics()
        messages = CounterMetricFamily(
            "hivecore_broker_messages",
            "Broker message events: sent (rows written), delivered (handed out, redeliveries included), "
            "redelivered, acked.",
            labels=["event"],
        )
        messages.add_metric(["sent"], b.sent)
        messages.add_metric(["delivered"], b.delivered)
        messages.add_metric(["redelivered"], b.redelivered)
        messages.add_metric(["acked"], b.acked)
        yield messages
        yield _counter("hivecore_broker_vacuumed_messages", "Acked rows the vacuum deleted.", b.vacuumed)
        yield _gauge("hivecore_broker_open_leases", "Connections holding a broker lease.", b.open_leases)
        yield _gauge("hivecore_broker_waiting_receivers", "recv calls waiting for mail.", b.waiters)

    def _bus(self) -> Iterator[Metric]:
        bus = self._d.bus.statistics()
        yield _counter("hivecore_event_bus_events", "Events published on the bus.", bus.published)
        yield _gauge(
            "hivecore_event_bus_subscribers", "Open bus subscriptions (SSE, host.sock).", bus.subscribers
        )
        yield _counter(
            "hivecore_event_bus_dropped_subscribers",
            "Subscribers dropped for falling a full buffer behind.",
            bus.dropped_subscribers,
        )
        yield _gauge(
            "hivecore_event_bus_lag_events",
            "Events published and not yet taken by the slowest subscriber (dropped at the buffer size).",
            bus.max_backlog,
        )
        yield _gauge("hivecore_event_bus_buffer_events", "Each subscriber's buffer size.", bus.buffer)

    def _alarms(self) -> Iterator[Metric]:
        watch = self._d.alarm_watch
        stats = watch.statistics()
        active = GaugeMetricFamily(
            "hivecore_alarms_active",
            "Alarms raised now, by kind and level (warn, crit).",
            labels=["kind", "level"],
        )
        counts = {(kind, level): 0 for kind in ALARM_KINDS for level in ("warn", "crit")}
        for alarm in watch.alarms():
            counts[(alarm.kind, alarm.level)] = counts.get((alarm.kind, alarm.level), 0) + 1
        for (kind, level), count in sorted(counts.items()):
            active.add_metric([kind, level], count)
        yield active
        yield _counter(
            "hivecore_alarms_raised", "Alarms raised since the daemon started.", stats.raised_total
        )
        yield _counter(
            "hivecore_alarms_cleared", "Alarms cleared since the daemon started.", stats.cleared_total
        )
        yield _gauge("hivecore_agents_held", "Agents held stopped after a crash loop.", stats.holds)

    def _dashboard(self) -> Iterator[Metric]:
        clients = self._metrics.sse_clients
        if clients is not None:
            yield _gauge("hivecore_sse_clients", "Open dashboard event streams.", clients())
        listeners = list(self._d.dashboard_listeners)
        if listeners:
            yield _gauge(
                "hivecore_dashboard_connections",
                "Open dashboard connections.",
                sum(listener.open_connections for listener in listeners),
            )
            yield _counter(
                "hivecore_dashboard_refused_connections",
                "Dashboard connections refused (over a cap, inside the fd reserve, head timeouts).",
                sum(
                    listener.refused_over_cap + listener.refused_fd_reserve + listener.head_timeouts
                    for listener in listeners
                ),
            )

    def _db(self, facts: DbFacts) -> Iterator[Metric]:
        now = self._clock()
        known = {MANAGER_AGENT if n == MANAGER_NAME else n for n in self._d.views.rows()}
        known |= {MANAGER_AGENT, OPERATOR_NAME}
        depth = GaugeMetricFamily(
            "hivecore_inbox_messages",
            "Unacked messages per inbox: queued (not handed out) or in_flight (handed out, not acked).",
            labels=["recipient", "state"],
        )
        age = GaugeMetricFamily(
            "hivecore_inbox_oldest_unacked_age_seconds",
            "Age of the oldest unacked message per inbox (0: none).",
            labels=["recipient"],
        )
        for recipient in sorted(known | set(facts.inboxes)):
            inbox = facts.inboxes.get(recipient)
            depth.add_metric([recipient, "queued"], inbox.queued if inbox else 0)
            depth.add_metric([recipient, "in_flight"], inbox.in_flight if inbox else 0)
            age.add_metric([recipient], max(0.0, now - inbox.oldest_sent_at) if inbox else 0.0)
        yield depth
        yield age
        approvals = GaugeMetricFamily(
            "hivecore_approvals_pending", "Pending approvals by kind.", labels=["kind"]
        )
        for kind in sorted({*get_args(ApprovalKind), *facts.approvals_pending}):
            approvals.add_metric([kind], facts.approvals_pending.get(kind, 0))
        yield approvals
        oldest = facts.oldest_approval_at
        yield _gauge(
            "hivecore_approvals_oldest_pending_age_seconds",
            "Age of the oldest pending approval (0: none).",
            max(0.0, now - oldest) if oldest is not None else 0.0,
        )
        turns = CounterMetricFamily("hivecore_agent_turns", "Turns agents reported.", labels=["agent"])
        tokens = CounterMetricFamily(
            "hivecore_agent_tokens", "Tokens of reported turns (input, output, cache).", labels=["agent"]
        )
        cost = CounterMetricFamily(
            "hivecore_agent_cost_usd",
            "Cost of reported turns in USD, as the Claude CLI reports it.",
            labels=["agent"],
        )
        for agent, u in sorted(facts.usage.items()):
            turns.add_metric([agent], u.turns)
            tokens.add_metric([agent], u.tokens)
            cost.add_metric([agent], u.cost_usd)
        yield turns
        yield tokens
        yield cost
