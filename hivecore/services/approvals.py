"""Approvals (reference §2): nothing changes an agent until the operator approves.

The manager (or the operator) *requests*; the row is the audit trail (never vacuumed). Kinds:
``spawn``, ``init_config``, ``apply_commit`` and ``update_meta_inputs`` (a row only, until the meta
flake). Statuses: ``pending`` → ``approved`` | ``denied`` | ``failed`` | ``cancelled``; a row
resolves exactly once (:func:`hivecore.store.resolve_approval`).

Requests run in the caller's task but shielded (a hung-up caller cannot leave a half-made row; the
shield ends :data:`hivecore.shutdown.SHIELDED_WORK_LIMIT` s after shutdown starts;
every git call has a wall-clock limit), and a kill -9 mid-request is swept at the next start
(:meth:`Approvals.run`).
Approve and deny are jobs on the lane (:meth:`Approvals.run_job`): one job per agent, the
apply_commit build in the build FIFO, journaled and replayed after a crash.

apply_commit follows the tag state machine (reference §2.5) in the agent's applied repo:
``proposal/<id>`` (pinned at request time) → ``approved/<id>`` + ``building/<id>`` → main moved to
the pinned sha → :meth:`Lifecycle.rebuild_agent` (the one build seam, with the job's
:class:`~hivecore.services.context.JobContext`) → ``deployed/<id>``, or an
annotated ``failed/<id>`` with main rolled back. A replay after a crash never rebuilds: it rolls main
back, tags ``failed/<id>`` and tells the manager.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs
import trio

from hivecore import agent_users, shutdown
from hivecore import store as st
from hivecore.errors import BadInput, HiveError, NotAvailable, Refused, UnknownAgent, UnknownApproval
from hivecore.kick import REASON_CONFIG_APPLIED
from hivecore.models import Approval, JobKind, ReviewEval
from hivecore.names import MANAGER_NAME, OPERATOR_NAME, validate_name
from hivecore.repos import PREVIOUS_MAIN, Repos, is_commit_ref
from hivecore.services.context import JobContext
from hivecore.services.handles import Publisher
from hivecore.services.lifecycle import Lifecycle
from hivecore.services.notify import Notifier
from hivecore.store import Store
from hivecore.wire.events import ApprovalAdded
from hivecore.wire.helper import ConfigReady, Rebuilt

log = logging.getLogger(__name__)

MAX_PENDING_PER_REQUESTER = 32
"""Pending approvals one requester (the manager; the operator) may have at once: one more is
refused with :class:`~hivecore.store.QuotaExceeded` naming this quota."""
MAX_TEXT = 4096
"""Longest description or note accepted."""
RESTARTED_NOTE = "hive-c0re restarted during the build; nothing was deployed. Request it again"
UNFETCHED_NOTE = "hive-c0re restarted before the proposal was fetched; request it again"


META_AGENT = "hm1nd"
"""The ``agent`` of an ``update_meta_inputs`` row (it concerns no one agent; the manager asked)."""


def meta_inputs_of(approval: Approval) -> list[str]:
    """The input names an ``update_meta_inputs`` row carries (its ``commit_ref``, a JSON list)."""
    try:
        names = json.loads(approval.commit_ref or "[]")
    except ValueError:
        names = []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def parent_of(approval: Approval) -> str:
    """Who an approved spawn's agent is the child of (:mod:`hivecore.topology`): the manager for
    its own requests, else the operator."""
    return MANAGER_NAME if approval.requester == "manager" else OPERATOR_NAME


def _text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise HiveError(f"{what} must be a string")
    if len(value) > MAX_TEXT:
        raise HiveError(f"{what} is longer than {MAX_TEXT} characters")
    return value


@attrs.define
class Approvals:
    lifecycle: Lifecycle
    repos: Repos
    store: Store
    bus: Publisher
    notifier: Notifier
    reviews: Any = None
    """The review evaluations actor's handle (:class:`actors.review_evals.ReviewEvals`): every
    apply_commit, spawn and update_meta_inputs request is evaluated in the background; ``None``:
    requests carry no evaluation."""
    meta_updates: Any = None
    """The meta-update service (:class:`hivecore.services.meta_update.MetaUpdates`): approving an
    ``update_meta_inputs`` runs its job."""
    meta_inputs: Any = None
    """``() -> list[str]``: the meta lock's input names (``update_meta_inputs`` checks against it)."""
    _started: bool = attrs.field(default=False, init=False)
    schedules: Any = None
    """The prompt scheduler (:class:`actors.prompt_scheduler.PromptScheduler`): approving a
    ``schedule_prompt`` activates the schedule it requested."""

    # --- startup ---------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """At the first start: clear what a crash left (scratch repos, stale git locks in every
        applied repo, unsettled rollbacks); fail apply_commit rows a kill -9 left without a pinned
        commit; then idle."""
        if not self._started:  # a supervisor restart of this actor must not touch live work
            self._started = True
            await self.repos.clear_scratch()
            await self.repos.clear_stale_locks()
            await self._settle_rollbacks()
        failed = await self.store.call(lambda c: st.fail_unfetched_apply_commits(c, UNFETCHED_NOTE))
        for approval_id in failed:
            log.warning("approval %d: its request was interrupted; marked failed", approval_id)
            approval = await self.get(approval_id)
            await self._announce(approval)
        task_status.started(self)
        await trio.sleep_forever()

    # --- queries ---------------------------------------------------------------------------------

    async def get(self, approval_id: object) -> Approval:
        if not isinstance(approval_id, int) or isinstance(approval_id, bool):
            raise HiveError("an approval id must be an integer")
        approval = await self.store.call(lambda c: st.get_approval(c, approval_id))
        if approval is None:
            raise UnknownApproval(approval_id)
        return approval

    async def pending(self, approval_id: object) -> Approval:
        """The approval, if it is still pending; else a clear refusal (nothing changes)."""
        approval = await self.get(approval_id)
        self._still_pending(approval)
        return approval

    async def list(self, *, diffs: bool = False, only_pending: bool = False) -> list[Approval]:
        """Every row (``only_pending``: the pending ones); with ``diffs``, each pending row carries
        its review as stored at request time (``diff``, ``files``, ``commit_message``;
        ``agent_nix`` for a spawn): nothing is recomputed."""
        return await self.store.call(lambda c: st.list_approvals(c, review=diffs, only_pending=only_pending))

    async def review(self, approval_id: int) -> Approval:
        """One row with its stored review, whatever its status; :class:`UnknownApproval` if none."""
        approval = await self.store.call(lambda c: st.get_approval(c, approval_id, review=True))
        if approval is None:
            raise UnknownApproval(approval_id)
        return approval

    async def _exists(self, name: str) -> bool:
        return name in await self.lifecycle.runtime.list([name])

    async def _prepared(self, name: str) -> bool:
        """A config the manager prepares for an agent not spawned yet: an ``init_config`` seeded its
        proposed repo and no agent of the name ever ran (no state dir; a tombstone has one)."""
        state = self.lifecycle.config.paths.agent_state(name)
        never_ran = not await trio.to_thread.run_sync(os.path.lexists, state)
        return never_ran and await self.repos.proposed_exists(name)

    async def _pin_prepared(self, approval: Approval) -> Approval:
        """Pin the prepared config's ``main`` for a spawn approval (its review: the diff against the
        template, the commits, the ``agent.nix`` it deploys); a failure fails the row."""
        name = approval.agent
        try:
            pinned = await self.repos.fetch_prepared(name, approval.id)
            agent_nix = await self.repos.agent_nix_at(name, pinned.sha)
            await self.store.call(
                lambda c: st.set_review(
                    c,
                    approval.id,
                    pinned.sha,
                    pinned.files_json(),
                    pinned.diff,
                    pinned.commit_message,
                    agent_nix=agent_nix,
                )
            )
        except HiveError as exc:
            note = str(exc)
            failed = await self.store.call(lambda c: st.resolve_approval(c, approval.id, "failed", note))
            if failed is not None:
                self._resolved_event(failed)
            raise HiveError(f"approval {approval.id} failed: {note}") from None
        return attrs.evolve(
            approval,
            fetched_sha=pinned.sha,
            diff=pinned.diff,
            files=pinned.files,
            commit_message=pinned.commit_message,
            agent_nix=agent_nix,
        )

    # --- requests --------------------------------------------------------------------------------

    # The request records (hivecore.wire.host / hivecore.wire.manager) have checked names (not the
    # manager, not its inbox) and text lengths; what is checked here needs state.

    async def request_spawn(
        self, name: str, description: str | None = None, *, requester: str = "operator"
    ) -> Approval:
        """Queue a spawn; the row carries the ``agent.nix`` (and its commit, ``fetched_sha``) the
        spawn will deploy: the template for a new agent, the kept applied main for a tombstone."""
        valid = validate_name(name)
        text = description
        if await self._exists(valid):
            raise Refused(f'agent "{valid}" already exists')
        if await self._prepared(valid):
            return await self._request_prepared_spawn(valid, text, requester)
        sha, agent_nix = await self.repos.spawn_preview(valid)
        approval = await self.store.call(
            lambda c: st.insert_approval_unless_pending(
                c,
                valid,
                "spawn",
                "",
                text,
                requester=requester,
                quota=MAX_PENDING_PER_REQUESTER,
                fetched_sha=sha,
                agent_nix=agent_nix,
            )
        )
        if approval is None:
            raise Refused(f'a spawn of "{valid}" is already waiting for approval')
        log.info("approval %d: spawn %s requested (deploys %s)", approval.id, valid, sha[:12])
        approval = await self._queue_review(approval)
        self._added(attrs.evolve(approval, agent_nix=agent_nix))
        return approval

    async def _request_prepared_spawn(self, name: str, description: str | None, requester: str) -> Approval:
        """A spawn of the config the manager prepared: its ``main`` is pinned now, like an
        apply_commit, so what the operator reviews is what the spawn deploys."""
        with shutdown.shielded():
            if not await self.repos.applied_seeded(name):
                await self.repos.seed_applied(name)  # the template: what the review diffs against
            approval = await self.store.call(
                lambda c: st.insert_approval_unless_pending(
                    c, name, "spawn", "", description, requester=requester, quota=MAX_PENDING_PER_REQUESTER
                )
            )
            if approval is None:
                raise Refused(f'a spawn of "{name}" is already waiting for approval')
            approval = await self._pin_prepared(approval)
        log.info(
            "approval %d: spawn %s requested (deploys its prepared config %s)",
            approval.id,
            name,
            approval.fetched_sha,
        )
        approval = await self._queue_review(approval)
        self._added(approval)
        return attrs.evolve(approval, diff=None, files=None, commit_message=None)

    async def request_init_config(
        self, name: str, description: str | None = None, *, requester: str = "manager"
    ) -> Approval:
        valid = validate_name(name)
        text = description
        if await self.repos.proposed_exists(valid):
            raise Refused(f'"{valid}" already has a config repo')
        approval = await self.store.call(
            lambda c: st.insert_approval_unless_pending(
                c, valid, "init_config", "", text, requester=requester, quota=MAX_PENDING_PER_REQUESTER
            )
        )
        if approval is None:
            raise Refused(f'an init_config of "{valid}" is already waiting for approval')
        log.info("approval %d: init_config %s requested", approval.id, valid)
        self._added(approval)
        return approval

    async def request_apply_commit(
        self, agent: object, commit_ref: object, description: object = None, *, requester: str = "manager"
    ) -> Approval:
        """Pin ``commit_ref`` of the agent's proposed repo for the operator; never a phantom row.

        Bad input is refused with no row; a failure after the row exists (the fetch, the pin) marks
        it ``failed`` with the reason, which is also raised to the requester.
        """
        name = validate_name(agent)
        if not is_commit_ref(commit_ref):
            shown = commit_ref if isinstance(commit_ref, str) and len(commit_ref) <= 60 else "that"
            raise HiveError(
                f"commit_ref must be a commit sha (7-40 hex digits), not {shown!r}; "
                "branch and tag names are refused so the approval pins one commit"
            )
        assert isinstance(commit_ref, str)
        text = description if isinstance(description, str) else None
        if not await self._exists(name):
            if not await self._prepared(name):
                raise UnknownAgent(name)
            # a config prepared after init_config: approving the commit spawns the agent with it
            if not await self.repos.applied_seeded(name):
                await self.repos.seed_applied(name)
        with shutdown.shielded():
            approval = await self.store.call(
                lambda c: st.insert_approval(
                    c,
                    name,
                    "apply_commit",
                    commit_ref,
                    text,
                    requester=requester,
                    quota=MAX_PENDING_PER_REQUESTER,
                )
            )
            try:
                pinned = await self.repos.fetch_proposal(name, commit_ref, approval.id)
                await self.store.call(
                    lambda c: st.set_review(
                        c, approval.id, pinned.sha, pinned.files_json(), pinned.diff, pinned.commit_message
                    )
                )
            except HiveError as exc:
                note = str(exc)
                failed = await self.store.call(lambda c: st.resolve_approval(c, approval.id, "failed", note))
                if failed is not None:
                    self._resolved_event(failed)
                log.warning("approval %d: apply_commit %s %s failed: %s", approval.id, name, commit_ref, note)
                raise HiveError(f"approval {approval.id} failed: {note}") from None
        sha = pinned.sha
        approval = attrs.evolve(
            approval,
            fetched_sha=sha,
            diff=pinned.diff,
            files=pinned.files,
            commit_message=pinned.commit_message,
        )
        log.info("approval %d: apply_commit %s %s pinned at %s", approval.id, name, commit_ref, sha[:12])
        approval = await self._queue_review(approval)
        self._added(approval)
        return attrs.evolve(approval, diff=None, files=None, commit_message=None)

    async def _queue_review(self, approval: Approval) -> Approval:
        """Mark ``approval``'s evaluation pending and queue it (nothing when there is no evaluator)."""
        if self.reviews is None:
            return approval
        aid = approval.id
        await self.store.call(lambda c: st.set_evaluation(c, aid, "pending"))
        self.reviews.submit(aid, approval.requester)
        return attrs.evolve(approval, evaluation=ReviewEval())

    def _added(self, approval: Approval) -> None:
        self.bus.publish(
            ApprovalAdded(
                id=approval.id,
                agent=approval.agent,
                approval_kind=approval.kind,
                commit_ref=approval.commit_ref,
                fetched_sha=approval.fetched_sha,
                diff=approval.diff,
                description=approval.description,
                files=approval.files,
                commit_message=approval.commit_message,
                agent_nix=approval.agent_nix,
                requester=approval.requester,
                evaluation=approval.evaluation,
            )
        )

    # --- what approving means: a job ---------------------------------------------------------------

    async def approve_job(self, approval_id: object) -> tuple[JobKind, str | None, dict[str, Any]]:
        """The lane job that carries out approving ``approval_id`` (refused when that cannot happen).
        A row whose review evaluation failed is still built if approved (the operator was shown
        nix's error): the build fails with the same error, rolls back and deploys nothing."""
        approval = await self.pending(approval_id)
        args: dict[str, Any] = {"approval_id": approval.id}
        match approval.kind:
            case "apply_commit":
                return "apply_commit", approval.agent, args
            case "spawn":
                if await self._exists(approval.agent):
                    raise Refused(f'agent "{approval.agent}" already exists')
                return "spawn", approval.agent, args
            case "init_config":
                return "init_config", approval.agent, args
            case "schedule_prompt":
                return "schedule_prompt", approval.agent, args
            case "update_meta_inputs":
                return "meta_update", None, {**args, "inputs": meta_inputs_of(approval)}
            case _:
                raise NotAvailable(f"approving {approval.kind} is not available in this hive-c0re")

    async def deny_job(
        self, approval_id: object, note: str | None = None
    ) -> tuple[JobKind, str, dict[str, Any]]:
        approval = await self.pending(approval_id)
        return "deny", approval.agent, {"approval_id": approval.id, "note": note}

    async def cancel_job(self, approval_id: object, requester: str) -> tuple[JobKind, str, dict[str, Any]]:
        """The lane job that withdraws ``approval_id`` for ``requester``: only its own pending
        requests (another's is refused as if unknown to it: it learns nothing of them)."""
        approval = await self.get(approval_id)
        if approval.requester != requester:
            raise UnknownApproval(approval.id)
        self._still_pending(approval)
        return "cancel_approval", approval.agent, {"approval_id": approval.id}

    async def request_update_meta_inputs(
        self, inputs: builtins.list[str] | None, description: str | None = None, *, requester: str = "manager"
    ) -> Approval:
        """Queue an update of meta inputs (``None`` or empty: every top-level input) for the
        operator; each name must be an input of the meta lock (:class:`BadInput` naming the
        unknown ones and the known). One such request pending at a time."""
        known: builtins.list[str] = builtins.list(self.meta_inputs()) if self.meta_inputs is not None else []
        if not known:
            raise NotAvailable("the meta flake has no inputs yet (hive-c0re is starting); ask again later")
        names: builtins.list[str] = builtins.list(dict.fromkeys(inputs or []))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInput(f"unknown meta input(s): {', '.join(unknown)}; the lock has: {', '.join(known)}")
        chosen = names or [n for n in known if "/" not in n]
        approval = await self.store.call(
            lambda c: st.insert_approval_unless_pending(
                c,
                META_AGENT,
                "update_meta_inputs",
                json.dumps(chosen),
                description,
                requester=requester,
                quota=MAX_PENDING_PER_REQUESTER,
            )
        )
        if approval is None:
            raise Refused("an update of meta inputs is already waiting for approval; cancel it first")
        log.info("approval %d: update_meta_inputs %s requested", approval.id, ", ".join(chosen))
        approval = await self._queue_review(approval)
        self._added(approval)
        return approval

    # --- the jobs (run by the lane) ------------------------------------------------------------------

    async def run_job(self, ctx: JobContext, args: Mapping[str, Any]) -> None:
        job = ctx.job
        approval_id = args.get("approval_id")
        approval = await self.get(approval_id)
        if job.kind == "meta_update":
            await self._meta_update(ctx, approval, args)
            return
        if approval.agent != job.agent:
            raise HiveError(f"job {job.id}: approval {approval.id} is for {approval.agent}, not {job.agent}")
        replay = job.source == "crash_recover"
        match job.kind:
            case "apply_commit":
                await (self._abandon_build(ctx, approval) if replay else self._apply_commit(ctx, approval))
            case "spawn":
                await self._spawn(ctx, approval, replay=replay)
            case "deny":
                await self._deny(approval, _text(args.get("note"), "note"))
            case "init_config":
                await self._init_config(approval, replay=replay)
            case "schedule_prompt":
                await self._schedule_prompt(approval)
            case "cancel_approval":
                await self._cancel(approval)
            case _:
                raise HiveError(f"job {job.id}: {job.kind} is not an approval job")

    async def _cancel(self, approval: Approval) -> None:
        """The requester withdrew it: ``cancelled``, announced like any resolution."""
        self._still_pending(approval)
        note = f"withdrawn by the {approval.requester or 'requester'}"
        resolved = await self._resolve(approval, "cancelled", note)
        if approval.kind == "schedule_prompt":  # its requested schedule goes with it, as on a deny
            await self._drop_requested_schedule(approval)
        await self._announce(resolved)

    async def _meta_update(self, ctx: JobContext, approval: Approval, args: Mapping[str, Any]) -> None:
        """An approved ``update_meta_inputs``: the operator's meta update job, then the row."""
        if approval.kind != "update_meta_inputs":
            raise HiveError(f"approval {approval.id} is not an update of meta inputs")
        self._still_pending(approval)
        if self.meta_updates is None or not self.meta_updates.builder.meta.running:
            # nothing ran: the row stays pending and can be approved again
            raise NotAvailable(
                "the meta flake is not available (hive-c0re is starting or stopping); try again"
            )
        try:
            await self.meta_updates.run_job(ctx, args)
        except HiveError as exc:
            with shutdown.shielded():
                await self._announce(await self._resolve(approval, "failed", str(exc)))
            raise
        await self._announce(await self._resolve(approval, "approved"))

    def _still_pending(self, approval: Approval) -> None:
        if approval.status != "pending":
            why = f": {approval.note}" if approval.status == "failed" and approval.note else ""
            raise Refused(f"approval {approval.id} is already {approval.status}{why}")

    async def _resolve(self, approval: Approval, status: str, note: str | None = None) -> Approval:
        resolved = await self.store.call(lambda c: st.resolve_approval(c, approval.id, status, note))
        if resolved is None:
            raise Refused(f"approval {approval.id} was resolved meanwhile")
        log.info(
            "approval %d (%s %s): %s%s",
            approval.id,
            approval.kind,
            approval.agent,
            status,
            f": {note}" if note else "",
        )
        return resolved

    def _resolved_event(self, approval: Approval, sha: str | None = None, tag: str | None = None) -> None:
        self.notifier.approval_event(approval, sha, tag)

    async def _announce(self, approval: Approval, sha: str | None = None, tag: str | None = None) -> None:
        """``approval_resolved`` on the bus and to the manager."""
        await self.notifier.approval_resolved(approval, sha, tag)

    # apply_commit ----------------------------------------------------------------------------------

    async def _apply_commit(self, ctx: JobContext, approval: Approval) -> None:
        self._still_pending(approval)
        name, aid, sha = approval.agent, approval.id, approval.fetched_sha
        if not await self.store.call(lambda c: st.approval_for_live_incarnation(c, aid)):
            # made for an agent of this name that was purged since: never deploy it to a later one
            note = f"{name} was destroyed and purged after this was requested; nothing was deployed"
            await self._announce(await self._resolve(approval, "failed", note))
            raise Refused(f"approval {aid} failed: {note}")
        if sha is None:
            await self._fail_build(approval, None, "the proposal was never pinned; request it again")
            raise HiveError(f"approval {aid}: the proposal was never pinned; request it again")
        previous: str | None = None
        rolled_back = False
        problems: list[str] = []

        async def move_main() -> None:
            nonlocal previous
            previous = await self.repos.main_sha(name)
            await self.repos.set_ref(name, f"{PREVIOUS_MAIN}/{aid}", previous)
            await self.repos.tag(name, f"approved/{aid}", sha)
            await self.repos.tag(name, f"building/{aid}", sha)
            await self.repos.move_main(name, sha)

        async def roll_back() -> None:  # inside the build's transient: no half-way row is shown
            nonlocal rolled_back
            rolled_back = True
            problems.extend(await self._roll_back(name, aid, previous))

        try:
            if await self._exists(name):
                await self.lifecycle.rebuild_agent(ctx, name, before=move_main, on_failure=roll_back)
            else:  # a prepared config (after init_config): its first deploy is the spawn
                await move_main()
                await self.lifecycle.spawn(ctx, name, parent=parent_of(approval))
        except Exception as exc:
            note = str(exc) if isinstance(exc, HiveError) else f"{type(exc).__name__}: {exc}"
            with shutdown.shielded():
                if not rolled_back:
                    problems.extend(await self._roll_back(name, aid, previous))
                    ctx.request_rescan([name])
                await self._fail_build(approval, sha, note, problems)
            raise HiveError(f"approval {aid} ({name} {sha[:12]}) failed: {note}") from exc
        with shutdown.shielded():
            tag = f"deployed/{aid}"
            await self.repos.tag(name, tag, sha)
            await self.repos.delete_ref(name, f"{PREVIOUS_MAIN}/{aid}")
            resolved = await self._resolve(approval, "approved")
            await self.notifier.kick(name, REASON_CONFIG_APPLIED)
            await self._announce(resolved, sha, tag)
            await self.notifier.notify_manager(Rebuilt(agent=name, ok=True, sha=sha, tag=tag), name)
        log.info("approval %d: %s deployed %s", aid, name, sha[:12])

    async def _roll_back(self, name: str, aid: int, previous: str | None) -> builtins.list[str]:
        """Point applied main back at ``previous`` (no index needed: ``update-ref``, then the work
        tree re-synced), relock, drop ``refs/hive/previous-main/<id>``. ``previous`` ``None``: main
        never moved. Returns the problems (empty: rolled back); a failed rollback keeps the ref, and
        it is settled at the next start or before the agent's next build (never built as it is)."""
        if previous is None:
            return []
        with shutdown.shielded():
            try:
                await self.repos.set_main(name, previous)
            except HiveError as exc:
                log.error("approval %d: applied main of %s was NOT rolled back: %s", aid, name, exc)
                return [
                    f"applied main of {name} was NOT rolled back to {previous[:12]} ({exc}); hive-c0re "
                    f"retries at its next start and before any build of {name}, and builds nothing "
                    "from the failed commit meanwhile"
                ]
            try:  # before the relock: nix would lock a dirty work tree as it is
                await self.repos.sync_work_tree(name)
            except HiveError as exc:  # main is right; the ref stays so the sync is retried
                log.error(
                    "approval %d: main of %s rolled back, its work tree not re-synced: %s", aid, name, exc
                )
                return [
                    f"applied main of {name} was rolled back to {previous[:12]}, but its work tree could "
                    f"not be re-synced ({exc}); hive-c0re re-syncs it at its next start and before any "
                    f"build of {name}"
                ]
            await self.lifecycle.builder.relock(name)  # the meta lock pins main again
            await self.repos.delete_ref(name, f"{PREVIOUS_MAIN}/{aid}")
        log.info("approval %d: applied main of %s rolled back to %s", aid, name, previous[:12])
        return []

    async def _fail_build(
        self, approval: Approval, sha: str | None, note: str, problems: builtins.list[str] | None = None
    ) -> None:
        """Tag ``failed/<id>`` (body: ``note``; a tag needs no index, so a broken work tree does
        not stop it), fail the row with ``note`` and any rollback ``problems``, tell."""
        name, aid = approval.agent, approval.id
        tag: str | None = None
        problems = [*(problems or [])]
        with shutdown.shielded():
            if sha is not None:
                try:
                    await self.repos.tag(name, f"failed/{aid}", sha, message=note)
                    tag = f"failed/{aid}"
                except HiveError as exc:
                    log.error("approval %d: could not tag failed/%d in %s: %s", aid, aid, name, exc)
                    problems.append(f"could not tag failed/{aid}: {exc}")
            full = "\n".join([note, *problems])
            resolved = await self._resolve(approval, "failed", full)
            await self._announce(resolved, sha, tag)
            await self.notifier.notify_manager(
                Rebuilt(agent=name, ok=False, note=full, sha=sha, tag=tag), name, full
            )

    async def _abandon_build(self, ctx: JobContext, approval: Approval) -> None:
        """The replay of an apply_commit a daemon stop interrupted: never rebuild; settle the row."""
        if approval.status != "pending":
            return
        name, aid, sha = approval.agent, approval.id, approval.fetched_sha
        if sha is not None and await self.repos.resolve(name, f"refs/tags/deployed/{aid}") == sha:
            # the deploy had finished; only the bookkeeping was cut short
            await self.repos.delete_ref(name, f"{PREVIOUS_MAIN}/{aid}")
            resolved = await self._resolve(approval, "approved")
            await self._announce(resolved, sha, f"deployed/{aid}")
            return
        previous = await self.repos.resolve(name, f"{PREVIOUS_MAIN}/{aid}")
        started = await self.repos.resolve(name, f"refs/tags/building/{aid}") is not None
        note = RESTARTED_NOTE if started else "hive-c0re restarted before the build started; request it again"
        problems = await self._roll_back(name, aid, previous)
        ctx.request_rescan([name])
        if previous is None:
            outcome = "applied main unchanged"
        elif problems:
            outcome = "applied main NOT rolled back (see above)"
        else:
            outcome = f"applied main rolled back to {previous[:12]}"
        log.warning("approval %d: %s; %s of %s", aid, note, outcome, name)
        await self._fail_build(approval, sha, note, problems)
        if started and not problems:
            await self._restore(ctx, name, aid)

    async def _restore(self, ctx: JobContext, name: str, aid: int) -> None:
        """After an interrupted build's rollback: an agent the build had stopped (and the operator
        had not) is built again from the rolled-back main, which was deployed before, and started."""
        state = (await self.lifecycle.runtime.list([name])).get(name)
        if state is None or state.running or ctx.stopped_on_purpose(name) or ctx.held(name):
            return
        log.warning(
            "approval %d: the interrupted build left %s stopped; rebuilding its previous config", aid, name
        )
        try:
            await self.lifecycle.rebuild_agent(ctx, name)
        except HiveError as exc:
            log.error("approval %d: could not bring %s back: %s", aid, name, exc)

    # startup: what a crash left in the applied repos -----------------------------------------------

    async def _settle_rollbacks(self) -> None:
        """Settle every ``refs/hive/previous-main/<id>`` of a settled approval (a crash between a
        failed build and its rollback, or a rollback that failed): main rolled back when it is still
        at the failed commit, ``failed/<id>`` tagged when missing, the ref dropped. A pending
        approval's ref is left to the lane's replay of its job."""
        root = self.repos.paths.applied_root

        def agents() -> list[str]:
            try:
                return sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
            except OSError:
                return []

        for name in await trio.to_thread.run_sync(agents):
            try:
                refs = await self.repos.previous_mains(name)
            except HiveError:
                continue
            for aid, previous in refs:
                approval = await self.store.call(partial(st.get_approval, approval_id=aid))
                if approval is not None and approval.status == "pending":
                    continue
                try:
                    done = await self.repos.settle_rollback(name, aid, previous)
                    if approval is not None and approval.status == "failed" and approval.fetched_sha:
                        await self.repos.tag(name, f"failed/{aid}", approval.fetched_sha, approval.note or "")
                except HiveError as exc:
                    log.error("approval %d: the rollback of %s is still unsettled: %s", aid, name, exc)
                    continue
                log.warning("approval %d: settled what a crash left in applied/%s (%s)", aid, name, done)

    # spawn, deny, init_config ------------------------------------------------------------------------

    async def _spawn(self, ctx: JobContext, approval: Approval, *, replay: bool) -> None:
        if approval.kind != "spawn":
            raise HiveError(f"approval {approval.id} is not a spawn")
        if not replay:
            self._still_pending(approval)
            if await self._exists(approval.agent):
                raise Refused(f'agent "{approval.agent}" already exists')
        try:
            pinned = None
            if await self.repos.applied_seeded(approval.agent):
                pinned = await self.repos.resolve(approval.agent, f"refs/tags/proposal/{approval.id}")
            if pinned is not None:  # the prepared config, pinned at request time
                if pinned != approval.fetched_sha:
                    raise Refused(
                        f"approval {approval.id}: proposal/{approval.id} moved; request the spawn again"
                    )
                await self.repos.move_main(approval.agent, pinned)
            elif approval.fetched_sha is not None:  # rows from before reviews were stored have none
                sha, _ = await self.repos.spawn_preview(approval.agent)
                if sha != approval.fetched_sha:
                    raise Refused(
                        f"the config {approval.agent} would deploy is now {sha[:12]}, not the reviewed "
                        f"{approval.fetched_sha[:12]}; request the spawn again"
                    )
            await self.lifecycle.spawn(ctx, approval.agent, parent=parent_of(approval))
        except HiveError as exc:
            if approval.status == "pending":
                with shutdown.shielded():
                    await self._announce(await self._resolve(approval, "failed", str(exc)))
            raise
        if approval.status == "pending":
            await self._announce(await self._resolve(approval, "approved"))

    async def _deny(self, approval: Approval, note: str | None) -> None:
        self._still_pending(approval)
        tag = None
        if approval.kind == "apply_commit" and approval.fetched_sha:
            tag = f"denied/{approval.id}"
            await self.repos.tag(approval.agent, tag, approval.fetched_sha, message=note or "")
        resolved = await self._resolve(approval, "denied", note)
        if approval.kind == "schedule_prompt":
            await self._drop_requested_schedule(approval)
        await self._announce(resolved, approval.fetched_sha, tag)

    # schedule_prompt (the manager's request for a scheduled prompt; actors/prompt_scheduler.py) -----

    async def request_schedule_prompt(
        self, schedule: Any, description: str | None, *, requester: str = "manager"
    ) -> Approval:
        """A pending approval for ``schedule`` (a row in state ``requested``); the card shows whom,
        when and what, then the manager's description. ``commit_ref`` is ``schedule:<id>``."""
        from hivecore.schedules import summary

        text = summary(schedule, whole=True) + (f"\n\n{description}" if description else "")
        approval = await self.store.call(
            lambda c: st.insert_approval(
                c,
                MANAGER_NAME,
                "schedule_prompt",
                f"schedule:{schedule.id}",
                text,
                requester=requester,
                quota=MAX_PENDING_PER_REQUESTER,
            )
        )
        log.info("approval %d: schedule_prompt (schedule %d) requested", approval.id, schedule.id)
        self._added(approval)
        return approval

    def _requested_schedule(self, approval: Approval) -> int:
        if self.schedules is None:
            raise NotAvailable("this daemon runs no prompt scheduler")
        ref = approval.commit_ref
        if not ref.startswith("schedule:") or not ref[9:].isdigit():
            raise HiveError(f"approval {approval.id} names no schedule ({ref!r})")
        return int(ref[9:])

    async def _schedule_prompt(self, approval: Approval) -> None:
        self._still_pending(approval)
        sid = self._requested_schedule(approval)
        schedule = await self.schedules.get(sid)
        if schedule.state == "requested":
            await self.schedules.activate(sid)
        elif schedule.state != "active":  # cancelled meanwhile (by the operator)
            note = f"schedule {sid} is {schedule.state}"
            await self._announce(await self._resolve(approval, "failed", note))
            raise Refused(f"approval {approval.id} failed: {note}")
        resolved = await self._resolve(approval, "approved")
        await self._announce(resolved)

    async def _drop_requested_schedule(self, approval: Approval) -> None:
        with contextlib.suppress(HiveError):  # cancelled already, or never created
            await self.schedules.cancel(self._requested_schedule(approval))

    async def _init_config(self, approval: Approval, *, replay: bool = False) -> None:
        self._still_pending(approval)
        name = approval.agent
        # a replay finishes a seed the crash interrupted (seeding is idempotent)
        if not replay and await self.repos.proposed_exists(name):
            note = f'"{name}" already has a config repo'
            await self._announce(await self._resolve(approval, "failed", note))
            raise Refused(note)
        if not (replay and await self.repos.proposed_exists(name)):
            await self.repos.seed_proposed(name)
        if self.lifecycle.config.runtime == "process":  # the manager's uid reaches and edits it
            await trio.to_thread.run_sync(agent_users.prepare_config, self.lifecycle.config.paths, name)
        await self._announce(await self._resolve(approval, "approved"))
        await self.notifier.notify_manager(ConfigReady(agent=name), name)
