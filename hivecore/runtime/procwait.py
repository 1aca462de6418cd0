"""Waiting for an agent's processes to end without blocking (or busily polling on) the trio thread.

An agent of the process runtime is a process group led by its shim (pgid = the shim's pid). Waiting for
it to end has two stages:

1. The shim: :func:`wait_process_exit` opens a pidfd (``os.pidfd_open``) and waits for it to turn
   readable (``trio.lowlevel.wait_readable``), which the kernel does the moment the process (every
   thread of it) has exited. No polling. Where pidfds are unavailable (``ENOSYS`` before Linux 5.3,
   ``EPERM`` under some seccomp profiles, or no fd left) it falls back to :func:`poll_until`.
2. The rest of the group, checked once after the shim is gone (:func:`live_group_members`). The shim
   kills what its agent left behind before it exits, so this is normally empty at once, and an
   ``os.killpg(pgid, 0)`` answers that in one syscall. Only a group whose shim was killed (issue 11)
   or whose members died as zombies nobody reaps needs the ``/proc`` scan, and only a group with live
   members left needs the poll.

Identity: a recorded ``(pid, starttime)`` names one process for good (``/proc/<pid>/stat`` field 22), so a
recycled pid is never mistaken for the agent. For the group: the kernel does not hand out a number that
is still some process's pid, pgid or sid, so while any member of the agent's group lives, the number
cannot belong to a new process; a live process holding the pgid number with another start time means
the old group is gone. (Not covered: the group ended, the number was recycled by a process that made
itself a group leader, forked and died, all between two probes. Negligible.)

Blocking ``/proc`` work (scans) runs in worker threads (``trio.to_thread.run_sync``); the caller's
thread only makes single syscalls and reads one ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from hivecore.runtime.shim import group_members, read_proc_stat

log = logging.getLogger(__name__)

POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.25
"""The fallback poll's backoff: 10 ms, doubling up to 250 ms (what bounds how late an exit is seen)."""


def process_exited(pid: int, starttime: int) -> bool:
    """Has the process ``(pid, starttime)`` exited, all its threads included? (Small ``/proc`` reads.)

    A zombie thread-group leader may still have threads on their way out (the shim has a log-pump
    thread); it has exited, and can be reaped, once they are gone.
    """
    st = read_proc_stat(pid)
    if st is None or st.starttime != starttime:
        return True
    if st.state != "Z":
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def live_group_members(pgid: int, leader_starttime: int) -> list[int]:
    """Pids of the live (non-zombie) members of the group that the process ``(pgid, leader_starttime)``
    created, leader included. Blocking (it may scan ``/proc``): call it from a worker thread.

    One ``killpg(pgid, 0)`` when the group is gone (the common case); a ``/proc`` scan otherwise, since
    zombies (members that died and wait to be reaped) keep a group "existing" for ``kill``.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # members owned by another user: it exists
    leader = read_proc_stat(pgid)
    if leader is not None and leader.starttime != leader_starttime:
        return []  # the number is some other process's pid now: the group it led is gone
    return group_members(pgid)


async def poll_until(check: Callable[[], bool]) -> None:
    """Return once ``check()`` (run in a worker thread) is true, polling with a capped backoff.

    ``check`` runs first at once, so a condition that already holds costs no sleep. Cancellation:
    raises ``Cancelled`` between checks (a check that has started runs to completion in its thread).
    """
    delay = POLL_FIRST_SECONDS
    while not await trio.to_thread.run_sync(check):
        await trio.sleep(delay)
        delay = min(delay * 2, POLL_MAX_SECONDS)


async def wait_process_exit(pid: int, starttime: int) -> None:
    """Return once the process ``(pid, starttime)`` has exited, every thread of it (it may be a zombie
    then); at once if it is gone already. Reaps nothing: the caller does, if it is the parent.

    pidfd-based (no polling); a poll with backoff where ``pidfd_open`` is refused. The pidfd is closed on
    every path, cancellation included (``Cancelled`` propagates; nothing else is left behind).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone, and reaped already
    except OSError as e:
        # ENOSYS (kernel < 5.3), EPERM (seccomp), EMFILE/ENFILE: wait the slow way instead of failing
        log.debug("pidfd_open(%d) failed (%s): polling for its exit instead", pid, e)
        await poll_until(lambda: process_exited(pid, starttime))
        return
    try:
        # The fd refers to whichever process had the number when it was opened. If /proc shows our start
        # time now, that process is ours: our process held the number before and still holds it. The
        # fd turns readable once the whole process (every thread) has exited.
        st = read_proc_stat(pid)
        if st is not None and st.starttime == starttime:
            await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)  # drops trio's epoll registration of the number
        os.close(fd)
