"""One thread running its own asyncio loop, reached from trio (the swarm's ``nats-py`` client lives
there; see docs/architecture.md, "The swarm's asyncio bridge").

trio → asyncio: :meth:`AsyncioThread.call` submits a coroutine with
:func:`asyncio.run_coroutine_threadsafe` and waits on a :class:`trio.Event` that the future's done
callback sets through the trio token (no worker thread is held while it waits). asyncio → trio:
:meth:`AsyncioThread.to_trio` returns a callable the asyncio side calls to run a synchronous function
on the trio loop (``send_nowait`` on an unbounded memory channel, typically). Cancelling a trio caller
cancels the asyncio task; the trio side never blocks on the asyncio thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")

log = logging.getLogger(__name__)


class LoopClosed(RuntimeError):
    """The asyncio loop has stopped: nothing more can be submitted."""


class AsyncioThread:
    """A running asyncio loop in a daemon thread; use :func:`asyncio_thread` to get one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self.loop = loop
        self._token = token
        self.closed = False

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` on the asyncio loop and return its result (or raise its exception) in trio.

        Raises :class:`LoopClosed` once the loop has stopped. Cancellation cancels the asyncio task."""
        if self.closed:
            raise LoopClosed("the asyncio loop has stopped")
        done = trio.Event()
        token = self._token
        abandoned = False

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        async def run() -> T:
            try:
                return await fn()
            except Exception:
                if abandoned:  # nobody will read it; asyncio would log "Task exception was never
                    # retrieved" with a traceback (nats-py's fetch, cancelled as its connection
                    # closes, raises ConnectionClosedError instead of CancelledError)
                    log.debug("an abandoned asyncio call ended with an error", exc_info=True)
                    raise asyncio.CancelledError from None
                raise

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            abandoned = True
            future.cancel()
            raise
        return future.result()

    def to_trio(self, fn: Callable[..., object]) -> Callable[..., None]:
        """A callable for the asyncio side: ``cb(*args)`` runs ``fn(*args)`` soon on the trio loop
        (dropped silently once trio has finished)."""
        token = self._token

        def post(*args: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn, *args)

        return post


@contextlib.asynccontextmanager
async def asyncio_thread(name: str = "asyncio") -> AsyncIterator[AsyncioThread]:
    """Start a daemon thread running a new asyncio loop; stop it (pending tasks cancelled) on exit."""
    token = trio.lowlevel.current_trio_token()
    ready = trio.Event()
    stopped = trio.Event()
    holder: list[asyncio.AbstractEventLoop] = []

    def tell(event: trio.Event) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(event.set)

    def main() -> None:
        loop = asyncio.new_event_loop()
        holder.append(loop)
        asyncio.set_event_loop(loop)
        tell(ready)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            tell(stopped)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    await ready.wait()
    bridge = AsyncioThread(holder[0], token)
    try:
        yield bridge
    finally:
        bridge.closed = True
        with contextlib.suppress(RuntimeError):
            bridge.loop.call_soon_threadsafe(bridge.loop.stop)
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await stopped.wait()
