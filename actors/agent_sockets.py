"""The per-agent sockets actor: one ``<runtime-dir>/agents/<n>/mcp.sock`` per existing agent.

It observes the views actor: a row appearing binds that agent's socket, a row removed (the agent
was destroyed) unbinds it and removes ``<runtime-dir>/agents/<n>/``. This actor is that directory's
only writer; the process runtime keeps its files apart, in ``<state>/run/process/<n>/``.
The manager has no agent socket: it uses the manager socket.

The observer callback runs synchronously inside the views actor; it only queues the change on an
unbounded channel. A bind that failed (logged) is retried on the agent's next row change.
:meth:`AgentSockets.run` owns one cancel scope per bound socket; on a restart after a crash it
re-syncs with the views' current rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from actors.views import RowsApplied, Views
from hivecore.config import Config
from hivecore.names import MANAGER_NAME
from hivecore.sockets.server import JsonLinesServer, ListenError

log = logging.getLogger(__name__)


@attrs.frozen
class AgentSocketsStatistics:
    bound: int
    binds: int
    unbinds: int
    bind_failures: int


class AgentSocketServer(Protocol):
    """One agent's socket server (:class:`hivecore.sockets.mcp.AgentSocket`): serves until
    cancelled and unlinks its socket file on the way out."""

    @property
    def server(self) -> JsonLinesServer:
        """The listening server (its statistics)."""
        ...

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...


class AgentSockets:
    def __init__(
        self,
        config: Config,
        views: Views,
        socket_factory: Callable[[str], AgentSocketServer],
    ) -> None:
        """``socket_factory(name)`` builds agent ``name``'s server (the daemon wires in the broker)."""
        self.config = config
        self.views = views
        self._factory = socket_factory
        self._send, self._recv = trio.open_memory_channel[tuple[str, bool]](math.inf)
        self._scopes: dict[str, trio.CancelScope] = {}
        self._ended: dict[str, trio.Event] = {}
        """Set when that socket's server task has ended (its own cleanup done)."""
        self._sockets: dict[str, AgentSocketServer] = {}
        self._binds = self._unbinds = self._failures = 0
        self._changed = trio.Event()
        views.observe(self._observe)

    def statistics(self) -> AgentSocketsStatistics:
        return AgentSocketsStatistics(len(self._scopes), self._binds, self._unbinds, self._failures)

    def socket(self, name: str) -> AgentSocketServer | None:
        return self._sockets.get(name)

    def bound(self) -> list[str]:
        return sorted(self._scopes)

    async def wait_for(self, predicate: Callable[[AgentSockets], bool]) -> None:
        """Return once ``predicate(self)`` holds; checked after every bind (or failed bind) and
        unbind (tests)."""
        while not predicate(self):
            await self._changed.wait()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _observe(self, applied: RowsApplied) -> None:
        for name, (old, new) in applied.changes.items():
            if name == MANAGER_NAME:
                continue
            if new is None:
                if old is not None:
                    self._send.send_nowait((name, False))
            elif old is None or name not in self._scopes:
                # a new row, or a row of an agent whose bind failed earlier: (re)try the bind
                self._send.send_nowait((name, True))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            try:
                for name in self.views.rows():
                    if name != MANAGER_NAME:
                        await self._bind(nursery, name)
                task_status.started(self)
                async for name, present in self._recv:
                    if present:
                        await self._bind(nursery, name)
                    else:
                        await self._unbind(name)
            finally:
                for scope in self._scopes.values():
                    scope.cancel()
                self._scopes.clear()
                self._ended.clear()
                self._sockets.clear()

    async def _bind(self, nursery: trio.Nursery, name: str) -> None:
        if name in self._scopes:
            return
        sock = self._factory(name)
        scope = trio.CancelScope()
        ended = trio.Event()

        async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await sock.run(task_status=task_status)
            finally:
                ended.set()

        try:
            await nursery.start(serve)
        except ListenError as exc:
            self._failures += 1
            log.error("agent socket for %s: %s (retried on its next change)", name, exc)
            self._changed_now()
            return
        except Exception:
            self._failures += 1
            log.exception("agent socket for %s could not be bound (retried on its next change)", name)
            self._changed_now()
            return
        self._binds += 1
        self._scopes[name] = scope
        self._ended[name] = ended
        self._sockets[name] = sock
        self._changed_now()

    async def _unbind(self, name: str) -> None:
        scope = self._scopes.get(name)
        if scope is not None:
            scope.cancel()  # the server unlinks its socket file on the way out
            self._unbinds += 1
            # its cleanup and ours never run at once: the two unlinking mcp.sock together made
            # ours fail before its rmdir, leaving the directory behind (issue 16 item 4)
            await self._ended[name].wait()
        await trio.to_thread.run_sync(self._remove_dir, name)
        # only now is the name no longer bound(): a waiter that sees it gone finds the directory gone
        self._scopes.pop(name, None)
        self._ended.pop(name, None)
        self._sockets.pop(name, None)
        self._changed_now()

    def _remove_dir(self, name: str) -> None:
        try:
            directory = self.config.agent_socket_dir(name)
            sock = directory / "mcp.sock"
            if sock.is_socket() and not sock.is_symlink():
                sock.unlink(missing_ok=True)
            directory.rmdir()
            log.info("agent socket of %s closed; removed %s", name, directory)
        except FileNotFoundError:
            pass
        except OSError as exc:  # not empty: something planted there; left for the operator
            log.warning("agent socket dir for %s kept: %s", name, exc)
        except Exception as exc:  # a refused path (planted symlink)
            log.warning("agent socket dir for %s not removed: %s", name, exc)
