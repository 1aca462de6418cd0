"""Bounded shutdown: shielded work gets a deadline once the daemon stops, and the process exits in time.

Some work must not be torn in half by a hung-up caller (an approval row and its pinned commit, a
message handed out and put back): it runs in :func:`shielded`. Shielding has no end of its own, so
without a bound a SIGTERM during such work waits on it forever. The rules:

* :func:`shielded` is a shielded cancel scope with no deadline while the daemon runs (:func:`reset`
  when a supervisor starts);
* :func:`begin` (the supervisor calls it when shutdown starts) gives every open shielded scope, and
  every one opened afterwards, a deadline :data:`SHIELDED_WORK_LIMIT` seconds away. Work cut there
  is cancelled like any other (subprocess groups are killed); whatever it left half-done is what a
  ``kill -9`` would leave, and the next start sweeps it;
* the supervisor stops the sockets first and waits up to that deadline for them, so the store and the
  event bus outlive the shielded work they serve;
* :func:`exit_watchdog` (``hive-c0re serve``) ends the process with status 1 if it still runs
  :data:`EXIT_LIMIT` seconds after the signal, whatever is stuck.

The registry is per trio run (a ``RunVar``), so daemons in separate runs (tests) never share it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator

import attrs
import trio

log = logging.getLogger(__name__)

SHIELDED_WORK_LIMIT = 15.0
"""Seconds shielded work may go on once shutdown has started."""
EXIT_LIMIT = 30.0
"""Seconds after SIGTERM/SIGINT by which ``hive-c0re serve`` has exited, in every case."""


@attrs.define
class _Shields:
    scopes: set[trio.CancelScope] = attrs.field(factory=set)
    deadline: float = math.inf


_SHIELDS: trio.lowlevel.RunVar[_Shields] = trio.lowlevel.RunVar("hive_shields")


def _shields() -> _Shields:
    try:
        return _SHIELDS.get()
    except LookupError:
        shields = _Shields()
        _SHIELDS.set(shields)
        return shields


@contextlib.contextmanager
def shielded() -> Iterator[trio.CancelScope]:
    """A shielded cancel scope that shutdown can still bound (see the module doc)."""
    shields = _shields()
    # a deadline already past belongs to a shutdown that is over (another daemon in this run)
    deadline = shields.deadline if shields.deadline > trio.current_time() else math.inf
    scope = trio.CancelScope(shield=True, deadline=deadline)
    shields.scopes.add(scope)
    try:
        with scope:
            yield scope
    finally:
        shields.scopes.discard(scope)


def begin(limit: float = SHIELDED_WORK_LIMIT) -> float:
    """Shutdown has started: every shielded scope, open or future, ends within ``limit`` seconds.

    Returns the deadline (trio time). Synchronous, so it is safe in a ``finally`` being cancelled.
    """
    shields = _shields()
    shields.deadline = min(shields.deadline, trio.current_time() + limit)
    for scope in shields.scopes:
        scope.deadline = min(scope.deadline, shields.deadline)
    if shields.scopes:
        log.info("shutdown: %d shielded task(s) get %g s to finish", len(shields.scopes), limit)
    return shields.deadline


def reset() -> None:
    """A daemon starts in this run (the supervisor calls it): shielded work is unbounded again."""
    _shields().deadline = math.inf


def deadline() -> float:
    """The deadline :func:`begin` set (trio time), or ``-inf`` before shutdown."""
    shields = _shields()
    return shields.deadline if shields.deadline != math.inf else -math.inf


def exit_watchdog(limit: float = EXIT_LIMIT) -> threading.Timer:
    """A daemon thread that ends the process (status 1) ``limit`` seconds from now; ``cancel()`` it
    if shutdown finishes first. It does not keep the process alive."""

    def hard_exit() -> None:
        log.error("shutdown did not finish within %g s; exiting now", limit)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(limit, hard_exit)
    timer.daemon = True
    timer.start()
    return timer
