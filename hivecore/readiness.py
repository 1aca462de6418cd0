"""systemd readiness and watchdog (``Type=notify``) for ``hive-c0re serve``.

:func:`run` is one trio task beside the daemon: once every actor is started it waits until host.sock
answers a real request (``list``), then sends ``READY=1`` with a ``STATUS=`` summary; while the daemon
serves it sends ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (when systemd set it) and a fresh
``STATUS=`` whenever the summary changes. The pings are sent from the trio loop itself, so a wedged
loop (a blocking call on the trio thread) stops them and systemd restarts the daemon after
``WatchdogSec``. A supervisor child that has given up (``failed``) stops them too. ``STOPPING=1``
is the caller's (:func:`hivecore.cli.daemon.serve`), at the first signal.

:func:`install_wedge_hook` is a debugging aid for the watchdog test: with
``HIVE_DEBUG_WEDGE_SECONDS=N`` in the daemon's environment, ``SIGUSR2`` blocks the trio thread for
N seconds (a Python signal handler runs on the main thread, which is trio's). Only whoever sets the
daemon's environment (the operator) can turn it on; without the variable SIGUSR2 keeps its default.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import trio

from hivecore.errors import HiveError
from hivecore.sdnotify import Notifier
from hivecore.sockets import client

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0
"""Seconds between summary checks when there is no watchdog (or a longer one)."""
ANSWER_TIMEOUT = 5.0
"""Seconds one probe of host.sock may take."""
PROBE_PAUSE = 0.2
WEDGE_ENV = "HIVE_DEBUG_WEDGE_SECONDS"


def host_sock_answers(path: str) -> bool:
    """Whether host.sock at ``path`` answers ``list`` with ``ok`` (blocking; run it in a thread)."""
    try:
        answer = json.loads(client.request(path, b'{"cmd":"list"}\n', ANSWER_TIMEOUT))
    except (client.Unreachable, ValueError):
        return False
    return isinstance(answer, dict) and answer.get("ok") is True


async def wait_answering(path: str) -> None:
    """Return once host.sock answers (every actor is started before :func:`run` is called)."""
    # a probe over the socket, as a client would see it (no in-process event to wait for)
    while not await trio.to_thread.run_sync(host_sock_answers, path):  # noqa: ASYNC110
        await trio.sleep(PROBE_PAUSE)


async def run(
    notifier: Notifier,
    host_socket: str,
    summary: Callable[[], str],
    healthy: Callable[[], bool],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Notify readiness, then ping and report status until cancelled (see the module doc)."""
    await wait_answering(host_socket)
    shown = summary()
    notifier.ready(shown)
    log.info("ready: %s", shown)
    task_status.started()
    interval = notifier.target.watchdog_interval
    step = min(interval, STATUS_EVERY) if interval is not None else STATUS_EVERY
    next_ping = trio.current_time()
    while True:
        now = trio.current_time()
        if interval is not None and now >= next_ping:
            if healthy():
                notifier.watchdog()
            next_ping = now + interval
        text = summary()
        if text != shown:
            notifier.status(text)
            shown = text
        await trio.sleep(step if interval is None else max(0.0, min(step, next_ping - trio.current_time())))


def install_wedge_hook(env: dict[str, str] | None = None) -> float | None:
    """With :data:`WEDGE_ENV` set, make SIGUSR2 block the calling (main) thread that long; the
    seconds, or None (nothing installed). Call it on the main thread before ``trio.run``."""
    raw = (os.environ if env is None else env).get(WEDGE_ENV)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise HiveError(f"{WEDGE_ENV}={raw[:40]!r} is not a number of seconds") from None

    def wedge(signum: int, frame: object) -> None:
        log.warning("SIGUSR2: blocking the event loop for %g s (%s)", seconds, WEDGE_ENV)
        time.sleep(seconds)

    signal.signal(signal.SIGUSR2, wedge)
    return seconds
