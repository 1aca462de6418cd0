"""The suite's one way to wait for something another task, thread or process does.

Tests with real processes or threads run on trio's real clock and wait here; virtual-time tests
(the ``autojump_clock`` fixture) drive fakes only and never need this.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import trio

DEFAULT_TIMEOUT = 20.0
"""Seconds of *real* time: generous, since the suite shares a small machine with other work."""


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.01,
    what: str | None = None,
) -> None:
    """Return once ``check()`` (sync or async) is truthy; poll every ``interval`` s.

    The deadline is real time (``time.monotonic``), whatever clock trio runs on, so a mistaken
    use under a virtual clock fails loudly instead of racing ahead. Raises ``AssertionError``
    naming ``what`` (or the check) once ``timeout`` s have passed without success.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            label = what or getattr(check, "__qualname__", repr(check))
            raise AssertionError(f"still not true after {timeout} s: {label}")
        await trio.sleep(interval)
