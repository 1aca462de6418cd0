"""Replace a daemon-owned file atomically, leaving no temp file behind on any failure (a full disk)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str, *, mode: int | None = None, tmp: Path | None = None) -> None:
    """Write ``text`` (UTF-8) to ``tmp`` (default ``.<name>.tmp`` beside ``path``), set ``mode`` if
    given, and rename it over ``path``. Raises the :class:`OSError` (``ENOSPC``…); the temp file is
    removed on every failure, so a reader sees the old file or the new one and nothing else."""
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
