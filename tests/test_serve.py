"""`hive-c0re serve` as a real process: lifecycle log lines, one daemon per state dir, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent


def serve_cmd(state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hivecore.cli.daemon",
        "serve",
        "--state-dir",
        str(state_dir),
        "--dashboard-port",
        "0",
        "--no-ensure-manager",
        *extra,
    ]


async def start_serving(state_dir: Path) -> tuple[trio.Process, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(serve_cmd(state_dir), stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    buf = b""
    with trio.fail_after(20):
        while not any("hive-c0re serving" in ln for ln in lines):
            chunk = await proc.stderr.receive_some()
            assert chunk, f"serve exited early: {b''.join([buf]).decode()}"
            buf += chunk
            *done, rest = buf.split(b"\n")
            lines += [d.decode() for d in done]
            buf = rest
    return proc, lines


async def test_serve_logs_each_step_refuses_a_second_daemon_and_stops_on_sigterm(state_dir: Path) -> None:
    proc, lines = await start_serving(state_dir)
    try:
        text = "\n".join(lines)
        for step in (
            "state dir",
            "actor event_bus started",
            "actor store started",
            "actor crash_watch started",
            "host.sock listening",
            "dashboard on http://127.0.0.1:",
            "hive-c0re serving",
        ):
            assert step in text
        assert (state_dir / "run" / "host.sock").exists()

        second = await trio.run_process(
            serve_cmd(state_dir),
            capture_stdout=True,
            capture_stderr=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        assert second.returncode == 1
        stderr = second.stderr.decode()
        assert f"is already serving {state_dir}" in stderr
        assert f"pid {proc.pid}" in stderr
        assert (state_dir / "run" / "host.sock").exists()  # the first daemon's socket is untouched

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            rc = await proc.wait()
        assert rc == 0
        assert time.monotonic() - t0 < 5
        assert not (state_dir / "run" / "host.sock").exists()
        assert proc.stderr is not None
        tail = b""
        while chunk := await proc.stderr.receive_some():
            tail += chunk
        assert b"received SIGTERM; shutting down" in tail
        assert b"hive-c0re stopped" in tail
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigint_also_stops_cleanly_and_the_next_serve_starts(state_dir: Path) -> None:
    proc, _ = await start_serving(state_dir)
    proc.send_signal(signal.SIGINT)
    with trio.fail_after(5):
        assert await proc.wait() == 0
    proc2, _ = await start_serving(state_dir)  # the lock was released
    proc2.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        assert await proc2.wait() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dashboard-port", "70000"], "is not a port number"),
        (["--crash-watch-interval", "0"], "must be positive"),
        (["--runtime", "docker"], "invalid choice: 'docker'"),
    ],
)
def test_bad_flags_are_refused_clearly(state_dir: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [*serve_cmd(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_help_documents_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    for flag in (
        "--state-dir",
        "--runtime",
        "--dashboard-host",
        "--dashboard-port",
        "--host-socket",
        "--operator-pronouns",
        "--hyperhive-flake",
        "--admin-group",
    ):
        assert flag in result.stdout


def _serve_failure(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir), *flags]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def _not_logging(stderr: str) -> list[str]:
    """stderr without the daemon's log lines (``<date> <time> LEVEL logger: …``)."""
    return [ln for ln in stderr.splitlines() if " INFO " not in ln and " WARNING " not in ln]


def test_a_busy_dashboard_port_is_one_line_naming_the_flag(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve_failure(state_dir, "--dashboard-port", str(port))
    assert result.returncode == 1
    assert _not_logging(result.stderr) == [
        f"hive-c0re: dashboard port {port} is already in use (127.0.0.1:{port}); "
        "choose another with --dashboard-port (0 picks a free one)"
    ]
    assert "Traceback" not in result.stderr
    assert not (state_dir / "run" / "host.sock").exists()  # the host socket it had bound is gone


def test_a_host_socket_path_that_cannot_be_bound_is_one_line_naming_the_flag(state_dir: Path) -> None:
    (state_dir / "file").write_text("not a directory")
    bad = state_dir / "file" / "host.sock"
    result = _serve_failure(state_dir, "--dashboard-port", "0", "--host-socket", str(bad))
    assert result.returncode == 1
    [line] = _not_logging(result.stderr)
    assert line.startswith(f"hive-c0re: host.sock: cannot listen on {bad}: ")  # then the OS's reason
    assert line.endswith("; choose another path with --host-socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        taken = state_dir / "taken.sock"
        live.bind(str(taken))
        live.listen()
        result = _serve_failure(state_dir, "--dashboard-port", "0", "--host-socket", str(taken))
    assert result.returncode == 1
    assert _not_logging(result.stderr) == [
        f"hive-c0re: host.sock: another process is already listening on {taken}; "
        "choose another path with --host-socket"
    ]
