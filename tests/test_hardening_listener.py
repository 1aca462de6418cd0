"""The Unix listener never re-modes an existing directory; EMFILE on accept is logged once per burst."""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hivecore.unix_listener import (
    ACCEPT_LOGGER,
    AcceptErrorBurstFilter,
    install_accept_error_filter,
    open_unix_listener,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hl", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def virtual_time_filter() -> Iterator[None]:
    """The accept-error filter on trio's virtual clock; the default one is put back afterwards."""
    install_accept_error_filter(quiet_seconds=60.0, clock=trio.current_time)
    try:
        yield
    finally:
        install_accept_error_filter()


async def test_an_existing_socket_directory_is_not_re_moded(short_dir: Path) -> None:
    home = short_dir / "home"
    home.mkdir()
    home.chmod(0o700)
    bound = await open_unix_listener(home / "host.sock")
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    finally:
        bound.close()
    fresh = short_dir / "fresh" / "run"
    bound = await open_unix_listener(fresh / "host.sock")
    try:
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o751  # created for the socket: traversable
    finally:
        bound.close()


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def _connect(path: Path, n: int) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(os.fspath(path))  # completes in the backlog: nobody needs to accept yet
        clients.append(c)
    return clients


async def _accept_out_of_fds_for(path: Path, seconds: float) -> None:
    """Serve ``path`` for ``seconds`` (virtual) with no fd left for accept, then with fds again.

    Another thread of this process (an xdist worker's session Chromium, a worker thread ending) may
    close an fd below the limit at any moment; accept would take that hole and drain the waiting
    clients, ending the burst early. So the limit is set again to the lowest free fd every 0.05 s
    (on this thread: no accept runs in between), and 20 clients wait, not 3."""
    clients = _connect(path, 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        end = trio.current_time() + seconds
        try:
            while (left := end - trio.current_time()) > 0:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
                await trio.sleep(min(0.05, left))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await trio.testing.wait_all_tasks_blocked()  # the pending clients are accepted now
    finally:
        for c in clients:
            c.close()


async def _drop(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def test_emfile_on_accept_is_logged_once_per_burst(
    short_dir: Path,
    autojump_clock: trio.testing.MockClock,
    virtual_time_filter: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bound = await open_unix_listener(short_dir / "x.sock")
    try:
        with caplog.at_level(logging.ERROR, logger=ACCEPT_LOGGER):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, _drop, [bound.listener])
                await _accept_out_of_fds_for(bound.path, 30.0)  # ~300 failed accepts, 0.1 s apart
                first = [r for r in caplog.records if r.name == ACCEPT_LOGGER]
                await trio.sleep(120.0)  # quiet: the burst is over
                await _accept_out_of_fds_for(bound.path, 30.0)
                nursery.cancel_scope.cancel()
    finally:
        bound.close()
    records = [r for r in caplog.records if r.name == ACCEPT_LOGGER]
    assert len(first) == 1
    assert "EMFILE" in first[0].getMessage()
    assert first[0].exc_info is None  # no traceback of trio's accept loop
    assert len(records) == 2
    dropped = records[1].getMessage().rpartition("; ")[2]
    assert dropped.endswith("were not logged in the previous burst)")
    assert int(dropped.split()[0]) >= 250


def test_the_filter_lets_one_record_per_burst_through() -> None:
    now = [0.0]
    burst = AcceptErrorBurstFilter(quiet_seconds=10.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord(
            ACCEPT_LOGGER, logging.ERROR, __file__, 1, "accept returned %s", ("EMFILE",), None
        )

    passed = []
    for t in (0.0, 0.1, 5.0, 14.9, 30.0, 30.1):  # 14.9 is within 10 s of 5.0: still the first burst
        now[0] = t
        r = record()
        if burst.filter(r):
            passed.append((t, r.getMessage()))
    assert [t for t, _ in passed] == [0.0, 30.0]
    assert passed[1][1].endswith("; 3 were not logged in the previous burst)")


def test_the_nixos_unit_raises_the_open_files_limit() -> None:
    module = (Path(__file__).resolve().parent.parent / "nixos-module.nix").read_text()
    assert "LimitNOFILE = cfg.openFilesLimit;" in module
    default = re.search(r"openFilesLimit = mkOption \{[^}]*default = (\d+);", module)
    assert default is not None
    assert int(default.group(1)) >= 65536
