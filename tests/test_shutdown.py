"""Bounded shutdown (issue 14, finding 13): SIGTERM while a shielded request_apply_commit is stuck in
git used to hang ``hive-c0re serve`` forever, after it had removed its sockets. Shielded work now
gets :data:`~hivecore.shutdown.SHIELDED_WORK_LIMIT` seconds once shutdown starts, the store outlives
it, and the process is gone within :data:`~hivecore.shutdown.EXIT_LIMIT` whatever is stuck.

A real daemon process; the injected fault is a git that hangs (``$HYPERHIVE_GIT`` names a wrapper
that sleeps on a call reading the proposed repo while a marker file exists, else runs the real git).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import trio
import trio.testing

import hivecore
from hivecore import shutdown
from hivecore.shutdown import EXIT_LIMIT, SHIELDED_WORK_LIMIT
from tests.procs import eventually
from tests.test_approvals import commit

REPO = Path(hivecore.__file__).resolve().parent.parent

HANGING_GIT = """#!/bin/sh
# hang only a git call that reads the proposed repo (by argument or working dir): the request's
if [ -e "{marker}" ]; then
    case "$* $PWD" in
        *{proposed}*) : > "{marker}.hit"; exec sleep 3600 ;;
    esac
fi
exec "{git}" "$@"
"""


def _ask(path: Path, request: Mapping[str, object], timeout: float = 60.0) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, object] = json.loads(data)
    return answer


def _listening(path: Path) -> bool:
    """Whether something accepts connections on ``path`` (the file appears at bind, before listen)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(os.fspath(path))
        except OSError:
            return False
    return True


async def test_sigterm_during_a_stuck_shielded_request_exits_in_time(state_dir: Path, tmp_path: Path) -> None:
    real_git = shutil.which("git")
    assert real_git is not None
    # somewhere an agent's or the manager's uid may run the wrapper and leave the marker's .hit
    fault_dir = Path(tempfile.mkdtemp(prefix="hcfault", dir="/tmp"))
    os.chmod(fault_dir, 0o1777)
    marker = fault_dir / "hang"
    wrapper = fault_dir / "git"
    proposed = state_dir / "agents" / "coder" / "config"
    wrapper.write_text(HANGING_GIT.format(marker=marker, git=real_git, proposed=proposed))
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "HIVE_HOST_SOCK"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HYPERHIVE_GIT"] = str(wrapper)
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--runtime", "process", "--dashboard-port", "0", "--no-ensure-manager", "--log-level", "INFO"]
    log_file = (tmp_path / "daemon.log").open("wb")
    daemon = await trio.lowlevel.open_process(
        cmd, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    host_sock = state_dir / "run" / "host.sock"
    manager_sock = state_dir / "run" / "manager" / "mcp.sock"
    hung: socket.socket | None = None
    try:
        await eventually(lambda: _listening(host_sock) and _listening(manager_sock), timeout=60)
        answer = await trio.to_thread.run_sync(_ask, host_sock, {"cmd": "spawn", "name": "coder"})
        assert answer["ok"], answer
        sha = await commit(proposed, {"notes.txt": "a change\n"})  # as the manager (its uid) would
        # the manager asks; the daemon's git hangs inside the shielded part of the request
        marker.touch()
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hung.connect(os.fspath(manager_sock))
        hung.sendall(
            json.dumps({"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha}).encode() + b"\n"
        )
        await eventually(lambda: Path(f"{marker}.hit").exists(), timeout=30)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        with trio.move_on_after(EXIT_LIMIT + 15):
            await daemon.wait()
        took = time.monotonic() - started
        assert daemon.poll() is not None, f"the daemon still runs {took:.0f} s after SIGTERM"
        log = (tmp_path / "daemon.log").read_text(errors="replace")
        # bounded by the shielded work's deadline, and a clean exit (not the watchdog's)
        assert took < EXIT_LIMIT, (took, log[-3000:])
        assert took >= SHIELDED_WORK_LIMIT - 1  # the request was given its time
        assert daemon.returncode == 0, log[-3000:]
        assert "shielded task(s) get" in log
        assert not host_sock.exists()
    finally:
        if hung is not None:
            hung.close()
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await daemon.wait()
        log_file.close()
        shutil.rmtree(fault_dir, ignore_errors=True)


def test_the_watchdog_ends_a_stuck_process() -> None:
    code = "from hivecore.shutdown import exit_watchdog; import time; exit_watchdog(0.5); time.sleep(60)"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 10


async def test_shielded_work_is_bounded_only_once_shutdown_begins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cut: list[str] = []

    async def work(name: str, seconds: float) -> None:
        with shutdown.shielded() as scope:
            await trio.sleep(seconds)
        if scope.cancelled_caught:
            cut.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work, "long, open at shutdown", 3600)
        nursery.start_soon(work, "short", 5)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()  # the shield holds: cancelling its caller does not cut it
        start = trio.current_time()
        deadline = shutdown.begin(SHIELDED_WORK_LIMIT)
        assert deadline == start + SHIELDED_WORK_LIMIT
        async with trio.open_nursery() as late:
            late.start_soon(work, "started during shutdown", 3600)
    assert trio.current_time() == start + SHIELDED_WORK_LIMIT
    assert sorted(cut) == ["long, open at shutdown", "started during shutdown"]
    # that shutdown is over: work after it (a daemon started again in this run) is unbounded
    shutdown.reset()
    await work("after", SHIELDED_WORK_LIMIT * 2)
    assert "after" not in cut
