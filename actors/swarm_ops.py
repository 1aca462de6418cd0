"""Operator reach across hives (docs/swarm.md "Operator reach"): both halves of ``swarm_op`` over the
swarm link's one NATS connection (the pure half: :mod:`hivecore.swarm_ops`).

Asking: :meth:`SwarmOps.ask` sends one core-NATS request on ``hive.<to>.ops.<me>`` and turns the
answer into the verb's answer (or its error). Serving: :meth:`SwarmOps.serve` (started by the link
in every session) reads ``hive.<me>.ops.*``; per request it takes the asking hive from the subject,
checks the reply subject is under that hive's inbox prefix, spends one token of the hive's bucket,
caps the hive's requests in flight, decodes with the one converter, refuses a hive not in
``--swarm-operator-hives`` (audited), and runs the allowed verb through the verb table as the
operator via ``hive:<asking>/<surface>`` (audited there, like every verb). Work is a job on the lane
as always; the answer goes back on the request's reply subject.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import trio
from prometheus_client.metrics_core import Metric

from hivecore import swarm as sw
from hivecore import swarm_ops as so
from hivecore.aiobridge import AsyncioThread
from hivecore.audit import Actor
from hivecore.errors import HiveError, Refused, answer_for
from hivecore.verbs import bind, spec
from hivecore.wire.host import HostResponse
from hivecore.wire.request import structure

log = logging.getLogger(__name__)

SWARM_CALLER = bind.Caller("operator", "swarm")
"""The far side's caller: the operator, jobs recorded with source ``swarm``."""
PENDING_MSGS = 256
"""Requests NATS may queue for this hive before it drops them (a flood costs the asker a timeout)."""
REPLY_TIMEOUT = 5.0
OVERALL_IN_FLIGHT = 16
"""Requests carried out at once, all hives together."""


