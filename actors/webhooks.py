"""webhooks: delivers notifications (:mod:`hivecore.webhook`) to the operator's endpoints.

The event path never waits on it: one task moves the selected events from a bus subscription into
a bounded queue per endpoint (synchronously, no I/O: it never falls behind the bus; should the bus
drop it anyway, it subscribes again and counts it). A full queue drops its **oldest** notice and
counts it (``dropped``). One sender task per endpoint POSTs its queue in order through ``httpx``
(async, with timeouts); a failure (no connection, a timeout, 408/425/429/5xx) is retried with
exponential backoff up to ``attempts`` times, a final failure (other 4xx, or out of attempts) is
counted and drops that notice. While an endpoint's last notice failed, :meth:`Webhooks.alarms`
raises the ``notify`` alarm (the alarms actor reads it as a source); the next delivery clears it.

An endpoint's URL is a secret (a webhook token lives in it): logs and alarms show
:attr:`~hivecore.webhook.Endpoint.shown` only.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import httpx
import trio

from actors.event_bus import EventBus
from hivecore import webhook as wh
from hivecore.alarms import Alarm

log = logging.getLogger(__name__)

QUEUE = 256
"""Notices kept per endpoint while it is slow or down."""
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ATTEMPTS = 5
INITIAL_BACKOFF = 2.0
MAX_BACKOFF = 60.0
USER_AGENT = "hive-c0re notifications"


@attrs.define
class EndpointStatistics:
    endpoint: str
    """The shown form (no path, no credentials)."""
    queued: int = 0
    """Notices waiting (not counting the one in flight)."""
    delivered: int = 0
    failed: int = 0
    """Notices given up on."""
    retries: int = 0
    dropped: int = 0
    """Notices dropped, oldest first, because the queue was full."""
    last_error: str | None = None
    failing: bool = False


class _Sink:
    def __init__(self, endpoint: wh.Endpoint, size: int) -> None:
        self.endpoint = endpoint
        self.queue: collections.deque[tuple[wh.Notice, float]] = collections.deque()
        self.size = size
        self.wake = trio.Event()
        self.stats = EndpointStatistics(endpoint.shown)

    def offer(self, notice: wh.Notice, at: float) -> None:
        if len(self.queue) >= self.size:
            self.queue.popleft()
            self.stats.dropped += 1
            if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                log.warning(
                    "notifications: %s is behind; %d notice(s) dropped",
                    self.endpoint.shown,
                    self.stats.dropped,
                )
        self.queue.append((notice, at))
        self.wake.set()


class Webhooks:
    """The actor (module doc). ``client`` is for tests (a transport); by default one is made."""

    def __init__(
        self,
        bus: EventBus,
        endpoints: Sequence[wh.Endpoint],
        kinds: frozenset[str],
        *,
        queue: int = QUEUE,
        attempts: int = ATTEMPTS,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        timeout: httpx.Timeout = TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self.kinds = kinds
        self._sinks = [_Sink(e, queue) for e in endpoints]
        self.attempts = attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._timeout = timeout
        self._clock = clock
        self.resubscribed = 0

    def statistics(self) -> list[EndpointStatistics]:
        out = []
        for sink in self._sinks:
            stats = attrs.evolve(sink.stats)
            stats.queued = len(sink.queue)
            out.append(stats)
        return out

    def alarms(self) -> list[Alarm]:
        """A ``notify`` alarm while any endpoint's last notice failed (an alarm source)."""
        failing = [s.stats for s in self._sinks if s.stats.failing]
        if not failing:
            return []
        shown = "; ".join(f"{s.endpoint}: {s.last_error}" for s in failing)
        return [
            Alarm(
                "notify",
                "notify",
                "warn",
                wh.one_line(
                    f"notifications are not delivered ({sum(s.failed for s in failing)} given up): {shown}"
                ),
            )
        ]

    def offer(self, event: Any) -> None:
        """Queue ``event``'s notice on every endpoint when its kind is selected (sync, never blocks)."""
        notice = wh.notice_of(event, self.kinds)
        if notice is None:
            return
        at = self._clock()
        for sink in self._sinks:
            sink.offer(notice, at)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            httpx.AsyncClient(
                timeout=self._timeout, headers={"User-Agent": USER_AGENT}, follow_redirects=False
            ) as client,
            trio.open_nursery() as nursery,
        ):
            for sink in self._sinks:
                nursery.start_soon(self._sender, client, sink, name=f"notify {sink.endpoint.shown}")
            await nursery.start(self._mover)
            log.info(
                "notifications: %s to %s",
                ", ".join(sorted(self.kinds)),
                ", ".join(s.endpoint.shown for s in self._sinks),
            )
            task_status.started(self)

    async def _mover(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        kinds = wh.event_kinds_for(self.kinds)
        first = True
        while True:
            with self._bus.subscribe(kinds) as sub:
                if first:
                    task_status.started()
                    first = False
                async for event in sub:
                    self.offer(event)
                if not sub.lagged:
                    return  # the bus closed (shutdown)
            self.resubscribed += 1
            log.warning("notifications: fell behind the event bus; some events were not notified")

    async def _sender(self, client: httpx.AsyncClient, sink: _Sink) -> None:
        while True:
            if not sink.queue:
                sink.wake = trio.Event()
                await sink.wake.wait()
                continue
            notice, at = sink.queue.popleft()  # in flight: a full queue never drops it
            ok = await self._deliver(client, sink, notice, at)
            if ok:
                sink.stats.delivered += 1
                if sink.stats.failing:
                    log.info("notifications: %s delivers again", sink.endpoint.shown)
                sink.stats.failing = False
            else:
                sink.stats.failed += 1
                sink.stats.failing = True
                log.warning(
                    "notifications: gave up on a %s notice to %s: %s",
                    notice.kind,
                    sink.endpoint.shown,
                    sink.stats.last_error,
                )

    async def _deliver(self, client: httpx.AsyncClient, sink: _Sink, notice: wh.Notice, at: float) -> bool:
        endpoint = sink.endpoint
        if endpoint.format == "ntfy":
            body = notice.text.encode()
            headers = {"Content-Type": "text/plain; charset=utf-8", **notice.ntfy_headers()}
        else:
            body = json.dumps(notice.document(at)).encode()
            headers = {"Content-Type": "application/json"}
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                sink.stats.retries += 1
                await trio.sleep(wh.backoff(attempt - 1, self.initial_backoff, self.max_backoff))
            try:
                response = await client.post(endpoint.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                # the exception's text may carry the URL: name its class only
                sink.stats.last_error = type(exc).__name__
                continue
            if 200 <= response.status_code < 300:
                return True
            sink.stats.last_error = f"HTTP {response.status_code}"
            if not wh.retryable(response.status_code):
                return False
        return False
