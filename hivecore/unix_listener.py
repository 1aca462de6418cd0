"""A Unix stream listener for trio (trio has none built in, trio#279), shared by every daemon socket.

:func:`open_unix_listener` never steals a live socket: when something answers on the path it
refuses; a socket file left behind by a dead daemon is replaced; anything that is not a socket is
left alone and refused. The socket is made ``mode`` (0660) and handed to ``group``. Its directory,
and every missing one above it, is created ``dir_mode`` (0751); an existing one is never
re-moded (``--host-socket ~/host.sock`` must not widen a home directory).

Serving a listener also tames trio's accept-error log (:func:`ensure_accept_error_filter`).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DIR_MODE = 0o751
BACKLOG = 4096
"""Large enough that a burst of clients never sees EAGAIN on connect (the kernel caps it at somaxconn)."""


ACCEPT_LOGGER = "trio.serve_listeners"
"""trio's accept loop logs every failed accept here (EMFILE & co, with a traceback, every 0.1 s)."""
ACCEPT_QUIET_SECONDS = 60.0


class AcceptErrorBurstFilter(logging.Filter):
    """Lets the first accept error of a burst through, without its traceback; drops the rest.

    A burst ends after ``quiet_seconds`` without an accept error; the first record of the next burst
    says how many the previous one dropped. trio keeps retrying every 0.1 s on its own, so out of
    file descriptors the daemon logs one line instead of ten a second.
    """

    def __init__(
        self, quiet_seconds: float = ACCEPT_QUIET_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        super().__init__()
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self.last: float | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        in_burst = self.last is not None and now - self.last < self.quiet_seconds
        self.last = now
        if in_burst:
            self.dropped += 1
            return False
        record.exc_info = None  # the traceback is trio's accept loop: it says nothing the message does not
        record.exc_text = None
        record.msg = f"{record.msg} (repeats are not logged until {self.quiet_seconds:g} s pass without one"
        if self.dropped:
            record.msg += f"; {self.dropped} were not logged in the previous burst"
        record.msg += ")"
        self.dropped = 0
        return True


def ensure_accept_error_filter() -> None:
    """Install the accept-error filter unless one is already there (idempotent, cheap)."""
    if not any(isinstance(f, AcceptErrorBurstFilter) for f in logging.getLogger(ACCEPT_LOGGER).filters):
        install_accept_error_filter()


def install_accept_error_filter(
    quiet_seconds: float = ACCEPT_QUIET_SECONDS, clock: Callable[[], float] = time.monotonic
) -> AcceptErrorBurstFilter:
    """Put one :class:`AcceptErrorBurstFilter` on trio's accept logger (replacing an earlier one)."""
    logger = logging.getLogger(ACCEPT_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, AcceptErrorBurstFilter)]:
        logger.removeFilter(old)
    new = AcceptErrorBurstFilter(quiet_seconds, clock)
    logger.addFilter(new)
    return new


class SocketInUse(OSError):
    """A live process already listens on the path, or the path is not a socket."""

    def __str__(self) -> str:
        return str(self.strerror)


def resolve_group(group: str | None, *, default: str | None = None) -> int | None:
    """The gid of ``group`` (``LookupError`` if there is no such group), else of ``default`` if it exists."""
    if group is not None:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise LookupError(f"group {group!r} does not exist; create it or choose another") from None
    if default is not None:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(default).gr_gid
    return None


def _prepare_dir(parent: Path, dir_mode: int) -> None:
    """Create ``parent`` and every missing directory above it with ``dir_mode``; existing ones are
    left as they are (``mkdir -p`` would make the missing ones 0755 through the umask)."""
    missing: list[Path] = []
    at = parent
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left alone
        os.chmod(directory, dir_mode)  # mkdir's mode is filtered by the umask


def _clear_stale(path: Path) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse if it is live or not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(errno.EEXIST, f"refusing to replace {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)  # a Unix connect never waits: it succeeds, is refused, or says EAGAIN
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        # EAGAIN (a full backlog) or anything else odd: somebody may be there; never steal it
        raise SocketInUse(errno.EADDRINUSE, f"{path} is in use by a live process ({exc})") from exc
    finally:
        probe.close()
    raise SocketInUse(errno.EADDRINUSE, f"another process is already listening on {path}")


@attrs.frozen
class UnixListener:
    """A bound, listening Unix socket: serve ``listener``; :meth:`close` it when done."""

    listener: trio.SocketListener
    path: Path
    inode: int

    def close(self) -> None:
        """Unlink the socket file (unless a successor has replaced it since) and close the socket.

        Synchronous, so it is safe in a ``finally`` reached by cancellation.
        """
        try:
            if self.path.lstat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        self.listener.socket.close()


def bind_unix_socket(
    path: Path,
    *,
    mode: int = SOCKET_MODE,
    gid: int | None = None,
    dir_mode: int | None = DIR_MODE,
    backlog: int = BACKLOG,
    uid: int | None = None,
) -> tuple[socket.socket, int]:
    """The synchronous part of :func:`open_unix_listener`: a listening socket and its file's inode."""
    if dir_mode is not None:
        _prepare_dir(path.parent, dir_mode)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(os.fspath(path))
        bound = True
        inode = path.lstat().st_ino
        os.chmod(path, mode)
        if gid is not None or uid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if bound:  # ours: do not leave a dead socket file behind
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return sock, inode


async def open_unix_listener(
    path: Path,
    *,
    mode: int = SOCKET_MODE,
    gid: int | None = None,
    dir_mode: int | None = DIR_MODE,
    backlog: int = BACKLOG,
    uid: int | None = None,
) -> UnixListener:
    """Bind and listen on ``path``; the caller owns the result and closes it when done.

    ``uid`` makes the socket that user's (an agent's socket: pass ``mode=0o600`` so only it, and
    root, can connect). Raises :class:`SocketInUse` when a live process holds the path (or it is
    not a socket),
    ``OSError`` when binding, chmod or chgrp fails. The filesystem work runs synchronously: a
    handful of syscalls on a local directory, done once at startup.
    """
    ensure_accept_error_filter()
    sock, inode = bind_unix_socket(path, mode=mode, gid=gid, dir_mode=dir_mode, backlog=backlog, uid=uid)
    await trio.lowlevel.checkpoint()
    return UnixListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), path, inode)
