"""No agent can exhaust the daemon's fds through the dashboard (issue 14 item 7, the TCP variant):
agents under the process runtime share the host network and can connect to the dashboard port, so
its listening socket caps open connections at :data:`MAX_CONNECTIONS` and stops at the part of the fd
reserve host.sock keeps; a refused connection gets a 503 and is closed before hypercorn sees it."""

from __future__ import annotations

import contextlib
import os
import resource

import trio

from hivecore import fdlimit
from hivecore.daemon import Daemon
from hivecore.dashboard_listener import MAX_CONNECTIONS, CappedListener
from tests.conftest import AUTH
from tests.test_fd_starvation import _fill_fd_holes, _reads_eof
from tests.test_host_socket import ask
from tests.waiting import eventually
from tests.web_client import http


def _listener(daemon: Daemon) -> CappedListener:
    [listener] = daemon.dashboard_listeners
    assert isinstance(listener, CappedListener)
    return listener


async def _connect(daemon: Daemon) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", daemon.dashboard_port())


async def _operator_surfaces_answer(daemon: Daemon) -> None:
    answer = await ask(daemon.config.host_socket_path, {"cmd": "list"})
    assert answer["ok"], answer
    status, _, body = await http(daemon, "GET", "/api/state", headers=AUTH)
    assert status == 200, body


async def test_slowloris_connections_stop_at_the_cap_and_the_operator_gets_back_in(hive: Daemon) -> None:
    listener = _listener(hive)
    slow: list[trio.SocketStream] = []

    async def trickle() -> None:
        # slowloris: headers that never end, one byte per connection every half second
        while True:
            for client in slow:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.send_all(b"a")
            await trio.sleep(0.5)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONNECTIONS):
                client = await _connect(hive)
                await client.send_all(b"GET /api/state HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(client)
            nursery.start_soon(trickle)
            await eventually(lambda: listener.open_connections == MAX_CONNECTIONS, timeout=30)
            # the next one is answered 503 and closed at once, never reaching hypercorn
            extra = await _connect(hive)
            async with extra:
                got = await _reads_eof(extra, 5.0)
            assert got is not None, "a connection past the cap was kept open"
            assert got.startswith(b"HTTP/1.1 503 "), got
            assert f"the limit is {MAX_CONNECTIONS} open at once".encode() in got
            assert listener.refused_over_cap >= 1
            assert listener.open_connections == MAX_CONNECTIONS
            # host.sock is untouched by the dashboard's connections
            answer = await ask(hive.config.host_socket_path, {"cmd": "list"})
            assert answer["ok"], answer
            nursery.cancel_scope.cancel()
    finally:
        for client in slow:
            await trio.aclose_forcefully(client)
    await eventually(lambda: listener.open_connections < MAX_CONNECTIONS, timeout=30)
    await _operator_surfaces_answer(hive)


def _limit_putting_the_next_accept_in_host_sock_reserve(next_fd: int) -> int:
    """The largest soft limit under which a connection accepted on ``next_fd + 1`` (the test's
    client takes ``next_fd``) is inside host.sock's part of the reserve: slack for stray fds."""
    candidates = [
        limit
        for limit in range(next_fd + 2, next_fd + 256)
        if next_fd + 1 >= limit - fdlimit.host_reserve_for(limit)
    ]
    return max(candidates)


async def test_dashboard_connections_stop_where_host_sock_keeps_its_fds(hive: Daemon) -> None:
    # let start-up settle (the manager's spawn opens and closes fds), as test_fd_starvation does
    await hive.coordinator.spawn("coder")
    await hive.coordinator.stop("coder")
    with trio.fail_after(10):
        await hive.agent_sockets.wait_for(lambda a: a.bound() == ["coder"])
    listener = _listener(hive)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = _fill_fd_holes()
    limit = _limit_putting_the_next_accept_in_host_sock_reserve(fillers[-1] + 1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with trio.fail_after(10):
            client = await _connect(hive)
        async with client:
            got = await _reads_eof(client, 5.0)
        assert got is not None, "a connection inside host.sock's reserve was kept open"
        assert got.startswith(b"HTTP/1.1 503 "), got
        assert b"short of file descriptors" in got
        assert listener.refused_fd_reserve == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    await _operator_surfaces_answer(hive)
