"""hivecore.proc, the one subprocess runner: argv validation, output cap, time limit, process-group
kill on cancel and timeout, death with the parent, confinement (uid, memory). Real processes, real
clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from hivecore import proc
from tests.waiting import eventually

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _wait_dead(pid: int) -> bool:
    await eventually(lambda: not _alive(pid), timeout=10)
    return True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "empty command"),
        (["true", "a\0b"], "argument 1 of `true` contains a NUL byte"),
        (["tr\0ue"], "argument 0 of `tr\\0ue` contains a NUL byte"),
        (["true", 3], "argument 1 of the command is a int, not text"),
        ([""], "empty program name"),
    ],
)
async def test_bad_argv_is_one_clear_error(argv: list[object], message: str) -> None:
    with pytest.raises(proc.InvalidArgv, match=message.replace("\\", "\\\\").replace("`", "`")):
        await proc.run(argv, env=ENV, time_limit=10)  # type: ignore[arg-type]


async def test_nul_in_environment_is_refused() -> None:
    with pytest.raises(proc.InvalidArgv, match="environment variable 'X'"):
        await proc.run(["true"], env={**ENV, "X": "a\0b"}, time_limit=10)


async def test_output_is_capped_per_stream_and_drained() -> None:
    script = "import sys; sys.stdout.write('o' * 300000); sys.stderr.write('e' * 10)"
    result = await proc.run([sys.executable, "-c", script], env=ENV, time_limit=30, cap=1000)
    assert result.returncode == 0
    assert result.stdout == b"o" * 1000
    assert result.stderr == b"e" * 10
    assert result.truncated
    assert not result.timed_out


async def test_stdin_bytes_reach_the_child() -> None:
    result = await proc.run(["cat"], env=ENV, time_limit=30, stdin=b"hello")
    assert (result.returncode, result.stdout) == (0, b"hello")


async def test_time_limit_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 600 & echo $! > {pidfile}; wait"
    result = await proc.run(["sh", "-c", script], env=ENV, time_limit=1.0)
    assert result.timed_out
    assert result.returncode == -signal.SIGKILL
    grandchild = int(pidfile.read_text())
    assert await _wait_dead(grandchild), "the time limit left a grandchild of the group running"


async def test_cancellation_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 600 & echo $! > {pidfile}; wait"
    with trio.move_on_after(30) as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: proc.run(["sh", "-c", script], env=ENV, time_limit=600))
            await eventually(lambda: pidfile.exists() and bool(pidfile.read_text().strip()), timeout=30)
            nursery.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert await _wait_dead(int(pidfile.read_text()))


def test_the_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """kill -9 of the process that ran proc.run: the kernel kills its child (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "child"
    parent_code = textwrap.dedent(
        f"""
        import trio
        from hivecore import proc
        async def main():
            await proc.run(["sh", "-c", "echo $$ > {pidfile}; exec sleep 600"],
                           env={{"PATH": "/usr/bin:/bin"}}, time_limit=600)
        trio.run(main)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the child never started"
            assert parent.poll() is None, "the parent exited early"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived a kill -9 of its parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_memory_limit_stops_a_hungry_child() -> None:
    script = "x = bytearray(512 * 1024 * 1024)"
    result = await proc.run([sys.executable, "-c", script], env=ENV, time_limit=60, memory_limit=256 << 20)
    assert result.returncode != 0
    assert b"MemoryError" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
async def test_runs_as_the_given_user(tmp_path: Path) -> None:
    user = proc.Credentials(uid=61234, gid=61234)
    result = await proc.run(["id", "-u"], env=ENV, time_limit=30)
    assert result.stdout.split()[0] == b"0"
    result = await proc.run(["sh", "-c", "id -u; id -g; id -G"], env=ENV, time_limit=30, user=user)
    assert result.stdout.split() == [b"61234", b"61234", b"61234"]
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)  # noqa: ASYNC240
    result = await proc.run(["cat", str(secret)], env=ENV, time_limit=30, user=user)
    assert result.returncode != 0
    assert b"Permission denied" in result.stderr


async def test_a_missing_program_is_a_plain_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await proc.run([str(tmp_path / "no-such-program")], env=ENV, time_limit=10)


async def test_a_mock_clock_jumping_ahead_does_not_time_a_child_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The time limit is wall-clock (a kernel timer): while a real child runs and every task waits,
    an autojump clock leaps trio's time forward, and that must not read as the child overrunning."""
    started = trio.current_time()
    result = await proc.run(["sleep", "0.5"], env=ENV, time_limit=30)
    assert not result.timed_out
    assert result.returncode == 0
    assert trio.current_time() == started  # nothing else waited on trio's clock


async def test_a_child_outlives_the_worker_thread_that_forked_it() -> None:
    """The death signal is tied to the forking thread; trio forks in a cached worker thread that
    retires after 10 s idle. A child still running then was SIGKILLed by the kernel (a long
    ``nix build`` or Claude turn died at ~10 s) until :func:`proc.keep_forking_threads`."""
    result = await proc.run(["sleep", "11.5"], env=ENV, time_limit=60)
    assert result.returncode == 0, result
