"""Replace a file atomically (a temp file renamed over it), leaving no temp file behind on any
failure (a full disk): a reader sees the old file or the new one and nothing else. The one home of
atomic writes; stdlib only, so the shim and the harness import it too."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(
    path: Path, text: str, *, mode: int | None = None, tmp: Path | None = None, fsync: bool = False
) -> None:
    """Write ``text`` (UTF-8) to ``tmp`` (default ``.<name>.tmp`` beside ``path``), set ``mode`` if
    given, ``fsync`` it if asked (survives a power loss once renamed), and rename it over ``path``.
    Raises the :class:`OSError` (``ENOSPC``…); the temp file is removed on every failure."""
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (one trailing newline), fsynced, via a temp file named
    after this process (two processes writing the same file never share a temp file)."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    write_text_atomic(path, text, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"), fsync=True)


def write_text_no_follow(directory: Path, name: str, text: str, *, mode: int = 0o644) -> None:
    """Atomically replace ``directory/name`` with ``text`` where someone else shapes ``directory``
    (an agent's state dir): ``directory`` is opened ``O_NOFOLLOW`` (a symlink there raises
    ``ELOOP``), the temp file is created ``O_NOFOLLOW`` through that fd, and the rename replaces a
    symlink planted at ``name`` instead of writing through it. Raises :class:`OSError`."""
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    tmp = f".{name}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dirfd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:  # a full disk, bad text: no temp file is left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
            raise
    finally:
        os.close(dirfd)
