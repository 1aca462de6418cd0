"""The audit trail's service: appends rows through the store actor, reads them back, verifies the chain
and applies retention (the rows and the chain: :mod:`hivecore.audit`).

* :meth:`AuditLog.verb` — called once per state-changing verb by :func:`hivecore.verbs.bind.run_checked`;
* :meth:`AuditLog.record` — the daemon's own automatic actions (auto_update, crash recovery, an
  expiry): ``await audit.record("reminder_expired", {"id": 7, "agent": "coder"})``;
* :meth:`AuditLog.read` / :meth:`AuditLog.verify` — ``hivectl audit`` and the dashboard;
* :meth:`AuditLog.sweep` — retention, run by the broker's hourly vacuum.

A failure to write a row is logged (``audit: could not record …``) and never turns a verb that
happened into an error; a row is written even if the caller is cancelled meanwhile (shielded,
bounded by :data:`RECORD_TIMEOUT`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio

from hivecore import audit as au
from hivecore.errors import HiveError, answer_for
from hivecore.services.handles import Publisher
from hivecore.store import Store
from hivecore.wire.events import ApprovalAttributed

log = logging.getLogger(__name__)

SOCKET_BURST = 300.0
SOCKET_RATE = 1.0
"""Rows one manager or agent socket may add: a burst of :data:`SOCKET_BURST`, then
:data:`SOCKET_RATE` a second (a turn adds a few). Past it its rows are counted and the count is one
``audit_suppressed`` row (``rows``, and ``verbs``: the count per verb) before its next kept row: a
hostile agent cannot fill the disk with them. A call that produced a job or acted on an approval
draws on a second budget of the same size (cheap calls cannot spend it)."""
RECORD_TIMEOUT = 30.0
"""Seconds a row's write may take once its verb is done (a cancelled caller's row included)."""


def outcome_of(exc: BaseException | None) -> au.Outcome:
    """``ok``; ``refused`` for a refusal (4xx: nothing happened); ``failed`` for anything else."""
    if exc is None:
        return "ok"
    if isinstance(exc, trio.Cancelled):
        return "abandoned"
    if isinstance(exc, HiveError) and exc.http_status < 500:
        return "refused"
    return "failed"


class AuditLog:
    """Construct with the store; ``retention_days`` (``None``: keep forever) is what :meth:`sweep` keeps."""

    def __init__(
        self,
        store: Store,
        *,
        retention_days: float | None = au.DEFAULT_RETENTION_DAYS,
        clock: Callable[[], float] = time.time,
        budget: tuple[float, float] = (SOCKET_BURST, SOCKET_RATE),
        bus: Publisher | None = None,
    ) -> None:
        """``bus``: where ``approval_attributed`` goes once an approve/deny row is written."""
        self._store = store
        self._bus = bus
        self.retention_days = retention_days
        self._clock = clock
        self.recorded = 0
        self.write_failures = 0
        self.suppressed = 0
        self._burst, self._rate = budget
        self._buckets: dict[str, tuple[float, float]] = {}
        """Per manager/agent socket: (rows it may still write now, when that was computed)."""
        self._held_actor: dict[str, au.Actor] = {}
        self._held_back: dict[str, dict[str, int]] = {}
        """Per manager/agent socket: rows left out since its last recorded one, by verb."""

    def _take(self, key: str) -> bool:
        """Whether socket ``key`` may write a row now (a token bucket: :data:`SOCKET_BURST` rows,
        refilled at :data:`SOCKET_RATE` a second)."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - then) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    async def append(
        self,
        actor: au.Actor,
        verb: str,
        args: Mapping[str, Any],
        outcome: au.Outcome,
        *,
        error: str | None = None,
        jobs: list[int] | None = None,
        approvals: list[int] | None = None,
    ) -> int | None:
        """Append one row; its seq (``None``: it could not be written, which is logged)."""
        content = au.content_of(
            actor, verb, args, outcome, error=error, jobs=jobs, approvals=approvals, at=self._clock()
        )
        # an agent's rows (send, set_status, report_turn: many, and an agent is hostile) are committed
        # without an fsync: the next full commit (any operator verb, a broker send) syncs them
        fsync = actor.principal != "agent"
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
            try:
                seq = await self._store.call(lambda c: au.append(c, content, fsync=fsync))
            except Exception as exc:
                self.write_failures += 1
                log.error("audit: could not record %s by %s: %s", verb, actor.label(), exc)
                return None
            self.recorded += 1
            return seq
        self.write_failures += 1
        log.error("audit: recording %s by %s took over %g s; given up", verb, actor.label(), RECORD_TIMEOUT)
        return None

    async def verb(
        self,
        actor: au.Actor,
        verb: str,
        request: Any,
        value: Any,
        exc: BaseException | None,
        jobs: list[int],
    ) -> int | None:
        """The row of one verb call: its checked (or, if the checks refused it, raw) request, its
        value and its exception (``None``: it succeeded), the jobs it produced."""
        args = au.redacted_args(request)
        approvals = approvals_of(args, value, verb)
        error = None if exc is None else answer_for(exc, verb).line
        # hostile: a flood must not fill the disk; but a call that did something traceable (it
        # produced a job or acted on an approval) draws on a budget of its own, or a socket could
        # spend its budget on cheap calls first and then kill an agent unrecorded
        traced = exc is None and bool(jobs or approvals)
        if actor.principal in ("manager", "agent"):
            key = f"{actor.principal}:{actor.agent}" + (":traced" if traced else "")
            if not self._take(key):
                self._held_actor[key] = actor
                held_verbs = self._held_back.setdefault(key, {})
                held_verbs[verb] = held_verbs.get(verb, 0) + 1
                self.suppressed += 1
                if sum(held_verbs.values()) == 1:
                    log.warning("audit: %s is over its row budget; its rows are counted, not kept", key)
                return None
            await self._flush_suppressed(key)
        outcome = outcome_of(exc)
        seq = await self.append(actor, verb, args, outcome, error=error, jobs=jobs, approvals=approvals)
        if (
            self._bus is not None
            and seq is not None
            and verb in ("approve", "deny")
            and outcome in ("ok", "failed")
            and len(approvals) == 1
        ):
            # the job published approval_resolved before this row existed; say who, as a reload would
            self._bus.publish(ApprovalAttributed(id=approvals[0], resolved_by=au.resolved_by(actor)))
        return seq

    async def record(
        self,
        verb: str,
        args: Mapping[str, Any] | None = None,
        *,
        outcome: au.Outcome = "ok",
        error: str | None = None,
        jobs: list[int] | None = None,
        approvals: list[int] | None = None,
        actor: au.Actor = au.DAEMON,
    ) -> int | None:
        """Record one automatic action of the daemon (principal ``daemon``): ``verb`` names it
        (``auto_update``, ``crash_recover``, ``question_expired`` …), ``args`` are its details (JSON
        values; name the agent under ``agent`` or ``name`` so ``hivectl audit --agent`` finds it)."""
        return await self.append(
            actor, verb, dict(args or {}), outcome, error=error, jobs=jobs, approvals=approvals
        )

    async def _flush_suppressed(self, key: str) -> None:
        """The ``audit_suppressed`` row of the calls socket ``key`` left out, if any."""
        held = self._held_back.pop(key, None)
        actor = self._held_actor.pop(key, None)
        if held and actor is not None:
            await self.append(
                actor,
                "audit_suppressed",
                {
                    "rows": sum(held.values()),
                    "verbs": held,
                    "budget": f"{self._burst:g} rows, then {self._rate:g} a second",
                },
                "ok",
            )

    async def flush_suppressed(self) -> None:
        """Write every pending ``audit_suppressed`` row now (before a read and the hourly
        sweep): a socket that flooded and then went quiet leaves its count all the same."""
        for key in list(self._held_back):
            await self._flush_suppressed(key)

    async def read(
        self,
        *,
        since: float | None = None,
        agent: str | None = None,
        before: int | None = None,
        limit: int = 200,
    ) -> list[au.AuditRow]:
        await self.flush_suppressed()
        return await self._store.call(
            lambda c: au.read(c, since=since, agent=agent, before=before, limit=limit)
        )

    async def verify(self) -> au.Verified:
        """Recompute the chain, :data:`~hivecore.audit.VERIFY_CHUNK` rows per store call (other
        calls run in between). A mismatch is checked once more from the start: a retention sweep
        between two chunks may have replaced the rows ahead with a checkpoint."""
        for _attempt in range(2):
            found, after = await self._store.call(lambda c: au.verify_chunk(c, 0, None))
            while after is not None:
                found, after = await self._store.call(partial(au.verify_chunk, after=after, start=found))
            if found.ok:
                break
        return found

    async def sweep(self) -> au.Vacuumed | None:
        """Drop audit rows and finished jobs past the retention (one transaction); ``None``: kept forever."""
        await self.flush_suppressed()
        if self.retention_days is None:
            return None
        cutoff = self._clock() - self.retention_days * 86400
        done = await self._store.call(lambda c: au.vacuum(c, cutoff))
        if done.audit_rows or done.jobs:
            log.info(
                "audit: retention (%g days) dropped %d audit rows (a checkpoint keeps the chain) and %d jobs",
                self.retention_days,
                done.audit_rows,
                done.jobs,
            )
        return done


APPROVAL_ID_VERBS = frozenset({"approve", "deny", "approval", "cancel_approval"})
"""The verbs whose ``id`` field is an approval's (``answer``'s is a question's, ``cancel_reminder``'s a
reminder's, ``unschedule``'s a schedule's: not approvals)."""


def approvals_of(args: Mapping[str, Any], value: Any, verb: str) -> list[int]:
    """The approval ids a verb acted on (the ``id`` field of :data:`APPROVAL_ID_VERBS`: approve,
    deny) or produced (its value is an approval: request_spawn, request_apply_commit)."""
    from hivecore.models import Approval

    out: list[int] = []
    if verb in APPROVAL_ID_VERBS and isinstance(args.get("id"), int):
        out.append(args["id"])
    if isinstance(value, Approval) and value.id not in out:
        out.append(value.id)
    return out
