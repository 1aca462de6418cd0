"""Reading an agent's ``run/process/<n>/agent.log`` (process runtime): the one tail every surface uses
(the manager's ``get_logs``, the dashboard's ``/api/logs/<n>``).

The directory and the file are agent-writable: no symlink is followed anywhere below ``run/process``,
a FIFO is never blocked on (``O_NONBLOCK``) and is refused like any non-regular file, at most
:data:`TAIL_BYTES` are read and each line is cut to :data:`MAX_LINE` characters. Blocking: call it
in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hivecore import agentfs

TAIL_BYTES = 256 * 1024
MAX_LINE = 4096
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def tail(run_process: Path, name: str, lines: int) -> list[str]:
    """The last ``lines`` lines of ``run_process/<name>/agent.log`` (``[]`` when there is none);
    ``OSError`` when it cannot be read safely (a symlink, a FIFO, a permission problem)."""
    return read(run_process, name, lines)[0]


def read(run_process: Path, name: str, lines: int, offset: int | None = None) -> tuple[list[str], int]:
    """``(lines, end)``: without ``offset``, the last ``lines`` lines of the log; with it, the first
    ``lines`` complete lines written from byte ``offset`` on (read in a window of at most
    :data:`TAIL_BYTES`; a partial last line waits for its newline; see :func:`_after`). ``end`` is
    the byte offset to ask with next: following a log this way skips nothing. An ``offset`` beyond
    the file's size (the log was truncated or replaced) reads from the start. No log yet:
    ``([], 0)``. ``OSError`` as :func:`tail`."""
    try:
        dir_fd = agentfs.open_dir(run_process, name)
    except FileNotFoundError:
        return [], 0
    try:
        try:
            fd = os.open("agent.log", _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return [], 0
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise agentfs.NotRegularFile(errno.EINVAL, "agent.log is not a regular file")
        size = st.st_size
        start = max(0, size - TAIL_BYTES) if offset is None else offset if offset <= size else 0
        f.seek(start)
        data = f.read(min(TAIL_BYTES, size - start))
    if offset is not None:
        return _after(data, lines, start)
    text = data.decode("utf-8", "replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line was cut
    return [line[:MAX_LINE] for line in text[-lines:]], start + len(data)


def _after(data: bytes, lines: int, start: int) -> tuple[list[str], int]:
    """The first ``lines`` complete lines of ``data`` (read from byte ``start``) and the offset just
    after them: nothing is skipped, the rest comes with the next read. A window of
    :data:`TAIL_BYTES` without any newline is taken whole (cut to :data:`MAX_LINE`), so one endless
    line cannot stall a reader."""
    parts = data.split(b"\n")[:-1]  # each ended by a newline; the remainder is still being written
    if not parts:
        if len(data) < TAIL_BYTES:
            return [], start
        return [data.decode("utf-8", "replace")[:MAX_LINE]], start + len(data)
    taken = parts[:lines]
    consumed = sum(len(p) + 1 for p in taken)
    return [p.decode("utf-8", "replace")[:MAX_LINE] for p in taken], start + consumed
