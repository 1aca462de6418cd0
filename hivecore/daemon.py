"""``hive-c0re serve``: build the actors, start them under the supervisor, serve until cancelled.

Ownership: :func:`main` owns one nursery holding the supervisor; the supervisor owns every actor's
task, starts them in the order of :func:`main`'s table (each serving before the next starts) and
stops them in reverse order. The dashboard is optional and comes from the caller (the CLI passes
``web.app.daemon_app``), so nothing here imports ``web``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import attrs
import trio

from actors.agent_sockets import AgentSockets
from actors.alarms import AlarmWatch, default_disk_paths
from actors.crash_watch import CrashWatch
from actors.event_bus import EventBus
from actors.meta_lock import MetaLock
from actors.prompt_scheduler import PromptScheduler
from actors.rebuild_queue import JobLane
from actors.reminder_scheduler import ReminderScheduler
from actors.review_evals import ReviewEvals
from actors.supervisor import ChildSpec, Supervisor
from actors.swarm_link import SwarmLink
from actors.swarm_ops import SwarmOps
from actors.transients import TransientRegistry
from actors.views import Views
from actors.webhooks import Webhooks
from hivecore import agent_users, alarm_metrics, topology, webhook
from hivecore.agent_env import AgentEnv
from hivecore.audit import collecting_jobs
from hivecore.config import Config
from hivecore.container_view import StuckLimits
from hivecore.coordinator import Coordinator
from hivecore.errors import HiveError
from hivecore.jobkinds import Intent
from hivecore.kick import agent_state_dir
from hivecore.meta import MetaRepo
from hivecore.metrics import Metrics
from hivecore.names import MANAGER_NAME
from hivecore.proc import Credentials
from hivecore.repos import Repos
from hivecore.review_eval import ReviewEvaluator
from hivecore.runtime.base import ContainerRuntime
from hivecore.services.agent_settings import AgentSettings
from hivecore.services.approvals import Approvals
from hivecore.services.audit import AuditLog
from hivecore.services.broker import Broker
from hivecore.services.context import JobEnv
from hivecore.services.jobs import Jobs
from hivecore.services.lifecycle import Lifecycle
from hivecore.services.meta_build import MetaBuild
from hivecore.services.meta_update import MetaUpdates
from hivecore.services.notify import Notifier
from hivecore.services.questions import Questions
from hivecore.services.usage import Usage
from hivecore.sockets.host import HostSocket, live_urls
from hivecore.sockets.mcp import AgentSocket, ManagerSocket
from hivecore.statelock import hold_state_lock
from hivecore.store import Store
from hivecore.tombstones import tombstone_names
from hivecore.unix_listener import ensure_accept_error_filter

log = logging.getLogger(__name__)

WebFactory = Callable[["Daemon"], Any]
"""Builds the dashboard's ASGI app from the daemon's handles."""


@attrs.define
class Daemon:
    """Handles to a running daemon (tests, the CLI and the web factory use them)."""

    config: Config
    bus: EventBus
    store: Store
    transients: TransientRegistry
    runtime: ContainerRuntime
    views: Views
    lane: JobLane
    lifecycle: Lifecycle
    coordinator: Coordinator
    supervisor: Supervisor
    crash_watch: CrashWatch
    approvals: Approvals
    jobs: Jobs
    """The lane's runner (routes each job to its service by the job registry)."""
    broker: Broker
    agent_sockets: AgentSockets
    manager_socket: ManagerSocket
    meta: MetaLock
    """The meta flake's actor (the only path to ``<state>/meta``)."""
    meta_updates: MetaUpdates
    meta_build: MetaBuild
    """The one build path (the meta flake)."""
    dashboard_urls: list[str] = attrs.field(factory=list)
    """The dashboard's URLs once it serves (filled in place: the agents' spec reads the port)."""
    dashboard_app: Any = None
    """The dashboard's ASGI app once it is serving (tests reach its hooks through it)."""
    dashboard_listeners: list[Any] = attrs.field(factory=list)
    """The running dashboard's :class:`~hivecore.dashboard_listener.CappedListener` s (their counters)."""
    agent_env: AgentEnv | None = None
    """The operator's environment for agents (the ``--agent-env-file`` and per-agent values)."""
    usage: Usage | None = None
    """Turns reported by the harnesses (``report_turn``) and each agent's liveness (stuck)."""
    questions: Questions | None = None
    """Questions to the operator and between agents, and their TTL actor."""
    alarm_watch: AlarmWatch = attrs.field(kw_only=True)
    """The alarms actor (raised alarms, crash-loop holds)."""
    webhooks: Webhooks | None = attrs.field(default=None, kw_only=True)
    """Notifications to ``--notify-url`` endpoints (None: none configured)."""
    reminders: ReminderScheduler | None = attrs.field(default=None, kw_only=True)
    """The reminder scheduler (``remind``; its actor delivers them when due)."""
    metrics: Metrics = attrs.field(factory=Metrics)
    """This daemon's Prometheus registry and scrape (``/metrics``; :mod:`hivecore.metrics`)."""
    metrics_urls: list[str] = attrs.field(factory=list)
    """The ``--metrics-listen`` listener's URLs once it serves (empty without one)."""
    schedules: PromptScheduler | None = attrs.field(default=None, kw_only=True)
    """The prompt scheduler (SCH3DUL3S: scheduled prompts; its actor fires them)."""
    swarm: SwarmLink | None = attrs.field(default=None, kw_only=True)
    """The swarm link (``--swarm``; docs/swarm.md), else None."""

    def status_summary(self) -> str:
        """One line for systemd's ``STATUS=`` (cached state only: no await, no I/O)."""
        rows = self.views.rows()
        running = sum(1 for v in rows.values() if v.running)
        jobs = len(self.coordinator.jobs())
        alarms = self.coordinator.alarms()
        raised = f", {len(alarms)} alarm(s): {alarms[0].message}" if alarms else ""
        return f"serving: {len(rows)} agents ({running} running), {jobs} jobs queued or running{raised}"

    def healthy(self) -> bool:
        """Whether the watchdog may ping: no supervised actor has given up."""
        return all(c.state != "failed" for c in self.supervisor.statistics())

    review_evals: ReviewEvals | None = attrs.field(default=None, kw_only=True)
    """The background evaluations of proposals for their reviews."""

    audit: AuditLog | None = None
    """The audit trail: verbs are recorded by the verb table's server half; the daemon's own actions
    through ``await daemon.audit.record(verb, args, …)`` (:mod:`hivecore.services.audit`)."""

    def dashboard_port(self) -> int:
        """The port actually bound (the configured one may be 0: ephemeral)."""
        return bound_port(self.config, self.dashboard_urls)


