"""Agent processes in tests: ending every one a test started (agents are detached on purpose, so
nothing else will), and small helpers to start agents and watch real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.runtime.process import ProcessRuntime
from hivecore.runtime.shim import group_members, read_proc_stat
from tests.waiting import eventually as eventually  # the one helper; re-exported for older imports
from tests.worker import AGENT_UID_BASE

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def as_owner(path: Path) -> dict[str, Any]:
    """``trio.run_process``/``subprocess`` keywords that run a child as whoever owns ``path``: the
    manager's uid on a proposed repo under a root daemon (with the agents' shared group, as the
    daemon runs it); nothing when the test owns it."""
    st = path.stat()
    if st.st_uid == os.geteuid():
        return {}
    return {"user": st.st_uid, "group": st.st_gid, "extra_groups": [AGENT_UID_BASE]}


_MANAGER_GITCONFIG: list[Path] = []


def owner_git_env(path: Path) -> dict[str, str]:
    """The environment git needs when a test plays the manager on ``path`` under a root daemon: a
    global config trusting repos owned by others (``safe.directory = *``), as a manager's
    ``~/.gitconfig`` would, so it can read its ``applied`` remote (root's); nothing otherwise."""
    if not as_owner(path):
        return {}
    if not _MANAGER_GITCONFIG:
        directory = Path(tempfile.mkdtemp(prefix="hcgit", dir="/tmp"))
        os.chmod(directory, 0o755)
        config = directory / "gitconfig"
        config.write_text("[safe]\n\tdirectory = *\n")
        os.chmod(config, 0o644)
        _MANAGER_GITCONFIG.append(config)
    return {"GIT_CONFIG_GLOBAL": str(_MANAGER_GITCONFIG[0])}


def write_as_owner(directory: Path, name: str, text: str) -> None:
    """Write ``directory/name`` and hand it to the directory's owner (a manager editing its repo)."""
    st = directory.stat()
    (directory / name).write_text(text)
    os.chown(directory / name, st.st_uid, st.st_gid)


SLEEP = ("sleep", "60")


def stubborn(ready: Path) -> tuple[str, ...]:
    """An agent that ignores SIGTERM (its ``sleep`` children too) and creates ``ready`` once it does."""
    return ("sh", "-c", 'trap "" TERM; : > "$1"; while :; do sleep 0.05; done', "stubborn", str(ready))


async def wait_for(
    rt: ProcessRuntime, name: str, check: Callable[[AgentRuntimeState], bool], timeout: float = 20.0
) -> AgentRuntimeState:
    """The agent's runtime state once ``check`` holds for it (polled: /proc gives no event)."""
    seen: list[AgentRuntimeState] = []

    async def holds() -> bool:
        seen.append(state := (await rt.list())[name])
        return check(state)

    await eventually(holds, timeout, what=f"{name}: {check}")
    return seen[-1]


async def started(rt: ProcessRuntime, name: str, command: tuple[str, ...] = SLEEP) -> AgentRuntimeState:
    await rt.create(AgentSpec(name=name, command=command, env=ENV))
    await rt.start(name)
    return await wait_for(rt, name, lambda s: s.running)


def group_alive(pgid: int) -> bool:
    """Any live member left? (Zombies don't count: orphans wait for PID 1 to reap them.)"""
    return bool(group_members(pgid))


async def exited(pid: int, *, kill: int | None = None, group: bool = False) -> None:
    """Optionally send ``kill`` to ``pid`` (to its group with ``group``), then wait (real time, bounded)
    until the process has exited, every thread of it: a zombie that can be reaped. Watches a pidfd, so
    a zombie leader whose other threads are still on their way out does not count yet."""
    fd = os.pidfd_open(pid)
    try:
        if kill is not None:
            (os.killpg if group else os.kill)(pid, kill)
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def dead(pid: int) -> bool:
    """Gone, or a zombie (dead, waiting to be reaped)."""
    st = read_proc_stat(pid)
    return st is None or st.state == "Z"


def kill_everything_under(run_process: Path) -> None:
    """SIGKILL every process group recorded in ``<run_process>/*/pid`` and every process whose
    command line names ``run_process`` (a shim whose pidfile was not written yet); reap our children."""
    pids: set[int] = set()
    if not run_process.is_dir():
        return
    for pidfile in run_process.glob("*/pid"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pids.add(int(json.loads(pidfile.read_text())["pid"]))
    marker = str(run_process).encode()
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
