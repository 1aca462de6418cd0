"""Transient registry and TransientGuard: "this agent is starting/stopping/…", in memory only.

``async with registry.transient(name, kind):`` sets the transient and publishes ``transient_set``;
leaving the block by **any** path — normal exit, early return, exception, or ``trio.Cancelled``
from an outer scope — clears it and publishes ``transient_cleared``. Setting and clearing are
synchronous (no checkpoint), so cancellation cannot interrupt them and there is no window in which
the transient is set but the guard does not own it.

Transients are deliberately not persisted: a daemon restart clears every stuck row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import attrs

from actors.event_bus import EventBus
from hivecore.errors import Busy
from hivecore.models import TRANSIENT_KINDS, Transient, TransientKind
from hivecore.wire.events import TransientCleared, TransientSet


class TransientRegistry:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._map: dict[str, Transient] = {}
        self._listeners: list[Callable[[str, Transient | None], None]] = []

    def listen(self, listener: Callable[[str, Transient | None], None]) -> None:
        """Call ``listener(name, transient_or_None)`` synchronously on every set and clear."""
        self._listeners.append(listener)

    def _notify(self, name: str, entry: Transient | None) -> None:
        for listener in self._listeners:
            listener(name, entry)

    def get(self, name: str) -> Transient | None:
        return self._map.get(name)

    def snapshot(self) -> dict[str, Transient]:
        return dict(self._map)

    def set_nowait(self, name: str, kind: TransientKind) -> Transient:
        """Set a transient; raises :class:`Busy` if ``name`` already has one."""
        if kind not in TRANSIENT_KINDS:
            raise ValueError(f"unknown transient kind {kind!r}")
        current = self._map.get(name)
        if current is not None:
            raise Busy(f'agent "{name}" is already {current.kind}; wait for it to finish')
        entry = Transient(kind=kind, since_unix=int(time.time()))
        self._map[name] = entry
        self._bus.publish(TransientSet(name=name, transient_kind=kind, since_unix=entry.since_unix))
        self._notify(name, entry)
        return entry

    def clear_nowait(self, name: str) -> None:
        if self._map.pop(name, None) is not None:
            self._bus.publish(TransientCleared(name=name))
            self._notify(name, None)

    def transient(self, name: str, kind: TransientKind) -> TransientGuard:
        return TransientGuard(self, name, kind)


@attrs.define
class TransientGuard:
    """Async context manager owning one transient for the duration of a block."""

    registry: TransientRegistry
    name: str
    kind: TransientKind
    _held: bool = False

    async def __aenter__(self) -> TransientGuard:
        self.registry.set_nowait(self.name, self.kind)
        self._held = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # synchronous on purpose: no checkpoint here, so an outer cancellation cannot skip it
        if self._held:
            self._held = False
            self.registry.clear_nowait(self.name)
