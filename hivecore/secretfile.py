"""Read a small file the operator keeps secrets in (the agent env file, ``--notify-url-file``): it
must be a regular file (no symlink followed, no FIFO or device), root's or the daemon's, readable by
nobody else, at most a given size, and UTF-8. Stdlib only (the CLI reads these at start)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_secret_file(path: Path | str, what: str, max_bytes: int, error: type[Exception]) -> str:
    """The text of ``path``; ``error(message)`` naming ``what`` (e.g. ``"agent env file /etc/x"``)
    and the rule it breaks: a symlink, not a regular file, another owner, group/other permission
    bits (with the ``chmod 600`` to run), more than ``max_bytes``, not UTF-8. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        why = "it is a symlink (give the real path)" if exc.errno == errno.ELOOP else exc.strerror
        raise error(f"{what}: cannot open it: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise error(
                f"{what}: owned by uid {st.st_uid}; it must be root's or the daemon's (uid {os.geteuid()})"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise error(
                f"{what}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it; it holds secrets: "
                f"chmod 600 {path}"
            )
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{what}: larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text") from None
