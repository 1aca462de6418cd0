"""The event bus: seq-stamped dashboard events, fan-out to bounded subscribers, replay ring.

Invariants:

* ``publish`` is synchronous and never blocks: it stamps the next ``seq`` (strictly increasing),
  appends to the replay ring and ``send_nowait``s to every matching subscriber.
* Each subscriber has its own bounded buffer. One that is full when an event arrives is **dropped**
  on the spot: its channel is closed, its iteration ends, and ``Subscription.lagged`` is true. It
  never slows the publisher or any other subscriber.
* ``subscribe(after_seq=N)`` first replays every retained event with ``seq > N``; if the ring no
  longer reaches back to ``N + 1`` it raises :class:`RefetchRequired` (the client must reload the
  snapshot from ``/api/state``).

Everything here is synchronous, so in trio each call is atomic with respect to other tasks; a
snapshot taken with ``current_seq()`` and a subscription opened right after see a gap-free stream.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import trio

from hivecore.wire.events import Event

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIBER_BUFFER = 256
DEFAULT_RING_SIZE = 1024


class RefetchRequired(Exception):
    """The replay ring no longer covers the requested gap; reload the full snapshot."""

    def __init__(self, after_seq: int, oldest: int) -> None:
        super().__init__(
            f"events after seq {after_seq} are no longer retained (oldest kept is {oldest}); refetch state"
        )


@attrs.frozen
class BusStatistics:
    current_seq: int
    subscribers: int
    published: int
    dropped_subscribers: int
    ring_len: int
    max_backlog: int = 0
    """Events waiting in the fullest subscriber's buffer (the bus's lag; dropped at ``buffer``)."""
    buffer: int = DEFAULT_SUBSCRIBER_BUFFER


class Subscription:
    """One subscriber's view of the bus: iterate it with ``async for``; use it as a context manager.

    Iteration ends when the bus closes, the subscriber is unsubscribed, or it lagged (then
    :attr:`lagged` is true). Leaving the ``with`` block unsubscribes synchronously, so it is safe in
    a ``finally`` reached by cancellation.
    """

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[str] | None,
        buffer: int,
        backlog: Iterable[Event],
    ) -> None:
        self._bus = bus
        self.kinds = kinds
        self._send, self._recv = trio.open_memory_channel[Event](buffer)
        self._backlog = collections.deque(backlog)
        self.lagged = False

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.KIND in self.kinds

    def _offer(self, event: Event) -> bool:
        """Deliver without blocking; False (and the subscription is closed) when it is full."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def backlog(self) -> int:
        """Events delivered to this subscriber and not taken yet (replayed ones included)."""
        return self._send.statistics().current_buffer_used + len(self._backlog)

    def close(self) -> None:
        self._bus._unsubscribe(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._recv.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while self._backlog:
            yield self._backlog.popleft()
        try:
            async for event in self._recv:
                yield event
        except trio.ClosedResourceError:
            return

    async def receive(self) -> Event:
        """The next event; raises ``trio.EndOfChannel`` when the subscription has ended."""
        if self._backlog:
            await trio.lowlevel.checkpoint()
            return self._backlog.popleft()
        return await self._recv.receive()


class EventBus:
    def __init__(
        self, *, ring_size: int = DEFAULT_RING_SIZE, buffer: int = DEFAULT_SUBSCRIBER_BUFFER
    ) -> None:
        self._seq = 0
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self._subs: set[Subscription] = set()
        self._buffer = buffer
        self._published = 0
        self._dropped = 0
        self._closed = False

    def current_seq(self) -> int:
        return self._seq

    def publish(self, event: Event) -> Event:
        """Stamp ``event`` with the next seq and deliver it; never blocks. Returns the stamped event."""
        self._seq += 1
        stamped = attrs.evolve(event, seq=self._seq)
        self._ring.append(stamped)
        self._published += 1
        lagging = [s for s in self._subs if s.wants(stamped) and not s._offer(stamped)]
        for sub in lagging:
            self._subs.discard(sub)
            if sub.lagged:
                self._dropped += 1
                log.warning("event bus: dropped a subscriber that fell %d events behind", self._buffer)
        return stamped

    def broadcast(self, event: Event) -> int:
        """Offer ``event`` unsequenced (``seq`` 0, not in the replay ring) to the subscribers that
        named its kind explicitly (a subscription to every kind never sees it); never blocks, and a
        full subscriber is dropped as by :meth:`publish`. For views that resync on their own (the
        swarm's: every dashboard stream starts with a ``swarm_state``). Returns how many took it."""
        took = 0
        for sub in [s for s in self._subs if s.kinds is not None and event.KIND in s.kinds]:
            if sub._offer(event):
                took += 1
            else:
                self._subs.discard(sub)
                if sub.lagged:
                    self._dropped += 1
                    log.warning("event bus: dropped a subscriber that fell %d events behind", self._buffer)
        return took

    def subscribe(
        self,
        kinds: Iterable[str] | None = None,
        after_seq: int | None = None,
        *,
        buffer: int | None = None,
    ) -> Subscription:
        """Open a subscription (see the module docstring for replay and lag semantics)."""
        kindset = frozenset(kinds) if kinds is not None else None
        backlog: list[Event] = []
        if after_seq is not None and after_seq > self._seq:
            # a seq from before a daemon restart: nothing here relates to it
            raise RefetchRequired(after_seq, self._seq)
        if after_seq is not None and after_seq < self._seq:
            oldest = self._ring[0].seq if self._ring else math.inf
            if after_seq + 1 < oldest:
                raise RefetchRequired(after_seq, int(oldest) if oldest != math.inf else self._seq)
            backlog = [e for e in self._ring if e.seq > after_seq and (kindset is None or e.KIND in kindset)]
        sub = Subscription(self, kindset, buffer or self._buffer, backlog)
        if self._closed:
            sub._send.close()
        else:
            self._subs.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """End every subscription (their iterations finish cleanly); later subscribers end at once."""
        self._closed = True
        for sub in list(self._subs):
            sub._send.close()
        self._subs.clear()

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            current_seq=self._seq,
            subscribers=len(self._subs),
            published=self._published,
            dropped_subscribers=self._dropped,
            ring_len=len(self._ring),
            max_backlog=max((s.backlog() for s in self._subs), default=0),
            buffer=self._buffer,
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Actor body: serve until cancelled, then end every subscription.

        The bus's state is plain synchronous data, so this task only owns its lifetime: when the
        supervisor cancels it (shutdown), open SSE streams and socket subscribers see their
        iteration end instead of hanging.
        """
        task_status.started(self)
        try:
            await trio.sleep_forever()
        finally:
            self.close()
