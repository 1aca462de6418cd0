"""Reading and writing in directories an agent can write, never following the agent's symlinks.

The daemon runs as root; everything under ``agents/<n>/`` is the agent's to shape. A symlink planted
there must not make root read (``hyperhive-status -> /etc/shadow``) or create (``hyperhive-paused ->
/etc/nologin``) anything outside, a FIFO must not block the daemon, and a huge file or tree must not
stall it. So:

* a path is opened one component at a time from a trusted root, each with ``O_NOFOLLOW`` (a
  symlink anywhere below the root fails with ``ELOOP``/``ENOTDIR``) — :func:`open_dir`;
* files are opened ``O_NOFOLLOW | O_NONBLOCK``, checked with ``fstat`` to be regular, and read up to
  a cap — :func:`read_capped`;
* files are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to a directory fd — :func:`create_file`,
  :func:`ensure_regular_file` (replaces a planted link or FIFO); :func:`remove_entry` unlinks the
  entry itself, never a link's target;
* existence checks are ``lstat``-based — :func:`regular_file_exists`;
* walks go by directory fds, never into a link, one fd open at a time, and stop after a cap on
  entries — :func:`has_regular_file`, :func:`tree_size_and_mtime`.

Every function here is synchronous and cheap (bounded syscalls on a local directory). Errors are
``OSError``: the caller decides whether a missing or refused entry means "no" or an error message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Iterator
from pathlib import Path

import attrs

MAX_READ_BYTES = 4096
MAX_WALK_ENTRIES = 10_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The entry exists but is not a regular file (a FIFO, socket, device or directory)."""


