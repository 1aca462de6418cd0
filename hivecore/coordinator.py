"""The coordinator: the thin façade every surface (host.sock, dashboard, manager socket) calls.

Surfaces reach it only through the verb table (:mod:`hivecore.verbs`): a request record's checks
(names, manager protections, meta inputs, text fields) have run before any method here is called,
so it checks only what needs state (does the agent exist? is the input in the lock?), submits a
job to the lane and waits for the outcome, or answers a query from the views actor's cache. It owns
no state and runs no multi-step work itself: cancelling a call abandons the answer, never the job.

It never decides *whether* a caller may call it (the verb table's principals do: an agent socket
never reaches operator verbs); it decides whether the *operation* makes sense now.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.alarms import AlarmWatch
from actors.event_bus import EventBus, Subscription
from actors.event_bus import RefetchRequired as RefetchRequired
from actors.rebuild_queue import JobLane
from actors.supervisor import ChildStatus, Supervisor
from actors.transients import TransientRegistry
from actors.views import Views
from hivecore import agent_users, agentlog, viewers
from hivecore import store as st
from hivecore.alarms import Alarm
from hivecore.errors import BadInput, HiveError, NotAvailable, Refused, UnknownAgent
from hivecore.models import (
    Approval,
    ContainerView,
    Job,
    JobKind,
    JobSource,
    MetaInputView,
    Question,
    TombstoneView,
    Transient,
)
from hivecore.names import MANAGER_NAME, OPERATOR_NAME, validate_name
from hivecore.reminders import Reminder
from hivecore.runtime.base import ContainerRuntime
from hivecore.schedules import Schedule
from hivecore.services.agent_settings import AgentSettings
from hivecore.services.approvals import Approvals
from hivecore.services.broker import Broker
from hivecore.services.lifecycle import Lifecycle
from hivecore.services.meta_update import MetaUpdates
from hivecore.services.questions import Questions
from hivecore.services.usage import Usage
from hivecore.store import Store
from hivecore.swarm import OFF, SwarmStatus
from hivecore.wire.agent import Delivery
from hivecore.wire.host import AgentConfig, EnvKey, LoginState, StateFileView, UsageRow

ALREADY_RUNNING = "already running"
"""What :meth:`Coordinator.start` answers for an agent that runs (nothing was done)."""


class Coordinator:
    def __init__(
        self,
        lane: JobLane,
        views: Views,
        runtime: ContainerRuntime,
        store: Store,
        lifecycle: Lifecycle,
        approvals: Approvals,
        meta_updates: MetaUpdates | None = None,
        broker: Broker | None = None,
        *,
        bus: EventBus | None = None,
        transients: TransientRegistry | None = None,
        supervisor: Supervisor | None = None,
        settings: AgentSettings | None = None,
        usage: Usage | None = None,
        questions: Questions | None = None,
        alarm_watch: AlarmWatch | None = None,
        reminders: Any = None,
        schedules: Any = None,
    ) -> None:
        self._schedules = schedules
        """The prompt scheduler (:class:`actors.prompt_scheduler.PromptScheduler`), if any."""
        self._questions = questions
        self._alarm_watch = alarm_watch
        self._reminders = reminders
        """The reminder scheduler (:class:`actors.reminder_scheduler.ReminderScheduler`), if any."""
        self._settings = settings
        self._usage = usage
        self._broker = broker
        self._bus = bus
        self._transients = transients
        self._supervisor = supervisor
        self._meta_updates = meta_updates
        self._approvals = approvals
        self._lane = lane
        self._views = views
        self._runtime = runtime
        self._store = store
        self._lifecycle = lifecycle

    # --- queries ---------------------------------------------------------------------------------

    def views(self) -> dict[str, ContainerView]:
        """The last scanned rows (what the dashboard and host.sock show)."""
        return self._views.rows()

    def tombstones(self) -> list[TombstoneView]:
        return self._views.tombstones()

    def jobs(self) -> list[Job]:
        return self._lane.snapshot()

    def meta_inputs(self) -> list[MetaInputView]:
        """The meta flake's lock inputs (``read_meta_inputs``, cached; refreshed after each lock change)."""
        meta = self._lifecycle.meta
        return meta.inputs() if meta is not None else []

    def any_stale(self) -> bool:
        """Whether some agent runs older config or base than applied (its row's ``needs_update``)."""
        return any(v.needs_update for v in self._views.rows().values())

    def meta_update_running(self) -> bool:
        return self._lane.running_kind("meta_update") is not None

    async def agent_names(self) -> list[str]:
        """Every agent, from the views cache (each verb rescans its agent; crash_watch seeds it)."""
        await trio.lowlevel.checkpoint()
        return sorted(self._views.rows())

    async def approvals(self) -> list[Approval]:
        return await self._store.call(st.list_approvals)

    async def pending(self, *, only_pending: bool = False) -> list[Approval]:
        """Every approval row (``only_pending``: the pending ones); each pending row carries its
        stored review (an apply_commit's diff against applied main, a spawn's agent.nix)."""
        return await self._approvals.list(diffs=True, only_pending=only_pending)

    async def approval(self, approval_id: int) -> Approval:
        """One approval with its stored review, whatever its status (``hivectl show``)."""
        return await self._approvals.review(approval_id)

    async def require_agent(self, name: object) -> str:
        """A validated name of a container that exists, else :class:`UnknownAgent`/:class:`InvalidName`."""
        valid = validate_name(name)
        if valid not in await self._runtime.list([valid]):
            raise UnknownAgent(valid)
        return valid

    # --- what the dashboard shows (its snapshot and its event stream) ----------------------------

    def current_seq(self) -> int:
        """The event bus's high-water mark (0 without a bus)."""
        return self._bus.current_seq() if self._bus is not None else 0

    def subscribe(self, kinds: list[str] | None = None, *, after_seq: int | None = None) -> Subscription:
        """A bus subscription (:meth:`actors.event_bus.EventBus.subscribe`; ``RefetchRequired`` when
        ``after_seq`` is older than the replay ring)."""
        if self._bus is None:
            raise NotAvailable("this daemon has no event bus")
        return self._bus.subscribe(kinds=kinds, after_seq=after_seq)

    def transients(self) -> dict[str, Transient]:
        return self._transients.snapshot() if self._transients is not None else {}

    # --- alarms (actors/alarms.py) ----------------------------------------------------------------

    swarm: Any = None
    """The swarm link (:class:`actors.swarm_link.SwarmLink`) with ``--swarm``, else None."""

    def swarm_status(self) -> SwarmStatus:
        """This hive's swarm link and every hive it sees (``state`` ``off`` without ``--swarm``)."""
        return self.swarm.status() if self.swarm is not None else OFF

    async def swarm_op(self, request: Any, actor: Any) -> Any:
        """``swarm_op``: an operator verb on another hive (:meth:`actors.swarm_ops.SwarmOps.ask`)."""
        ops = getattr(self.swarm, "ops", None)
        if ops is None:
            raise NotAvailable(
                "this hive is not in a swarm (start hive-c0re serve with --swarm nats://HOST:PORT "
                "--hive-name NAME)"
            )
        return await ops.ask(request, actor)

    def alarms(self) -> list[Alarm]:
        """The raised alarms (crit first, then oldest first)."""
        return self._alarm_watch.alarms() if self._alarm_watch is not None else []

    async def release(self, name: object, *, source: JobSource = "host_sock") -> None:
        """Lift ``name``'s crash-loop hold (:class:`~hivecore.errors.HiveError` if it is not held)."""
        valid = validate_name(name)
        if self._alarm_watch is None or not await self._alarm_watch.release(valid):
            raise HiveError(f"{valid} is not held (only an agent held after a crash loop can be released)")

    def actors(self) -> list[ChildStatus]:
        """The supervisor's children (name, state, restarts…)."""
        return self._supervisor.statistics() if self._supervisor is not None else []

    async def recent_messages(self, limit: int, recipient: str | None = None) -> list[st.MessageRow]:
        """The newest ``limit`` broker messages (to ``recipient`` only, when given), oldest first."""
        return await self._store.call(lambda c: st.recent_messages(c, limit, recipient))

    # --- verbs (each one job on the lane) ----------------------------------------------------------

    async def _submit(
        self, kind: JobKind, name: str, source: JobSource, args: Mapping[str, Any] | None = None
    ) -> Job:
        return await self._lane.submit(kind, name, source=source, args=args)

    async def start(self, name: object, *, source: JobSource = "host_sock") -> str:
        """Start an agent: ``started``, or ``already running`` for a running agent (no job, no
        kick; one the operator had marked stopped still gets its start job, which clears it)."""
        valid = await self.require_agent(name)
        if self._lane.busy_with(valid) is None and not self._lane.intent.stopped_on_purpose(valid):
            state = (await self._runtime.list([valid])).get(valid)
            if state is not None and state.running:
                return ALREADY_RUNNING
        await self._submit("start", valid, source)
        return "started"

    async def stop(self, name: object, *, graceful: bool = True, source: JobSource = "host_sock") -> None:
        await self._submit("stop", await self.require_agent(name), source, {"graceful": graceful})

    async def kill(self, name: object, *, source: JobSource = "host_sock") -> None:
        await self._submit("kill", await self.require_agent(name), source)

    async def restart(self, name: object, *, source: JobSource = "host_sock") -> None:
        await self._submit("restart", await self.require_agent(name), source)

    async def rebuild(self, name: object, *, source: JobSource = "host_sock") -> None:
        await self._submit("rebuild", await self.require_agent(name), source)

    async def destroy(self, name: object, *, purge: bool = False, source: JobSource = "host_sock") -> None:
        """Destroy an agent (its state kept unless ``purge``). ``destroy --purge`` of an agent whose
        container is already gone but whose state is kept (a destroy that failed half-way) finishes
        the job: it purges."""
        valid = validate_name(name)
        if purge and valid not in await self._runtime.list([valid]):
            kept: list[Path] = await trio.to_thread.run_sync(self._lifecycle.purge_targets, valid)
            if kept:
                await self._submit("purge", valid, source)
                return
        await self._submit("destroy", await self.require_agent(valid), source, {"purge": purge})

    async def purge_tombstone(self, name: object, *, source: JobSource = "host_sock") -> None:
        """Delete a destroyed agent's kept state (agents/<n>/ and applied/<n>/); no undo."""
        valid = validate_name(name)
        if valid in await self._runtime.list([valid]):
            raise Refused(f'agent "{valid}" still has a live container; destroy it first')
        targets = await trio.to_thread.run_sync(self._lifecycle.purge_targets, valid)
        if not targets:
            raise HiveError(f'no kept state for "{valid}"')
        await self._submit("purge", valid, source)

    async def spawn(self, name: object, *, source: JobSource = "host_sock") -> None:
        """Privileged spawn (no approval): create the state layout and start the agent (the daemon
        spawns the manager itself this way; the spawn verb's record refuses it)."""
        valid = validate_name(name)
        if valid in await self._runtime.list([valid]):
            raise Refused(f'agent "{valid}" already exists')
        await self._submit("spawn", valid, source)

    async def meta_update(
        self, inputs: list[str], *, source: JobSource = "host_sock", wait: bool = True
    ) -> Job:
        """Update the chosen meta inputs (checked names: :class:`~hivecore.wire.host.MetaUpdateRequest`;
        one lock update, one commit), then rebuild the agents they affect one at a time:
        ``hyperhive`` every agent, ``agent-<n>`` only n. One at a time: a second request while one
        runs is refused (by the lane: ``meta_update`` is a singleton kind). ``wait=False`` returns the
        accepted job at once. An input the lock does not have is :class:`BadInput`."""
        meta = self._lifecycle.meta
        if meta is None or not meta.running or self._meta_updates is None:
            raise NotAvailable("the meta flake is not available (hive-c0re is starting or stopping)")
        names = list(inputs)
        known = [i.name for i in meta.inputs()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInput(
                f"unknown meta input(s): {', '.join(unknown)}; the lock has: {', '.join(known) or 'none'}"
            )
        if not wait:
            return self._lane.submit_nowait("meta_update", None, source=source, args={"inputs": names})
        return await self._lane.submit("meta_update", None, source=source, args={"inputs": names})

    async def set_paused(self, name: object, paused: bool, *, source: JobSource = "host_sock") -> None:
        """Write or remove the agent's pause marker; works while stopped; idempotent. An unknown agent
        is :class:`UnknownAgent`, found by the job itself (in the marker's thread hop: one hop less
        than :meth:`require_agent` first)."""
        await self._submit("set_paused", validate_name(name), source, {"paused": paused})

    # --- approvals (requests are rows; approve and deny are jobs on the lane) -----------------------

    async def request_spawn(
        self, name: str, description: str | None = None, *, source: JobSource = "host_sock"
    ) -> Approval:
        """Queue a spawn approval for a new agent (refused for an existing agent and the manager)."""
        return await self._approvals.request_spawn(name, description, requester=_requester(source))

    async def request_init_config(
        self, name: str, description: str | None = None, *, source: JobSource = "manager"
    ) -> Approval:
        """Queue seeding a config repo for a new agent (refused when it has one)."""
        return await self._approvals.request_init_config(name, description, requester=_requester(source))

    async def request_apply_commit(
        self, agent: object, commit_ref: object, description: object = None, *, source: JobSource = "manager"
    ) -> Approval:
        """Pin a commit (7-40 hex) of the agent's proposed repo and queue it for the operator."""
        return await self._approvals.request_apply_commit(
            agent, commit_ref, description, requester=_requester(source)
        )

    async def approve(self, approval_id: object, *, source: JobSource = "host_sock") -> None:
        """Carry out a pending approval as a job (an apply_commit builds; its failure is raised)."""
        kind, agent, args = await self._approvals.approve_job(approval_id)
        await self._lane.submit(kind, agent, source=source, args=args)

    async def cancel_approval(self, approval_id: object, *, source: JobSource = "manager") -> None:
        """Withdraw one of the caller's own pending requests (status ``cancelled``, announced like
        any resolution): a job on the lane for the approval's agent, so it never races the
        approval being carried out (then it is refused, naming that job)."""
        kind, agent, args = await self._approvals.cancel_job(approval_id, _requester(source))
        running = self._lane.running_kind("meta_update")
        if (
            running is not None
            and (await self._approvals.get(args["approval_id"])).kind == "update_meta_inputs"
        ):
            raise Refused(
                f"a meta update is running (job {running.id}); approval {args['approval_id']} can be "
                "withdrawn once it is done, if it is still pending"
            )
        await self._lane.submit(kind, agent, source=source, args=args)

    async def request_update_meta_inputs(
        self, inputs: list[str] | None, description: str | None = None, *, source: JobSource = "manager"
    ) -> Approval:
        """Queue an update of meta inputs for the operator (each name checked against the lock)."""
        return await self._approvals.request_update_meta_inputs(
            inputs, description, requester=_requester(source)
        )

    async def deny(
        self, approval_id: object, note: str | None = None, *, source: JobSource = "host_sock"
    ) -> None:
        """Deny a pending approval (an apply_commit gets an annotated ``denied/<id>`` tag)."""
        kind, agent, args = await self._approvals.deny_job(approval_id, note)
        await self._lane.submit(kind, agent, source=source, args=args)

    # --- questions (hivecore/services/questions.py) -------------------------------------------------

    def _question_service(self) -> Questions:
        if self._questions is None:
            raise NotAvailable("this daemon has no questions service")
        return self._questions

    async def open_questions(self) -> list[Question]:
        """The open questions (to the operator and between agents), oldest first."""
        return await self._question_service().open()

    async def answer_question(self, question_id: int, answer: str) -> Question:
        """The operator answers open question ``question_id`` (any: it overrides a peer question)."""
        return await self._question_service().answer(question_id, answer, by=OPERATOR_NAME)

    async def cancel_question(self, question_id: int) -> Question:
        """The operator cancels open question ``question_id`` (its asker hears ``[cancelled]``)."""
        return await self._question_service().cancel(question_id)

    # --- messages and logs --------------------------------------------------------------------------

    async def op_send(self, to: str, body: str) -> list[int]:
        """Send ``body`` from the operator to ``to`` (an agent, ``manager`` or ``*``); the queued ids."""
        if self._broker is None:
            raise NotAvailable("this daemon has no broker")
        return await self._broker.send(OPERATOR_NAME, to, body)

    async def ack_operator_inbox(self, upto: int) -> int:
        """The operator has seen its inbox up to message ``upto`` (the dashboard showed it): ack it, so
        the senders' quota frees and the vacuum reclaims the rows; how many were not yet."""
        if self._broker is None:
            return 0
        return await self._broker.ack_read(OPERATOR_NAME, upto)

    async def operator_inbox(self, limit: int) -> list[Delivery]:
        """The operator's newest ``limit`` messages, oldest first; reading them acks them."""
        if self._broker is None:
            raise NotAvailable("this daemon has no broker")
        return await self._broker.read(OPERATOR_NAME, limit)

    async def agent_log(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of an agent's ``agent.log`` (:func:`hivecore.agentlog.tail`)."""
        return (await self.agent_log_from(name, lines))[0]

    async def agent_log_from(self, name: str, lines: int, offset: int | None = None) -> tuple[list[str], int]:
        """``(lines, end offset)`` of an agent's ``agent.log`` (:func:`hivecore.agentlog.read`)."""
        config = self._lifecycle.config
        if config.runtime != "process":
            raise NotAvailable(
                "agent logs are read from the process runtime's agent.log; journal logs are not available yet"
            )
        valid = validate_name(name)
        if valid not in self._views.rows():
            raise UnknownAgent(valid)
        try:
            return await trio.to_thread.run_sync(
                agentlog.read, config.paths.run_process, valid, lines, offset
            )
        except OSError as exc:
            raise Refused(f"cannot read the log of {valid}: {exc.strerror or exc}") from None

    # --- viewers (read-only: issue 18 item 6) -------------------------------------------------------

    async def agent_config(self, name: object) -> AgentConfig:
        """The ``agent.nix`` of ``name``'s applied ``main`` (:meth:`Repos.applied_agent_nix`: git only
        in the daemon-owned applied repo, program-running keys off, capped). :class:`UnknownAgent`
        for a name without a container; :class:`NotAvailable` when it has no applied repo."""
        valid = await self.require_agent(name)
        repos = self._lifecycle.repos
        if not await repos.is_repo(repos.applied(valid)):
            raise NotAvailable(f"{valid} has no applied config repo (it runs the bundled harness as is)")
        sha, text, truncated = await repos.applied_agent_nix(valid)
        return AgentConfig(
            name=valid,
            sha=sha,
            deployed_sha=self._lifecycle.builder.deployed_rev(valid),
            agent_nix=text,
            truncated=truncated,
        )

    async def state_file(self, name: object, path: str) -> StateFileView:
        """One regular file of ``name``'s state dir, read as :mod:`hivecore.viewers` says (no link
        followed, at most 1 MiB, no FIFO or device). :class:`UnknownAgent` for a name without a
        container; :class:`BadInput`/:class:`Refused`/404 naming the rule otherwise."""
        valid = await self.require_agent(name)
        paths = self._lifecycle.config.paths
        parts = viewers.state_path_parts(valid, path, paths.agent_state(valid))

        def read() -> viewers.StateFile:
            owner = agent_users.recorded_uid(paths, valid) if agent_users.daemon_is_root() else None
            return viewers.read_state_file(paths.agents, valid, parts, owner=owner)

        found = await trio.to_thread.run_sync(read)
        return StateFileView(**attrs.asdict(found))

    # --- per-agent settings (no job: one small file write and a rescan) ----------------------------

    def _agent_settings(self) -> AgentSettings:
        if self._settings is None:
            raise NotAvailable("per-agent settings are not configured in this daemon")
        return self._settings

    async def login(self, name: str, secret: str) -> LoginState:
        """Log agent ``name`` in (:meth:`AgentSettings.login`); the secret is never logged."""
        valid = await self.require_agent(name)
        return await self._agent_settings().login(valid, secret)

    async def logout(self, name: str) -> LoginState:
        valid = await self.require_agent(name)
        return await self._agent_settings().logout(valid)

    async def agent_env(self, name: str, set_: dict[str, str], unset: list[str]) -> list[EnvKey]:
        """Change (or, with nothing to change, list) agent ``name``'s own environment keys."""
        valid = await self.require_agent(name)
        return await self._agent_settings().set_env(valid, set_, unset)

    async def usage(self, name: str | None = None) -> list[UsageRow]:
        """Every agent's usage (``name``: only that one), in row order."""
        if self._usage is None:
            raise NotAvailable("this daemon records no usage")
        names = [await self.require_agent(name)] if name is not None else list(self._views.rows())
        found = await self._usage.summaries(names)
        rows = []
        for n in names:
            s = found.get(n)
            rows.append(UsageRow(name=n, **attrs.asdict(s)) if s is not None else UsageRow(name=n))
        return rows

    # --- reminders (actors/reminder_scheduler.py) ---------------------------------------------------

    def _scheduler(self) -> Any:
        if self._reminders is None:
            raise NotAvailable("this daemon runs no reminder scheduler")
        return self._reminders

    async def reminders(self, name: str | None = None, *, done: bool = False) -> list[Reminder]:
        """Pending reminders, earliest due first (``name``: that agent's; ``done``: also the sent and
        failed ones still kept; :class:`UnknownAgent` for a ``name`` with none that is no agent, so a
        misspelt name is not answered "no reminders")."""
        rows: list[Reminder] = await self._scheduler().listed(name, done=done)
        if name is not None and not rows:
            await self.require_agent(name)
        return rows

    async def cancel_reminder(self, reminder_id: int) -> Reminder:
        """Delete a pending reminder (:class:`~hivecore.reminders.UnknownReminder` if none)."""
        row: Reminder = await self._scheduler().cancel(reminder_id)
        return row

    # --- scheduled prompts (actors/prompt_scheduler.py) ---------------------------------------------

    def _prompt_scheduler(self) -> Any:
        if self._schedules is None:
            raise NotAvailable("this daemon runs no prompt scheduler")
        return self._schedules

    async def schedules(self, *, done: bool = False) -> list[Schedule]:
        """Active and requested schedules, soonest first (``done``: also finished and cancelled)."""
        rows: list[Schedule] = await self._prompt_scheduler().listed(done=done)
        return rows

    async def schedule(
        self, to: list[str], body: str, every: str | None, at: str | None, description: str | None = None
    ) -> Schedule:
        """The operator's new schedule (checked fields); every target must be an agent."""
        row: Schedule = await self._prompt_scheduler().schedule(to, body, every, at, description)
        return row

    async def unschedule(self, schedule_id: int, target: str | None = None) -> Schedule:
        row: Schedule = await self._prompt_scheduler().cancel(schedule_id, target)
        return row

    async def request_schedule_prompt(
        self,
        to: list[str],
        body: str,
        every: str | None,
        at: str | None,
        description: str | None = None,
        *,
        source: JobSource = "manager",
    ) -> Approval:
        """The manager's request: a schedule in state ``requested`` and a ``schedule_prompt``
        approval for it (approving activates it; denying cancels it)."""
        scheduler = self._prompt_scheduler()
        row = await scheduler.schedule(
            to, body, every, at, description, owner=MANAGER_NAME, state="requested"
        )
        try:
            approval = await self._approvals.request_schedule_prompt(
                row, description, requester=_requester(source)
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await scheduler.cancel(row.id)
            raise
        await scheduler.set_source(row.id, f"approval:{approval.id}")
        return approval


def _requester(source: JobSource) -> str:
    """Who a request counts against for the pending quota: the manager, or the operator."""
    return "manager" if source == "manager" else "operator"
