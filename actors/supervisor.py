"""One-for-one supervisor (OTP-style) for the daemon's actors.

Children start in table order with ``nursery.start`` — each is serving before the next starts — and
are cancelled together when the supervisor's scope is cancelled. A child that raises an
``Exception`` (never ``Cancelled``/``KeyboardInterrupt``) is logged with its traceback, reported as an
``actor_crashed`` event and restarted after a capped exponential backoff; its siblings keep running.
A child that crashes more than ``max_restarts`` times within ``window`` seconds escalates: the
supervisor raises :class:`SupervisorEscalation` and the daemon exits (systemd restarts it).

A child's handle must outlive its restarts, so actors keep their channels on an object created
before the supervisor starts; ``run(task_status=…)`` only drives them.
"""

from __future__ import annotations

import collections
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import attrs
import trio

from actors.event_bus import EventBus
from hivecore import shutdown
from hivecore.wire.events import ActorCrashed

log = logging.getLogger(__name__)

ChildState = Literal["starting", "running", "backoff", "stopped", "failed"]
RunFn = Callable[..., Awaitable[Any]]


class SupervisorEscalation(Exception):
    """A child crashed too often; the supervisor gives up on the whole tree."""


@attrs.frozen
class ChildSpec:
    name: str
    run: RunFn
    """``async def run(*, task_status)``; must call ``task_status.started()`` once serving."""
    stop: Callable[[], None] | None = None
    """Optional graceful stop request (e.g. hypercorn's shutdown trigger): at shutdown it is called
    first and the child gets ``RestartPolicy.stop_grace`` seconds to return before it is cancelled."""


@attrs.define
class ChildStatus:
    name: str
    state: ChildState = "starting"
    restarts: int = 0
    last_crash: str | None = None
    last_crash_at: float | None = None


@attrs.frozen
class RestartPolicy:
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_restarts: int = 10
    window: float = 60.0
    healthy_after: float = 30.0
    """A child that ran this long before crashing restarts from ``initial_backoff`` again."""
    stop_grace: float = 2.0
    """At shutdown, how long a child with a ``stop`` hook may take to finish on its own."""


class Supervisor:
    def __init__(self, bus: EventBus, policy: RestartPolicy | None = None) -> None:
        self._bus = bus
        self.policy = policy or RestartPolicy()
        self._children: dict[str, ChildStatus] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._done: dict[str, trio.Event] = {}

    def statistics(self) -> list[ChildStatus]:
        return [attrs.evolve(c) for c in self._children.values()]

    async def run(
        self, children: Sequence[ChildSpec], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start ``children`` in order and supervise them until cancelled.

        Returns only by cancellation or by raising :class:`SupervisorEscalation`. A child that
        fails during its *first* start raises straight out: a daemon that cannot start should say
        so, not loop. Cancellation stops the children in **reverse start order**, each one finished
        before the previous one is stopped (so the sockets and the dashboard go first and the store
        and the event bus last); a child with a ``stop`` hook is asked first and cancelled only
        after ``stop_grace`` seconds.
        """
        shutdown.reset()
        async with trio.open_nursery() as outer:
            # the children live in a shielded nursery: cancelling run() does not reach them
            # directly; the shutdown below stops them one by one
            inner: trio.Nursery = await outer.start(_host)
            try:
                for spec in children:
                    self._children[spec.name] = ChildStatus(spec.name)
                    self._scopes[spec.name] = trio.CancelScope()
                    self._done[spec.name] = trio.Event()
                    await inner.start(self._supervise, spec, name=f"supervise:{spec.name}")
                    log.info("actor %s started", spec.name)
                task_status.started()
                await trio.sleep_forever()
            finally:
                shutdown.begin()  # shielded work now has a deadline; the children below wait for it
                with trio.CancelScope(shield=True):
                    await self._shutdown(children)
                    inner.cancel_scope.cancel()

    async def _shutdown(self, children: Sequence[ChildSpec]) -> None:
        for spec in reversed(children):
            done = self._done.get(spec.name)
            scope = self._scopes.get(spec.name)
            if done is None or scope is None or done.is_set():
                continue
            if spec.stop is not None:
                spec.stop()
                with trio.move_on_after(self.policy.stop_grace):
                    await done.wait()
            scope.cancel()
            # a child still in shielded work gets until that work's deadline (hivecore.shutdown):
            # the children after it (the store, the bus) must outlive what it is finishing
            with trio.move_on_at(
                max(trio.current_time() + self.policy.stop_grace, shutdown.deadline() + 0.5)
            ):
                await done.wait()
            if not done.is_set():
                log.warning("actor %s did not stop within %gs", spec.name, self.policy.stop_grace)
            else:
                log.debug("actor %s stopped", spec.name)

    async def _supervise(self, spec: ChildSpec, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scopes[spec.name]:
                await self._supervise_loop(spec, task_status=task_status)
        finally:
            self._done[spec.name].set()
            if self._children[spec.name].state in ("running", "starting", "backoff"):
                self._children[spec.name].state = "stopped"

    async def _supervise_loop(self, spec: ChildSpec, *, task_status: Any) -> None:
        status = self._children[spec.name]
        crashes: collections.deque[float] = collections.deque()
        backoff = self.policy.initial_backoff
        first = True
        while True:
            status.state = "starting"
            started_at = trio.current_time()
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(_run_child, spec, name=spec.name)
                    status.state = "running"
                    if first:
                        first = False
                        task_status.started()
            except Exception as exc:
                if first:
                    raise
                now = trio.current_time()
                self._record_crash(status, exc)
                crashes.append(now)
                while crashes and crashes[0] < now - self.policy.window:
                    crashes.popleft()
                gave_up = len(crashes) > self.policy.max_restarts
                self._bus.publish(
                    ActorCrashed(
                        actor=spec.name,
                        error=status.last_crash or "",
                        restarts=status.restarts,
                        gave_up=gave_up,
                    )
                )
                if gave_up:
                    status.state = "failed"
                    window = self.policy.window
                    raise SupervisorEscalation(
                        f"actor {spec.name} crashed {len(crashes)} times in {window:g}s; giving up"
                    ) from exc
                if now - started_at >= self.policy.healthy_after:
                    backoff = self.policy.initial_backoff
                status.state = "backoff"
                log.warning("actor %s restarting in %.1fs", spec.name, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.policy.max_backoff)
                status.restarts += 1
                continue
            # a child that returns has finished its job; it is not restarted
            status.state = "stopped"
            log.info("actor %s finished", spec.name)
            if first:
                task_status.started()
            return

    def _record_crash(self, status: ChildStatus, exc: BaseException) -> None:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        status.last_crash = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        status.last_crash_at = trio.current_time()
        log.error("actor %s crashed", status.name, exc_info=exc)


async def _host(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.shield = True
        task_status.started(nursery)
        await trio.sleep_forever()


async def _run_child(spec: ChildSpec, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await spec.run(task_status=task_status)
