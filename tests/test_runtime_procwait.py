"""hivecore.runtime.procwait: the poll's backoff (virtual time), group identity and exit waits (real
processes, each killed and reaped by the ``leader`` fixture)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from hivecore.runtime.procwait import live_group_members, poll_until, process_exited, wait_process_exit
from hivecore.runtime.shim import read_proc_stat
from tests.waiting import eventually


@pytest.fixture
def leader() -> Iterator[subprocess.Popen[bytes]]:
    """A ``sleep`` leading its own session and process group (with a child in the group)."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def starttime(pid: int) -> int:
    st = read_proc_stat(pid)
    assert st is not None
    return st.starttime


async def test_poll_until_checks_at_once_then_backs_off_to_a_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0
    lock = threading.Lock()

    def check() -> bool:
        nonlocal calls
        with lock:
            calls += 1
            return calls == 9

    t0 = trio.current_time()
    await poll_until(check)
    assert calls == 9
    # 10, 20, 40, 80, 160 ms, then capped at 250 ms (three times)
    assert trio.current_time() - t0 == pytest.approx(0.01 + 0.02 + 0.04 + 0.08 + 0.16 + 3 * 0.25)

    t0 = trio.current_time()
    await poll_until(lambda: True)
    assert trio.current_time() == t0  # already true: no sleep


async def test_group_members_and_the_pid_reuse_guard(leader: subprocess.Popen[bytes]) -> None:
    pid = leader.pid
    start = starttime(pid)
    await eventually(lambda: len(live_group_members(pid, start)) >= 2)  # no event for a fork
    members = live_group_members(pid, start)
    assert pid in members
    # the same number with another start time: another process holds it, so the old group is gone
    assert live_group_members(pid, start + 1) == []

    os.killpg(pid, signal.SIGKILL)
    leader.wait()  # reaped; its child may linger as a zombie (an init that does not reap)
    # SIGKILL is delivered asynchronously: the child may still be running for a moment (CI saw it)
    await eventually(lambda: live_group_members(pid, start) == [], 5)


async def test_wait_process_exit(leader: subprocess.Popen[bytes]) -> None:
    pid = leader.pid
    start = starttime(pid)
    assert not process_exited(pid, start)
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def waiter() -> None:
            await wait_process_exit(pid, start)
            done.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(5):
            await done.wait()
    assert process_exited(pid, start)  # a zombie until reaped
    with trio.fail_after(5):
        await wait_process_exit(pid, start + 1)  # not that process: at once
    leader.wait()
    with trio.fail_after(5):
        await wait_process_exit(pid, start)  # reaped: at once
