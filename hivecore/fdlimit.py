"""File descriptors: what the operator's surfaces keep when agents open connections.

Every connection to an agent or the manager socket holds a daemon fd. Per-socket caps
(:mod:`hivecore.sockets.mcp`) bound one agent; the *reserve* bounds all of them together: an agent
or manager connection is refused once the descriptor it was accepted on is within
:data:`FD_RESERVE` of the soft ``RLIMIT_NOFILE``. What is left stays for host.sock, the dashboard,
sqlite, git/nix pipes and crash_watch, which are never refused for it. Dashboard connections (TCP,
so agents under the process runtime reach them too) are capped (:mod:`hivecore.dashboard_listener`)
and stop at the last part of the reserve (:func:`in_host_reserve`), which host.sock keeps.

The check is O(1) and needs no ``/proc`` walk: the kernel hands out the lowest free descriptor, so
an accepted socket numbered ``n`` means every descriptor below ``n`` is in use.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

FD_RESERVE = 256
"""Descriptors kept for the operator's surfaces (at most a quarter of the soft limit)."""


def soft_limit() -> int:
    """The process's soft ``RLIMIT_NOFILE`` (``RLIM_INFINITY`` read as a very large number)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def reserve_for(limit: int) -> int:
    """The reserve under a soft limit of ``limit``: :data:`FD_RESERVE`, or a quarter of a small limit."""
    return min(FD_RESERVE, limit // 4)


def in_reserve(fd: int) -> bool:
    """Whether a connection accepted on descriptor ``fd`` would eat into the operator's reserve."""
    limit = soft_limit()
    return fd >= limit - reserve_for(limit)


HOST_RESERVE_SHARE = 8
"""The dashboard may use the reserve but not its last ``1/HOST_RESERVE_SHARE`` (32 of 256), which
stays for host.sock, sqlite and git/nix pipes."""


def host_reserve_for(limit: int) -> int:
    """The part of the reserve host.sock keeps under a soft limit of ``limit``: the last
    ``reserve_for(limit) // HOST_RESERVE_SHARE`` descriptors (at least 1)."""
    return max(1, reserve_for(limit) // HOST_RESERVE_SHARE)


def in_host_reserve(fd: int) -> bool:
    """Whether a dashboard connection accepted on ``fd`` would eat into what host.sock keeps."""
    limit = soft_limit()
    return fd >= limit - host_reserve_for(limit)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (``hive-c0re serve`` at start).

    Returns ``(before, after)``; a limit that cannot be raised is left as it is (logged).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
        return soft, soft
    log.info("open-files limit raised from %d to %d", soft, hard)
    return soft, hard