class SwarmOps:
    """Construct with the link, the hives allowed to operate here, the façade and the audit log,
    before the link runs: it attaches itself (``link.ops``), and the link runs :meth:`serve` in each
    session it starts from then on."""

    def __init__(
        self,
        link: Any,
        operator_hives: tuple[str, ...],
        facade: Any,
        audit_log: Any = None,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self._link = link
        self.me: str = link.me
        self.operator_hives = frozenset(operator_hives)
        self.facade = facade
        self.audit = audit_log
        self.bucket = so.TokenBucket(so.RATE_BURST, so.RATE_PER_SECOND, clock)
        self.in_flight: dict[str, int] = {}
        self._limiter = trio.CapacityLimiter(OVERALL_IN_FLIGHT)
        self._conn: tuple[AsyncioThread, Any] | None = None
        self.served = self.refused = self.limited = self.dropped = 0
        """Counters (requests carried out, refused, rate limited or busy, dropped unanswered)."""
        self.asked = 0
        """Requests this hive sent to others."""
        link.ops = self

    def families(self) -> Iterator[Metric]:
        """``hivecore_swarm_ops_total{outcome}``: requests from other hives by outcome (``served``,
        ``refused``, ``limited``: rate limited or busy, ``dropped``: a forged reply subject), and
        ``asked``: requests this hive sent (a :class:`hivecore.metrics.Metrics` source)."""
        from prometheus_client.core import CounterMetricFamily

        ops = CounterMetricFamily(
            "hivecore_swarm_ops", "Operator requests between hives by outcome", labels=["outcome"]
        )
        for outcome in ("served", "refused", "limited", "dropped", "asked"):
            ops.add_metric([outcome], getattr(self, outcome))
        yield ops

    # --- asking ---------------------------------------------------------------------------------------

    async def ask(self, request: Any, actor: Actor | None) -> so.OpReply:
        """Run ``request`` (a checked :class:`~hivecore.wire.host.SwarmOpRequest`) on its far hive; its
        reply, or the far hive's refusal as a :class:`HiveError` (timeouts: ``RemoteUnanswered``)."""
        import nats.errors

        hive, name, approval = so.parse_target(request.op, request.target)
        if hive == self.me:
            raise Refused(f"{request.target} is on this hive ({hive}): run {request.op} without @{hive}")
        conn = self._conn
        if conn is None or self._link.state != "connected":
            raise so.RemoteUnanswered(
                f"cannot reach hive {hive}: this hive's swarm link is {self._link.state}"
                + (f" ({self._link.error})" if self._link.error else "")
            )
        unknown = self._link.unknown_hive(hive)
        if unknown is not None:
            raise Refused(f"cannot {request.op} {request.target}: {unknown}")
        call = so.OpCall(
            op=request.op,
            name=name,
            id=approval,
            graceful=request.graceful,
            note=request.note,
            operator=so.RemoteOperator.of(actor),
        )
        timeout = so.timeout_for(request.op, request.timeout)
        self.asked += 1
        bridge, nc = conn
        data = sw.encode(call)
        try:
            with trio.fail_after(timeout + 5):
                msg = await bridge.call(lambda: nc.request(so.subject(hive, self.me), data, timeout=timeout))
        except nats.errors.NoRespondersError:
            raise so.RemoteUnanswered(
                f"hive {hive} did not answer: it is not connected to the swarm now (no responder)"
            ) from None
        except (nats.errors.TimeoutError, trio.TooSlowError):
            raise so.RemoteUnanswered(
                f"hive {hive} did not answer within {timeout:g} s (down or busy; if it got the "
                "request it may still carry it out: check its audit trail)"
            ) from None
        except Exception as exc:
            raise so.RemoteUnanswered(f"cannot reach hive {hive}: {type(exc).__name__}: {exc}") from None
        reply = sw.decode(msg.data, so.OpReply) if len(msg.data) <= so.MAX_REPLY_BYTES else None
        if reply is None:
            raise Refused(f"hive {hive} sent an unreadable answer ({len(msg.data)} bytes)")
        if not reply.ok:
            raise so.error_for(reply, hive)
        if reply.message is not None:
            reply = so.OpReply(ok=True, message=so.remote_text(reply.message, hive))
        return reply

    # --- serving --------------------------------------------------------------------------------------

    async def serve(self, bridge: AsyncioThread, nc: Any) -> None:
        """Answer requests on ``hive.<me>.ops.*`` for as long as the session lasts (the link runs it)."""
        sub = await bridge.call(
            lambda: nc.subscribe(
                so.listen_subject(self.me),
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=PENDING_MSGS * so.MAX_CALL_BYTES,
            )
        )
        self._conn = (bridge, nc)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    msg = await bridge.call(partial(sub.next_msg, timeout=None))
                    self._take(nursery, bridge, nc, msg)
        finally:
            self._conn = None

    def _take(self, nursery: trio.Nursery, bridge: AsyncioThread, nc: Any, msg: Any) -> None:
        """Admit one request (synchronous: the bucket and the in-flight counts need no lock)."""
        asking = so.asking_hive(msg.subject, self.me)
        if asking is None or not so.reply_ok(msg.reply, asking):
            self.dropped += 1
            log.warning(
                "swarm ops: dropped a request on %r (reply %r)", msg.subject[:80], str(msg.reply)[:80]
            )
            return
        if not self.bucket.take(asking):
            self.limited += 1
            error = (
                f"rate limited: hive {self.me} takes {so.RATE_BURST:g} requests from a hive at once, "
                f"then {so.RATE_PER_SECOND:g} a second"
            )
            nursery.start_soon(
                self._reply, bridge, nc, msg.reply, so.OpReply(ok=False, status=429, error=error)
            )
            return
        if self.in_flight.get(asking, 0) >= so.MAX_IN_FLIGHT:
            self.limited += 1
            error = f"busy: hive {self.me} is carrying out {so.MAX_IN_FLIGHT} requests from hive {asking}"
            nursery.start_soon(
                self._reply, bridge, nc, msg.reply, so.OpReply(ok=False, status=409, error=error)
            )
            return
        self.in_flight[asking] = self.in_flight.get(asking, 0) + 1
        nursery.start_soon(self._serve_one, bridge, nc, asking, msg.data, msg.reply)

    async def _serve_one(
        self, bridge: AsyncioThread, nc: Any, asking: str, data: bytes, reply_to: str
    ) -> None:
        try:
            async with self._limiter:
                reply = so.OpReply(ok=False, status=504, error="not carried out in time")
                with trio.move_on_after(so.MAX_TIMEOUT + 60):
                    reply = await self.run(asking, data)
        finally:
            self.in_flight[asking] -= 1
            if not self.in_flight[asking]:
                del self.in_flight[asking]
        await self._reply(bridge, nc, reply_to, reply)

    async def run(self, asking: str, data: bytes) -> so.OpReply:
        """Carry out one request of hive ``asking`` (the subject's); its reply. Never raises."""
        if len(data) > so.MAX_CALL_BYTES:
            self.refused += 1
            return so.OpReply(ok=False, status=400, error=f"request over {so.MAX_CALL_BYTES} bytes")
        raw = sw.decode(data, so.OpCall)
        if raw is None:
            self.refused += 1
            return so.OpReply(ok=False, status=400, error="malformed operator request")
        actor = so.far_actor(asking, raw.operator)
        try:
            if asking not in self.operator_hives:
                raise Refused(
                    f"operator commands from hive {asking} are not taken here (add {asking} to "
                    f"{self.me}'s --swarm-operator-hives to allow them)"
                )
            call = so.check_call(raw)
            key, fields = so.verb_of(call)
            record = structure(fields, bind.BINDINGS[key].request)
        except HiveError as exc:
            self.refused += 1
            await self._audit_refusal(actor, raw, exc)
            return so.OpReply(ok=False, status=exc.http_status, error=str(exc))
        ctx = bind.Context(self.facade, SWARM_CALLER, self.audit)
        cmd = spec.BY_KEY[key].cmd
        try:
            value = await bind.run(key, ctx, record, who=actor)
            answer = bind.BINDINGS[key].host(ctx, value)
        except Exception as exc:
            self.refused += 1
            found = answer_for(exc, cmd)
            if found.internal:
                log.error("swarm ops: %s from hive %s failed", cmd, asking, exc_info=exc)
            return so.OpReply(ok=False, status=found.http_status, error=found.line)
        self.served += 1
        message = answer.message if isinstance(answer, HostResponse) else None
        return so.OpReply(ok=True, message=message)

    async def _audit_refusal(self, actor: Actor, raw: so.OpCall, exc: HiveError) -> None:
        """A request refused before any verb ran (not an operator hive, not an allowed op): one row."""
        if self.audit is None:
            return
        verb = spec.BY_KEY[so.OPS[raw.op]].cmd if raw.op in so.OPS else "swarm_op"
        args = {"op": raw.op[:40], "name": raw.name[:64] if raw.name else None, "id": raw.id}
        await self.audit.append(actor, verb, args, "refused", error=str(exc))

    async def _reply(self, bridge: AsyncioThread, nc: Any, reply_to: str, reply: so.OpReply) -> None:
        try:
            with trio.fail_after(REPLY_TIMEOUT):
                await bridge.call(partial(nc.publish, reply_to, sw.encode(reply)))
        except Exception as exc:
            log.warning("swarm ops: could not answer on %s: %s", reply_to[:80], exc)
