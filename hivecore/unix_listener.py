"""A Unix stream listener for trio (trio has none built in, trio#279), shared by every daemon socket.

:func:`open_unix_listener` never steals a live socket: when something answers on the path it
refuses; a socket file left behind by a dead daemon is replaced; anything that is not a socket is
left alone and refused. The socket is made ``mode`` (0660) and handed to ``group``; its directory is
treated as the daemon's runtime directory and made ``dir_mode`` (0751), unless it is a shared
sticky directory such as ``/tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from pathlib import Path

import attrs
import trio

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DIR_MODE = 0o751
BACKLOG = 4096
"""Large enough that a burst of clients never sees EAGAIN on connect (the kernel caps it at somaxconn)."""


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
    parent.mkdir(parents=True, exist_ok=True)
    st = parent.stat()
    if st.st_mode & stat.S_ISVTX or st.st_uid != os.geteuid():
        return  # a shared directory (/tmp) or someone else's: not ours to change
    if stat.S_IMODE(st.st_mode) != dir_mode:
        os.chmod(parent, dir_mode)


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
        if gid is not None:
            os.chown(path, -1, gid)
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
) -> UnixListener:
    """Bind and listen on ``path``; the caller owns the result and closes it when done.

    Raises :class:`SocketInUse` when a live process holds the path (or it is not a socket),
    ``OSError`` when binding, chmod or chgrp fails. The filesystem work runs synchronously: a
    handful of syscalls on a local directory, done once at startup.
    """
    sock, inode = bind_unix_socket(path, mode=mode, gid=gid, dir_mode=dir_mode, backlog=backlog)
    await trio.lowlevel.checkpoint()
    return UnixListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), path, inode)
