"""The review evaluations actor: evaluates each new proposal in the background, bounded.

A request (``request_apply_commit``, ``request_spawn``, ``request_update_meta_inputs``) stores its
row with ``evaluation.status = pending`` and hands the id here (:meth:`ReviewEvals.submit`,
never blocking the request); one task of this actor evaluates them with
:class:`hivecore.review_eval.ReviewEvaluator`, **one at a time** (:data:`CONCURRENCY`), the
operator's requests before the manager's, oldest first. It is apart from the job lane and the meta
lock actor, so the operator's own jobs (builds, meta updates) never wait behind reviews; what a
hostile manager can queue is bounded by the pending quota (32 per requester), and each evaluation
by the limits of every evaluation (memory, time: :mod:`hivecore.nixconfine`).

An approval resolved (approved, denied, cancelled, failed) while its evaluation waits is skipped;
while it runs, the evaluation is cancelled (:meth:`cancel`, called by the notifier for every
resolution) and its nix process group killed. The result is stored with the row
(:func:`hivecore.store.set_evaluation`) and published as ``approval_reviewed``. At start every
pending row whose evaluation never finished (a restart, a crash) is queued again.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any, Protocol

import trio

from hivecore import review_eval
from hivecore import store as st
from hivecore.errors import HiveError
from hivecore.models import Approval, ReviewEval
from hivecore.review_eval import ReviewEvaluator
from hivecore.store import Store
from hivecore.wire.converter import converter
from hivecore.wire.events import ApprovalReviewed

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """The event bus (publish never blocks)."""

    def publish(self, event: Any) -> Any: ...


CONCURRENCY = 1
"""Evaluations at once (each may use the whole evaluation memory limit)."""
ERROR_CAP = 8192
"""Characters of nix's error kept in a review."""


class ReviewEvals:
    def __init__(self, evaluator: ReviewEvaluator, store: Store, bus: Publisher) -> None:
        self.evaluator = evaluator
        self.store = store
        self.bus = bus
        self._operator: deque[int] = deque()
        self._manager: deque[int] = deque()
        self._wake = trio.Event()
        self._running: dict[int, trio.CancelScope] = {}
        self._started = False
        self.evaluated = 0
        """How many evaluations finished (ok or failed), for tests and metrics."""

    # --- the handle (synchronous: a request never waits for an evaluation) -------------------------

    def submit(self, approval_id: int, requester: str | None) -> None:
        """Queue ``approval_id`` (the operator's ahead of the manager's)."""
        (self._operator if requester == "operator" else self._manager).append(approval_id)
        self._wake.set()

    def cancel(self, approval_id: int) -> None:
        """``approval_id`` was resolved: drop it from the queue, stop its running evaluation."""
        scope = self._running.get(approval_id)
        if scope is not None:
            scope.cancel()
            return
        for queue in (self._operator, self._manager):
            if approval_id in queue:
                queue.remove(approval_id)

    def queued(self) -> int:
        return len(self._operator) + len(self._manager)

    # --- the actor ----------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self._started:
            self._started = True
            removed = await trio.to_thread.run_sync(review_eval.clear_leftovers, self.evaluator.paths.root)
            if removed:
                log.info("review evaluations: removed %d scratch dir(s) a crash left", removed)
            queued = set(self._operator) | set(self._manager)
            for approval_id, requester in await self.store.call(st.unevaluated_approvals):
                if approval_id not in queued:
                    self.submit(approval_id, requester)
        task_status.started(self)
        limiter = trio.CapacityLimiter(CONCURRENCY)
        async with trio.open_nursery() as nursery:
            while True:
                nxt = self._next()
                if nxt is None:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                await limiter.acquire_on_behalf_of(nxt)
                nursery.start_soon(self._one, nxt, limiter)

    def _next(self) -> int | None:
        for queue in (self._operator, self._manager):
            if queue:
                return queue.popleft()
        return None

    async def _one(self, approval_id: int, limiter: trio.CapacityLimiter) -> None:
        try:
            approval = await self.store.call(lambda c: st.get_approval(c, approval_id))
            if approval is None or approval.status != "pending":
                return
            with trio.CancelScope() as scope:
                self._running[approval_id] = scope
                await self._evaluate(approval)
            if scope.cancelled_caught:
                log.info("approval %d: resolved while its review evaluation ran; stopped it", approval_id)
                await self.store.call(
                    lambda c: st.set_evaluation(c, approval_id, "cancelled", only_pending=False)
                )
        except Exception:
            log.exception("approval %d: the review evaluation crashed", approval_id)
        finally:
            self._running.pop(approval_id, None)
            limiter.release_on_behalf_of(approval_id)

    async def _evaluate(self, approval: Approval) -> None:
        aid = approval.id
        log.info("approval %d: evaluating %s %s for its review", aid, approval.kind, approval.agent)
        try:
            changes = await self.evaluator.evaluate(approval)
        except HiveError as exc:
            error = str(exc)
            if len(error) > ERROR_CAP:
                error = error[:ERROR_CAP] + "\n… (cut)"
            log.info("approval %d: does not evaluate: %s", aid, error.splitlines()[0] if error else "")
            result = ReviewEval(status="failed", error=error)
        else:
            result = ReviewEval(status="ok", changes=changes)
        blob = json.dumps(converter.unstructure(result.changes)) if result.changes is not None else None
        with trio.CancelScope(shield=True):  # the outcome is stored or the row stays pending
            stored = await self.store.call(
                lambda c: st.set_evaluation(c, aid, result.status, result.error, blob)
            )
        self.evaluated += 1
        if stored:
            row = await self.store.call(lambda c: st.get_approval(c, aid))
            evaluation = row.evaluation if row is not None and row.evaluation is not None else result
            self.bus.publish(ApprovalReviewed(id=aid, agent=approval.agent, evaluation=evaluation))
