"""Ending every agent process a test started (agents are detached on purpose, so nothing else will)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path


def kill_everything_under(run_agents: Path) -> None:
    """SIGKILL every process group recorded in ``<run_agents>/*/pid`` and every process whose
    command line names ``run_agents`` (a shim whose pidfile was not written yet); reap our children."""
    pids: set[int] = set()
    if not run_agents.is_dir():
        return
    for pidfile in run_agents.glob("*/pid"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pids.add(int(json.loads(pidfile.read_text())["pid"]))
    marker = str(run_agents).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
    for pid in pids:
        if pid <= 1 or pid in (os.getpid(), os.getppid(), os.getpgrp()):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] != 0:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)
