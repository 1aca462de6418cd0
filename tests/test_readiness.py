"""systemd readiness and watchdog (issue 19 item 3): the real ``hive-c0re serve`` under a
``NOTIFY_SOCKET`` the test owns sends ``READY=1`` (once host.sock answers), ``STATUS=`` lines,
``WATCHDOG=1`` every half ``WATCHDOG_USEC``, ``STOPPING=1`` on SIGTERM; a wedged trio loop (the
``HIVE_DEBUG_WEDGE_SECONDS`` hook, SIGUSR2) sends no pings while it is wedged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import trio

import hivecore
from hivecore import sdnotify
from tests.procs import eventually

REPO = Path(hivecore.__file__).resolve().parent.parent
WATCHDOG_USEC = 400_000  # pings every 0.2 s


class Datagrams:
    """A datagram socket the test owns, recording (monotonic time, payload) per datagram."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.seen: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.seen
            self.seen.append((time.monotonic(), data.decode()))

    async def receive_forever(self) -> None:
        """Stamp each datagram as it arrives (the test's checks read ``seen``)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self.drain()

    def lines(self) -> list[str]:
        return [line for _, payload in self.drain() for line in payload.split("\n")]

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, p in self.drain() if start <= t <= end and "WATCHDOG=1" in p.split("\n"))


def test_parse_environment() -> None:
    pid = 4242
    t = sdnotify.parse_environment({"NOTIFY_SOCKET": "@hive/notify", "WATCHDOG_USEC": "30000000"}, pid)
    assert t.address == b"\0hive/notify"
    assert t.watchdog_interval == 15.0
    t = sdnotify.parse_environment(
        {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "9", "WATCHDOG_PID": "1"}, pid
    )
    assert t.address == "/run/n"
    assert t.watchdog_usec is None  # meant for another process
    t = sdnotify.parse_environment({"NOTIFY_SOCKET": "relative", "WATCHDOG_USEC": "x"}, pid)
    assert t.address is None
    assert t.watchdog_usec is None
    env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "10", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    assert sdnotify.take_environment(env).watchdog_usec == 10
    assert env == {"KEEP": "1"}  # no child inherits them
    assert sdnotify.status_line("a\nb   c" + "x" * 500).startswith("STATUS=a b c")
    assert len(sdnotify.status_line("x" * 500)) == len("STATUS=") + sdnotify.MAX_STATUS


def test_abstract_socket_and_no_socket() -> None:
    name = f"hive-test-notify-{os.getpid()}"
    rx = Datagrams(b"\0" + name.encode())
    try:
        notifier = sdnotify.Notifier(sdnotify.parse_environment({"NOTIFY_SOCKET": "@" + name}, 1))
        assert notifier.ready("up")
        assert notifier.watchdog()
        assert rx.lines() == ["READY=1", "STATUS=up", "WATCHDOG=1"]
        notifier.close()
    finally:
        rx.sock.close()
    off = sdnotify.Notifier(sdnotify.NotifyTarget(None))
    assert not off.enabled
    assert not off.ready("x")
    assert off.sent == 0
    gone = sdnotify.Notifier(sdnotify.NotifyTarget("/nonexistent/notify"))
    assert not gone.watchdog()  # never raises
    assert gone.failed == 1
    gone.close()


async def test_serve_notifies_readiness_watchdog_and_stopping(state_dir: Path, tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="hcnotify", dir="/tmp"))
    notify_path = sock_dir / "notify"
    rx = Datagrams(os.fspath(notify_path))
    env = {k: v for k, v in os.environ.items() if k != "HIVE_HOST_SOCK"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NOTIFY_SOCKET"] = os.fspath(notify_path)
    env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    env["HIVE_DEBUG_WEDGE_SECONDS"] = "4.0"
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--runtime", "process", "--dashboard-port", "0", "--no-ensure-manager"]
    log_file = (tmp_path / "daemon.log").open("wb")
    daemon = await trio.lowlevel.open_process(
        cmd, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )

    def log() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rx.receive_forever)
            await eventually(lambda: "READY=1" in rx.lines(), timeout=60, what="READY=1")
            lines = rx.lines()
            assert any(line.startswith("STATUS=serving: 0 agents") for line in lines), lines
            assert (state_dir / "run" / "host.sock").exists()  # READY only once host.sock answered
            # periodic pings: at least 5 within 3 s at one per 0.2 s (a loaded machine may lag a few)
            await trio.sleep(3.0)
            now = time.monotonic()
            assert rx.pings_between(now - 3.0, now) >= 5, (rx.seen[-10:], log())
            # wedge the loop for 4 s: no ping while it is wedged (checked over 2 s of it, so seeing
            # the wedge's log line up to 2 s late still checks inside it), and they come back after
            daemon.send_signal(signal.SIGUSR2)
            await eventually(lambda: "blocking the event loop" in log(), timeout=10, what="the wedge began")
            wedged_at = time.monotonic()
            await trio.sleep(2.0)
            assert rx.pings_between(wedged_at + 0.3, wedged_at + 2.0) == 0, (rx.seen[-10:], log())
            await trio.sleep(2.5)
            back = time.monotonic()
            await eventually(
                lambda: rx.pings_between(back, time.monotonic()) >= 2, timeout=10, what="pings resume"
            )
            daemon.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await daemon.wait()
            assert daemon.returncode == 0, log()
            tail = rx.lines()
            assert "STOPPING=1" in tail, tail[-5:]
            nursery.cancel_scope.cancel()
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await daemon.wait()
        log_file.close()
        rx.sock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_wedge_hook_is_off_without_the_variable() -> None:
    from hivecore.errors import HiveError
    from hivecore.readiness import install_wedge_hook

    assert install_wedge_hook({}) is None
    with pytest.raises(HiveError, match="not a number"):
        install_wedge_hook({"HIVE_DEBUG_WEDGE_SECONDS": "soon"})
