"""Read-only viewers of what an agent wrote: a file of its state dir, read the way
:mod:`hivecore.agentfs` reads agent-writable directories (issue 18 item 6).

The state dir (``agents/<n>/state``) is the agent's: it may plant symlinks, FIFOs, devices, huge
files, or swap a directory for a link while the daemon reads. So a path is

* checked as text first (:func:`state_path_parts`): relative to the state dir (or an absolute
  path inside it, as the host or a container sees it), at most :data:`MAX_PATH` characters and
  :data:`MAX_DEPTH` components, no ``.``/``..``/empty component, no NUL;
* opened one component at a time from the daemon-owned ``agents/`` with ``O_NOFOLLOW``
  (:func:`hivecore.agentfs.open_dir`: a link anywhere, the state dir itself included, is refused);
* the file opened ``O_NOFOLLOW | O_NONBLOCK`` and kept only when ``fstat`` says regular, at most
  :data:`MAX_STATE_FILE` bytes (a longer one is refused, not cut), and not a hard link to a file
  the agent does not own (under a root daemon).

Everything here is synchronous (run it in a worker thread); every refusal is a
:class:`~hivecore.errors.BadInput` (400) or :class:`~hivecore.errors.Refused` (409) whose text
names the path and the rule.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import attrs

from hivecore import agentfs
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.kick import NIXOS_STATE_DIR

MAX_STATE_FILE = 1 << 20
"""Bytes of the largest state file the viewer shows (1 MiB); a longer one is refused."""
MAX_PATH = 4096
"""Characters of a state-file path."""
MAX_DEPTH = 32
"""Components of a state-file path."""


class NoSuchStateFile(HiveError):
    http_status = 404


@attrs.frozen
class StateFile:
    """One state file as the viewer shows it."""

    agent: str
    path: str
    """Relative to the agent's state dir, ``/``-separated."""
    size: int
    """Bytes."""
    mtime: float
    """Unix seconds."""
    text: str
    """The content, UTF-8 decoded (an undecodable byte is U+FFFD): the agent wrote it, escape it."""
    binary: bool
    """The content held a NUL or was not valid UTF-8."""


def _shown(path: str) -> str:
    return repr(path[:80] + "…" if len(path) > 80 else path)


def state_path_parts(name: str, path: str, host_state: Path) -> tuple[str, ...]:
    """The components of ``path`` inside ``name``'s state dir; :class:`BadInput` naming the rule.

    ``path`` is relative to the state dir, or absolute under it as the host sees it
    (``host_state``) or as a container does (``/agents/<n>/state``)."""
    if not isinstance(path, str) or not path.strip():
        raise BadInput("path is empty: name a file in the agent's state dir (e.g. notes.md)")
    if len(path) > MAX_PATH:
        raise BadInput(f"path is longer than {MAX_PATH} characters")
    if "\0" in path:
        raise BadInput("path contains a NUL byte")
    rel = path
    if path.startswith("/"):
        for prefix in (str(host_state), NIXOS_STATE_DIR.format(name=name)):
            if path.startswith(prefix.rstrip("/") + "/"):
                rel = path[len(prefix.rstrip("/")) + 1 :]
                break
        else:
            raise BadInput(
                f"path {_shown(path)} is not inside the state dir of {name}; give a path relative "
                "to it (e.g. notes.md)"
            )
    parts = tuple(rel.split("/"))
    if len(parts) > MAX_DEPTH:
        raise BadInput(f"path has more than {MAX_DEPTH} components")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadInput(
                f"path {_shown(path)} has an empty, '.' or '..' component: the viewer reads only "
                f"inside the state dir of {name}, by a plain relative path"
            )
    return parts


def read_state_file(
    agents_root: Path,
    name: str,
    parts: tuple[str, ...],
    *,
    cap: int = MAX_STATE_FILE,
    owner: int | None = None,
) -> StateFile:
    """Read ``agents_root/<name>/state/<parts…>`` following no link; see the module doc. With
    ``owner`` (the agent's uid under a root daemon), a file with more than one hard link that the
    agent does not own is refused too: a hard link the agent planted to a file of someone else's.

    Raises :class:`NoSuchStateFile` (missing), :class:`Refused` (a link on the way, not a regular
    file, a foreign hard link, larger than ``cap``, unreadable)."""
    shown = "/".join(parts)
    where = f"{_shown(shown)} in the state dir of {name}"
    try:
        dir_fd = agentfs.open_dir(agents_root, name, "state", *parts[:-1])
    except FileNotFoundError:
        raise NoSuchStateFile(f"no file {where}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(
                f"cannot show {where}: a directory on its way (or the state dir itself) is a "
                "symbolic link or not a directory; the viewer follows no links"
            ) from None
        raise Refused(f"cannot show {where}: {exc.strerror or exc}") from None
    try:
        mode = agentfs.entry_mode(dir_fd, parts[-1])
        if mode is None:
            raise NoSuchStateFile(f"no file {where}")
        try:
            read = agentfs.read_capped(dir_fd, parts[-1], cap)
        except FileNotFoundError:
            raise NoSuchStateFile(f"no file {where}") from None
        except agentfs.NotRegularFile:
            raise Refused(
                f"cannot show {where}: it is not a regular file (a directory, FIFO, socket or "
                "device); the viewer shows regular files only"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(
                    f"cannot show {where}: it is a symbolic link; the viewer follows no links"
                ) from None
            raise Refused(f"cannot show {where}: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    if owner is not None and read.nlink > 1 and read.uid != owner:
        raise Refused(
            f"cannot show {where}: it is a hard link to a file {name} does not own; the viewer "
            "shows the agent's own files only"
        )
    if read.truncated:
        raise Refused(
            f"cannot show {where}: it is larger than {cap // 1024} KiB, the viewer's limit; "
            "read it on the host"
        )
    binary = b"\0" in read.data
    try:
        text = read.data.decode("utf-8")
    except UnicodeDecodeError:
        text, binary = read.data.decode("utf-8", errors="replace"), True
    return StateFile(agent=name, path=shown, size=len(read.data), mtime=read.mtime, text=text, binary=binary)