def _component(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\0" in part:
        raise ValueError(f"not a single path component: {part!r}")
    return part


def open_dir(root: Path, *parts: str) -> int:
    """An fd (``O_DIRECTORY``, close it) of ``root/parts…``; no symlink below ``root`` is followed.

    ``root`` itself is trusted (the daemon's own directory) and opened normally. Raises
    ``OSError``: ``ELOOP``/``ENOTDIR`` when a component is a symlink or not a directory,
    ``ENOENT`` when one is missing; ``ValueError`` for a part that is not a single component.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            child = os.open(_component(part), _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_subdir(dir_fd: int, name: str) -> Iterator[int]:
    """The directory ``name`` in ``dir_fd``, opened without following a link (``ELOOP``/``ENOTDIR``
    for a link or a non-directory), as a context manager closing the fd on the way out."""
    fd = os.open(_component(name), _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def opened_dir(root: Path, *parts: str) -> Iterator[int]:
    """:func:`open_dir` as a context manager: the fd is closed on the way out."""
    fd = open_dir(root, *parts)
    try:
        yield fd
    finally:
        os.close(fd)


@attrs.frozen
class CappedRead:
    data: bytes
    """At most the cap's bytes from the start of the file."""
    truncated: bool
    """The file was longer than the cap."""
    mtime: float
    nlink: int = 1
    """Its hard-link count (``fstat`` of the fd read)."""
    uid: int = -1
    """Its owner (``fstat`` of the fd read)."""


def read_capped(dir_fd: int, name: str, limit: int = MAX_READ_BYTES) -> CappedRead:
    """Read regular file ``name`` in ``dir_fd`` without following a symlink, at most ``limit`` bytes.

    Raises ``OSError`` (``ELOOP`` for a symlink, ``ENOENT``…) or :class:`NotRegularFile`. A FIFO
    is never blocked on: it is opened non-blocking and refused by ``fstat``.
    """
    fd = os.open(_component(name), _READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"{name} is not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, limit + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return CappedRead(
        data=data[:limit], truncated=len(data) > limit, mtime=st.st_mtime, nlink=st.st_nlink, uid=st.st_uid
    )


def entry_mode(dir_fd: int, name: str) -> int | None:
    """``lstat`` mode of ``name`` in ``dir_fd`` (a symlink is reported as one), ``None`` if absent."""
    try:
        return os.stat(_component(name), dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None


def regular_file_exists(dir_fd: int, name: str) -> bool:
    """``name`` is a regular file in ``dir_fd`` (``lstat``: a symlink to a file does not count)."""
    mode = entry_mode(dir_fd, name)
    return mode is not None and stat.S_ISREG(mode)


def create_file(dir_fd: int, name: str, mode: int = 0o644) -> None:
    """Create an empty regular file ``name`` in ``dir_fd``; ``FileExistsError`` if anything is there.

    ``O_EXCL | O_NOFOLLOW``: a symlink planted at ``name`` is never followed, even a dangling one.
    """
    fd = os.open(_component(name), _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask filtered the open's mode
    finally:
        os.close(fd)


def ensure_regular_file(dir_fd: int, name: str, mode: int = 0o644, *, attempts: int = 3) -> None:
    """Make ``name`` in ``dir_fd`` a regular file: keep one that is, else replace what is there.

    A symlink, FIFO or socket at ``name`` is unlinked (the entry itself) and an empty file created
    with ``O_EXCL | O_NOFOLLOW``. Raises ``IsADirectoryError`` for a directory, ``FileExistsError``
    when something re-appears at ``name`` on each of ``attempts`` tries (a racing writer).
    """
    for _ in range(attempts):
        try:  # the common case first: nothing there (one syscall less than checking first)
            create_file(dir_fd, name, mode)
        except FileExistsError:
            if regular_file_exists(dir_fd, name):
                return
            remove_entry(dir_fd, name)
            continue
        return
    raise FileExistsError(errno.EEXIST, f"{name} keeps being replaced")


def remove_entry(dir_fd: int, name: str) -> bool:
    """Unlink ``name`` in ``dir_fd`` (a symlink itself, never its target); ``False`` if absent.

    Raises ``IsADirectoryError`` for a directory (it is left alone).
    """
    try:  # unlink(2) never follows a link and refuses a directory (EISDIR; EPERM elsewhere)
        os.unlink(_component(name), dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except (IsADirectoryError, PermissionError):
        mode = entry_mode(dir_fd, name)
        if mode is not None and stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, f"{name} is a directory") from None
        raise
    return True


def write_below(
    root: Path, top: tuple[str, ...], rel: tuple[str, ...], data: bytes, mode: int = 0o644
) -> None:
    """Replace the file ``root/top…/rel…`` with ``data``, atomically (a temp file renamed over it).

    Directories of ``rel`` missing below ``top`` are created (0755); what is created belongs to the
    owner of ``top`` (the agent, for its state dir). No link below ``root`` is followed: a symlink
    among the directories fails (``ELOOP``/``ENOTDIR``), one planted at the file's name is replaced
    by the rename, never written through. Raises ``OSError`` (``ValueError`` for a bad part).
    """
    if not rel:
        raise ValueError("no file name")
    fd = open_dir(root, *top)
    try:
        owner = os.fstat(fd)
        for part in rel[:-1]:
            try:
                os.mkdir(_component(part), 0o755, dir_fd=fd)
                with contextlib.suppress(PermissionError):
                    os.chown(part, owner.st_uid, owner.st_gid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        name = _component(rel[-1])
        tmp = f".{name}.{os.getpid()}.tmp"
        remove_entry(fd, tmp)
        out = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                os.fchmod(out, mode)
                with contextlib.suppress(PermissionError):
                    os.fchown(out, owner.st_uid, owner.st_gid)
            finally:
                os.close(out)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)


class Walk:
    """Depth-first over a tree by directory fds, links not followed, at most ``max_entries`` entries.

    Iterating yields ``(dir_fd, name, lstat)`` (``dir_fd`` is valid only until the next step);
    afterwards :attr:`complete` says whether every entry was seen. Only one directory fd is open at
    a time: pending directories are kept as names and reopened from the top with ``O_NOFOLLOW`` per
    component, so neither a wide nor a deep tree can exhaust the daemon's fds.
    """

    def __init__(self, top_fd: int, max_entries: int) -> None:
        self.top_fd = top_fd
        self.max_entries = max_entries
        self.complete = False

    def _open(self, rel: tuple[str, ...]) -> int:
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.top_fd)
        try:
            for part in rel:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def __iter__(self) -> Generator[tuple[int, str, os.stat_result]]:
        pending: list[tuple[str, ...]] = [()]
        seen = 0
        while pending:
            rel = pending.pop()
            try:
                dfd = self._open(rel)
            except OSError:
                continue  # replaced by a link or removed since it was listed: skipped
            try:
                with os.scandir(dfd) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > self.max_entries:
                            return
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        yield dfd, entry.name, st
                        if stat.S_ISDIR(st.st_mode):
                            pending.append((*rel, entry.name))
            finally:
                os.close(dfd)
        self.complete = True


def has_regular_file(root: Path, *parts: str, max_entries: int = MAX_WALK_ENTRIES) -> bool:
    """Whether the tree at ``root/parts…`` holds a regular file, links not followed.

    ``False`` when the directory is missing or a symlink, or when ``max_entries`` entries were
    looked at without finding one.
    """
    try:
        top = open_dir(root, *parts)
    except (OSError, ValueError):
        return False
    try:
        with contextlib.closing(iter(Walk(top, max_entries))) as walk:
            return any(stat.S_ISREG(st.st_mode) for _, _, st in walk)
    except OSError:
        return False
    finally:
        os.close(top)


@attrs.frozen
class TreeSize:
    bytes: int
    """Sum of the sizes of the non-directory entries (links count as their own size)."""
    newest_mtime: float
    complete: bool
    """``False`` when the walk stopped at the entry cap: ``bytes`` is then a lower bound."""


def tree_size_and_mtime(root: Path, *parts: str, max_entries: int = MAX_WALK_ENTRIES * 10) -> TreeSize:
    """Total size and newest mtime of the tree at ``root/parts…``, links not followed, capped.

    Raises ``OSError`` when the top directory cannot be opened (missing, a symlink, not a dir).
    """
    top = open_dir(root, *parts)
    try:
        total, newest = 0, os.fstat(top).st_mtime
        walk = Walk(top, max_entries)
        for _, _, st in walk:
            newest = max(newest, st.st_mtime)
            if not stat.S_ISDIR(st.st_mode):
                total += st.st_size
        return TreeSize(total, newest, complete=walk.complete)
    finally:
        os.close(top)