def bound_port(config: Config, urls: list[str]) -> int:
    """The port of the dashboard's first URL once it serves, else the configured one."""
    if urls:
        return int(urls[0].rsplit(":", 1)[1].split("/", 1)[0])
    return config.dashboard_port


GIL_SWITCH_INTERVAL = 0.0005
"""Seconds a worker thread may hold the GIL while the event loop wants it (Python's default is 5 ms).
Probes, file walks and sqlite run in worker threads; with the default a burst of them (20 agents
stopping at once) made the event loop wait tens of ms for the GIL. ``bench/verbs.py`` measures it."""


WORKER_THREADS = 2
"""trio's default worker-thread limit here (trio's own default is 40). Probes and file walks are
short; fewer of them holding the GIL at once keeps the event loop's lag low while 20 agents stop
together (``bench/verbs.py`` part 2: p99 ~30 ms with 40 threads, ~15 ms with 2), and no verb's
latency moved. The store has its own thread token, so sqlite never waits behind a walk."""


def tune_interpreter() -> None:
    """Settings for a latency-sensitive event loop beside busy worker threads, and one log line per
    burst of EMFILE on accept (not one with a traceback every 0.1 s)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    ensure_accept_error_filter()


def limit_worker_threads() -> None:
    """Cap trio's default worker threads at :data:`WORKER_THREADS` (call inside trio).

    Only for a process that is the daemon alone (``hive-c0re serve``, the benchmarks): no daemon code
    waits on the event loop from a worker thread, so a small pool cannot deadlock it, but a test
    that runs blocking clients in worker threads *inside the daemon's own trio run* would take the
    daemon's tokens while it waits for the daemon's answer."""
    trio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS


def make_runtime(config: Config, agent_env: AgentEnv | None = None) -> ContainerRuntime:
    if config.runtime == "nixos":
        from hivecore.runtime.nixos import NixosRuntime

        return NixosRuntime(
            config.paths,
            meta_dir=config.paths.meta,
            runtime_dir=config.runtime_path,
            memory_max=config.agent_memory_max,
            cpu_quota=config.agent_cpu_quota,
            env_source=agent_env.env_for if agent_env is not None else None,
        )
    from hivecore.runtime.process import ProcessRuntime

    return ProcessRuntime(
        config.paths,
        stop_timeout=config.stop_timeout,
        runtime_dir=config.runtime_path,
        env_source=agent_env.env_for if agent_env is not None else None,
    )


def proposed_owner(config: Config) -> Callable[[str], Credentials | None]:
    """Who owns (and reads, for the daemon) a proposed repo: the manager's uid/gid under the process
    runtime with a root daemon (:func:`hivecore.agent_users.credentials`); else ``None``, the
    daemon itself (the nixos runtime maps the manager's ids inside its container). Blocking."""
    if config.runtime != "process":
        return lambda name: None
    return lambda name: agent_users.credentials(config.paths, MANAGER_NAME)


def build(config: Config, runtime: ContainerRuntime | None = None, store: Store | None = None) -> Daemon:
    """The object graph, not yet running (tests start the actors they need, or share a store)."""
    bus = EventBus()
    metrics = Metrics()
    store = store if store is not None else Store(config.paths.db)
    transients = TransientRegistry(bus)
    agent_env = AgentEnv(config.paths.root, config.agent_env_file)
    runtime = runtime if runtime is not None else make_runtime(config, agent_env)
    questions_box: list[Questions] = []  # the views read who waits on the operator through it

    async def known_agents() -> tuple[set[str], list[str]]:
        existing = set(await runtime.list())
        return existing, await trio.to_thread.run_sync(tombstone_names, config.paths, existing)

    broker = Broker(store, bus, lambda: views.rows().keys(), known=known_agents)
    audit_log = AuditLog(store, retention_days=config.retention_days, bus=bus)
    broker.also_sweep.append(audit_log.sweep)  # the hourly sweep keeps the retention
    usage = Usage(store, broker)  # the views read usage in their scans' thread hops
    views = Views(
        config.paths,
        runtime,
        transients,
        bus,
        domain=config.domain,
        agent_env=agent_env,
        activity=usage,
        limits=StuckLimits(config.turn_limit, config.stuck_after),
        waiting=lambda name: questions_box[0].waiting_since(name) if questions_box else None,
    )
    usage.rescan = views.request_rescan
    questions = Questions(store, bus, broker, lambda: views.rows().keys(), rescan=views.request_rescan)
    questions_box.append(questions)
    broker.incarnation_hooks.append(questions.incarnation_ended)
    notifier = Notifier(broker, bus, partial(agent_state_dir, config.runtime, config.paths))
    reminders = ReminderScheduler(
        store,
        broker.post,
        bus,
        config.paths.agents,
        partial(agent_state_dir, config.runtime, config.paths),
        rescan=views.request_rescan,
    )
    broker.incarnation_hooks.append(reminders.incarnation_ended)
    repos = Repos(config.paths, owner=proposed_owner(config))
    meta_repo = MetaRepo(
        config.paths,
        hyperhive_flake=config.hyperhive_flake,
        eval_limits=config.eval_limits,
        timings=metrics.nix_ran,
    )
    meta = MetaLock(meta_repo, bus)
    urls: list[str] = []  # the Daemon's dashboard_urls, filled once the dashboard serves

    async def record_recipients(name: str, allowed: tuple[str, ...] | None) -> None:
        await store.call(lambda c: topology.set_allowed(c, name, allowed))

    meta_build = MetaBuild(
        config,
        runtime,
        repos,
        meta,
        dashboard_port=partial(bound_port, config, urls),
        record_recipients=record_recipients,
    )
    lifecycle = Lifecycle(config, runtime, repos, meta_build, agent_env=agent_env)
    meta_updates = MetaUpdates(meta_build, views)
    review_evals = ReviewEvals(ReviewEvaluator(meta_repo, repos, meta_build.entry), store, bus)
    notifier.on_resolved = review_evals.cancel
    approvals = Approvals(
        lifecycle,
        repos,
        store,
        bus,
        notifier,
        reviews=review_evals,
        meta_updates=meta_updates,
        meta_inputs=lambda: [i.name for i in meta.inputs()],
    )

    def running(name: str) -> bool | None:
        row = views.rows().get(name)
        return None if row is None else row.running

    schedules = PromptScheduler(store, broker.send, bus, running)
    approvals.schedules = schedules
    intent = Intent()
    alarm_watch = AlarmWatch(
        store,
        bus,
        views.rows,
        config.alarm_thresholds,
        disk_paths=default_disk_paths(config.paths.root),
        interval=config.alarm_interval,
    )

    # the daemon's own actions are audit rows: alarm raises, clears and crash-loop holds; question
    # expiries, failed reminder deliveries, schedule firings
    alarm_watch.record = questions.record = reminders.record = schedules.record = audit_log.record
    webhooks = None
    if config.notify_urls:
        webhooks = Webhooks(
            bus,
            [webhook.parse_endpoint(u) for u in config.notify_urls],
            webhook.parse_kinds(config.notify_on),
        )
        alarm_watch.add_source(webhooks.alarms)
    env = JobEnv(
        store=store,
        bus=bus,
        transients=transients,
        views=views,
        notify=notifier,
        intent=intent,
        holds=alarm_watch.holds,
    )
    jobs = Jobs(env, lifecycle, approvals, meta_updates)
    lane = JobLane(store, bus, jobs, intent=intent, on_finished=metrics.job_finished, audit_log=audit_log)
    supervisor = Supervisor(bus)
    coordinator = Coordinator(
        lane,
        views,
        runtime,
        store,
        lifecycle,
        approvals,
        meta_updates,
        broker,
        bus=bus,
        transients=transients,
        supervisor=supervisor,
        settings=AgentSettings(config, agent_env, views),
        usage=usage,
        questions=questions,
        alarm_watch=alarm_watch,
        reminders=reminders,
        schedules=schedules,
    )

    def quiet(name: str) -> bool:
        return transients.get(name) is not None or lane.intent.stopped_on_purpose(name)

    crash_watch = CrashWatch(
        views,
        notifier,
        quiet,
        config.crash_watch_interval,
        runtime=runtime,
        on_crash=alarm_watch.record_crash,
    )
    agent_sockets = AgentSockets(
        config,
        views,
        lambda name: AgentSocket(
            config,
            name,
            broker,
            views,
            usage=usage,
            questions=questions,
            reminders=reminders,
            audit_log=audit_log,
        ),
    )
    manager_socket = ManagerSocket(
        config,
        broker,
        coordinator,
        usage=usage,
        questions=questions,
        reminders=reminders,
        audit_log=audit_log,
    )
    daemon = Daemon(
        config,
        bus,
        store,
        transients,
        runtime,
        views,
        lane,
        lifecycle,
        coordinator,
        supervisor,
        crash_watch,
        approvals=approvals,
        jobs=jobs,
        broker=broker,
        agent_sockets=agent_sockets,
        manager_socket=manager_socket,
        meta=meta,
        meta_updates=meta_updates,
        meta_build=meta_build,
        dashboard_urls=urls,
        agent_env=agent_env,
        usage=usage,
        questions=questions,
        alarm_watch=alarm_watch,
        webhooks=webhooks,
        reminders=reminders,
        metrics=metrics,
        schedules=schedules,
        audit=audit_log,
        review_evals=review_evals,
    )
    if config.swarm is not None:
        daemon.swarm = SwarmLink(config.swarm, views, config.paths.root, store=store, broker=broker, bus=bus)
        ops = SwarmOps(daemon.swarm, config.swarm.operator_hives, coordinator, audit_log)  # operator reach
        metrics.set_source("swarm_ops", ops.families)
        coordinator.swarm = daemon.swarm
        daemon.swarm.questions = questions  # ask across hives (hivecore/swarm_ask.py)
        questions.hive = config.swarm.hive_name
        questions.outbox_added = daemon.swarm.wake_outbox
        questions.unknown_hive = daemon.swarm.unknown_hive
        metrics.set_source("swarm", daemon.swarm.families)
        alarm_watch.add_source(daemon.swarm.alarms)
    metrics.attach(daemon)
    if webhooks is not None:
        metrics.set_source("notifications", partial(alarm_metrics.families, webhooks))
    return daemon


async def main(
    config: Config, *, web_factory: WebFactory | None = None, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until cancelled; ``task_status.started(Daemon)`` once every actor serves."""
    paths = config.paths
    paths.create_layout()
    tune_interpreter()
    with hold_state_lock(paths.lock_file), _log_stop():
        log.info("state dir %s (runtime %s)", paths.root, config.runtime)
        daemon = build(config)
        admin = HostSocket(
            daemon.coordinator,
            daemon.bus,
            config.host_socket_path,
            group=config.admin_group,
            audit_log=daemon.audit,
            urls=live_urls(
                config.domain,
                config.dashboard_host,
                config.dashboard_port,
                # the dashboard's real address (port 0 binds an ephemeral port) once it is serving
                lambda: daemon.dashboard_urls[0] + "/" if daemon.dashboard_urls else None,
            ),
        )
        children = [
            ChildSpec("event_bus", daemon.bus.run),
            ChildSpec("store", daemon.store.run),
            ChildSpec("broker", daemon.broker.run),
            ChildSpec("questions", _questions_of(daemon).run),
            ChildSpec("views", daemon.views.run),
            ChildSpec("approvals", daemon.approvals.run),
            ChildSpec("meta_lock", daemon.meta.run),
            # before the lane: the crash-loop holds are loaded before any job can start an agent
            ChildSpec("alarms", daemon.alarm_watch.run),
            *([ChildSpec("review_evals", daemon.review_evals.run)] if daemon.review_evals else []),
            ChildSpec("rebuild_queue", daemon.lane.run),
            ChildSpec("crash_watch", daemon.crash_watch.run),
            ChildSpec("agent_sockets", daemon.agent_sockets.run),
            ChildSpec("manager_socket", daemon.manager_socket.run),
            ChildSpec("host_socket", admin.run),
        ]
        if daemon.webhooks is not None:
            children.append(ChildSpec("notifications", daemon.webhooks.run))
        if daemon.reminders is not None:
            children.append(ChildSpec("reminders", daemon.reminders.run))
        if daemon.schedules is not None:
            children.append(ChildSpec("schedules", daemon.schedules.run))
        if daemon.swarm is not None:
            # after the views and the sockets: the local hive serves whatever NATS does
            children.append(ChildSpec("swarm_link", daemon.swarm.run))
        children.append(ChildSpec("auto_update", partial(auto_update_child, daemon)))
        if config.ensure_manager:
            children.append(ChildSpec("ensure_manager", partial(ensure_manager_child, daemon)))
        if web_factory is not None:
            children.append(_dashboard_child(daemon, web_factory))
        if config.metrics_listen is not None:
            from hivecore import metrics_http

            serve_metrics = partial(
                metrics_http.serve, config.metrics_listen, daemon.metrics.scrape, urls_out=daemon.metrics_urls
            )
            children.append(ChildSpec("metrics_listener", serve_metrics))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.supervisor.run, children)
            log.info("hive-c0re serving (%d actors)", len(children))
            task_status.started(daemon)


def _questions_of(daemon: Daemon) -> Questions:
    assert daemon.questions is not None  # build() always makes one
    return daemon.questions


async def ensure_manager(daemon: Daemon) -> str:
    """Create the manager if it is missing, start it if it is stopped (reference: ``ensure_manager``).

    Returns what it did: ``spawned``, ``started``, ``running``, or ``stopped on purpose`` (the
    operator stopped it: a restart leaves it stopped). Runs after the job lane is open,
    through the façade, so it is an ordinary journaled job.
    """
    state = (await daemon.runtime.list([MANAGER_NAME])).get(MANAGER_NAME)
    if state is None:
        log.info("ensure_manager: %s is missing; spawning it", MANAGER_NAME)
        await daemon.coordinator.spawn(MANAGER_NAME, source="internal")
        return "spawned"
    if not state.running and daemon.lane.intent.stopped_on_purpose(MANAGER_NAME):
        log.info("ensure_manager: %s was stopped on purpose; leaving it stopped", MANAGER_NAME)
        return "stopped on purpose"
    if not state.running:
        log.info("ensure_manager: %s is stopped; starting it", MANAGER_NAME)
        await daemon.coordinator.start(MANAGER_NAME, source="internal")
        return "started"
    return "running"


async def ensure_manager_child(daemon: Daemon, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The one-shot startup step: serving at once, then :func:`ensure_manager`; a failure is logged
    (the operator sees the manager missing on the dashboard), never a crash loop."""
    task_status.started()
    try:
        await ensure_manager(daemon)
    except HiveError as exc:
        log.error("ensure_manager: could not bring up %s: %s", MANAGER_NAME, exc)
    except Exception:
        log.exception("ensure_manager: could not bring up %s", MANAGER_NAME)


async def auto_update_child(daemon: Daemon, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The one-shot startup step (reference §5.2): serving at once, then the meta sync, the
    ``hyperhive`` bump and a rebuild of every stale agent (see :mod:`hivecore.services.meta_update`).
    A failure is logged, never a crash loop."""
    task_status.started()
    try:
        with collecting_jobs() as jobs:
            rebuilt = await daemon.meta_updates.auto_update(daemon.coordinator.rebuild)
    except HiveError as exc:
        log.error("auto_update: %s", exc)
        await _record_auto_update(daemon, None, jobs, exc)
    except Exception as exc:
        log.exception("auto_update failed")
        await _record_auto_update(daemon, None, jobs, exc)
    else:
        await _record_auto_update(daemon, rebuilt, jobs, None)


async def _record_auto_update(
    daemon: Daemon, rebuilt: list[str] | None, jobs: list[int], exc: Exception | None
) -> None:
    """auto_update's audit row (only when it did something or failed: a start with nothing stale
    adds none)."""
    if daemon.audit is None or (exc is None and not rebuilt and not jobs):
        return
    args = {"rebuilt": rebuilt or []}
    error = None if exc is None else str(exc)
    await daemon.audit.record(
        "auto_update", args, outcome="ok" if exc is None else "failed", error=error, jobs=jobs
    )


def _dashboard_child(daemon: Daemon, web_factory: WebFactory) -> ChildSpec:
    import hypercorn.config

    from hivecore import dashboard_listener

    config = daemon.config
    shutdown = trio.Event()

    async def serve_web(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal shutdown
        shutdown = trio.Event()
        hc = hypercorn.config.Config()
        hc.bind = [f"{config.dashboard_host}:{config.dashboard_port}"]
        hc.graceful_timeout = 1.0  # open SSE streams never finish on their own
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        app = web_factory(daemon)
        daemon.dashboard_app = app
        daemon.dashboard_listeners = []
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                # slots by credentials, a head deadline, the fd reserve: agents share the host network
                partial(
                    dashboard_listener.serve,
                    app,
                    hc,
                    credentials_ok=getattr(app, "hive_credentials_ok", None),
                    shutdown_trigger=shutdown.wait,
                    listeners_out=daemon.dashboard_listeners,
                )
            )
            daemon.dashboard_urls[:] = urls  # in place: the agents' spec reads the port from it
            log.info("dashboard on %s", ", ".join(urls))
            hint = getattr(app, "hive_login_hint", None)
            if callable(hint):
                log.info("%s", hint(urls[0]))
            task_status.started(urls)

    return ChildSpec("dashboard", serve_web, stop=lambda: shutdown.set())


@contextlib.contextmanager
def _log_stop() -> Iterator[None]:
    try:
        yield
    finally:
        log.info("hive-c0re stopped (agents keep running; the next serve re-adopts them)")
