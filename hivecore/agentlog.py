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
    try:
        dir_fd = agentfs.open_dir(run_process, name)
    except FileNotFoundError:
        return []
    try:
        try:
            fd = os.open("agent.log", _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return []
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise agentfs.NotRegularFile(errno.EINVAL, "agent.log is not a regular file")
        f.seek(max(0, st.st_size - TAIL_BYTES))
        data = f.read(TAIL_BYTES)
    text = data.decode("utf-8", "replace").splitlines()
    if st.st_size > TAIL_BYTES and text:
        text = text[1:]  # the first line was cut
    return [line[:MAX_LINE] for line in text[-lines:]]
