"""Issue 16, item 7: agent starts do not depend on what the daemon's parent left open.

A real ``hive-c0re serve`` started the way a shell does it with ``exec 300>f; ulimit -n 256``: an
inheritable fd above the open-files limit. ``posix_spawn`` close actions cannot name such an fd
(glibc refuses them with EBADF), which made every agent start fail.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from hivecore.sockets.client import Unreachable
from tests.test_kill9 import ROOT, ask, processes_under, sigkill
from tests.waiting import eventually

HIGH_FD = 300
LIMIT = 256


def _inherit_a_high_fd_above_the_limit(path: str) -> None:
    """preexec_fn: what ``exec 300>f; ulimit -n 256`` leaves a child (soft and hard: ``serve``
    raises the soft limit to the hard one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, HIGH_FD)  # inheritable, as a shell's redirection is
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


async def test_an_agent_starts_under_a_daemon_that_inherited_an_fd_above_its_limit(state_dir: Path) -> None:
    held = state_dir.parent / f"{state_dir.name}.fd300"
    log = state_dir.parent / f"{state_dir.name}.log"
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--dashboard-port", "0", "--crash-watch-interval", "3600", "--no-ensure-manager"]
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            close_fds=False,  # only inheritable fds pass: the test's own are close-on-exec (PEP 446)
            preexec_fn=partial(_inherit_a_high_fd_above_the_limit, str(held)),
        )
    try:
        assert os.readlink(f"/proc/{proc.pid}/fd/{HIGH_FD}") == str(held)
        assert resource.prlimit(proc.pid, resource.RLIMIT_NOFILE) == (LIMIT, LIMIT)

        async def answers() -> bool:
            assert proc.poll() is None, f"serve exited early: {log.read_text()}"
            with contextlib.suppress(Unreachable, OSError, ValueError):
                return bool((await ask(state_dir, {"cmd": "list"}, timeout=5))["ok"])
            return False

        await eventually(answers, 30, interval=0.05)
        answer = await ask(state_dir, {"cmd": "spawn", "name": "coder"}, timeout=120)
        assert answer["ok"], answer
        rows = {r["name"]: r for r in (await ask(state_dir, {"cmd": "agent_status"}))["agent_statuses"]}
        assert rows["coder"]["running"], rows
        # and the agent (shim and harness) does not hold the daemon's inherited file
        pids = processes_under(state_dir / "run" / "process")["coder"]
        assert pids
        for pid in pids:
            targets = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            assert str(held) not in targets, f"agent process {pid} inherited {held}"
        assert (await ask(state_dir, {"cmd": "stop", "scope": {"agent_names": ["coder"]}}))["ok"]
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
