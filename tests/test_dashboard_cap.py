"""No agent can exhaust the daemon's fds or the operator's slots through the dashboard (issue 14
item 7, the TCP variant): agents under the process runtime share the host network and its loopback
address, so the dashboard's listener reads each request head itself (a deadline, oldest-first
eviction of connections still waiting for one), keeps slots only requests with credentials may
take, and stops at the part of the fd reserve host.sock keeps; a refused connection gets a response
saying why and is closed before hypercorn sees it. Real sockets, real hypercorn."""

from __future__ import annotations

import contextlib
import os
import resource

import trio

from hivecore import fdlimit
from hivecore.daemon import Daemon
from hivecore.dashboard_listener import (
    MAX_CONNECTIONS,
    MAX_PENDING,
    MAX_UNAUTHENTICATED,
    CappedListener,
    head_credentials,
)
from tests.conftest import AUTH, TEST_TOKEN
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


async def _open_idle(daemon: Daemon, count: int) -> list[trio.SocketStream]:
    return [await _connect(daemon) for _ in range(count)]


async def _close_all(clients: list[trio.SocketStream]) -> None:
    for client in clients:
        await trio.aclose_forcefully(client)


async def test_idle_connections_never_keep_the_operator_out(hive: Daemon) -> None:
    """A hostile client opens 256 connections and sends nothing: at most MAX_PENDING of them are
    kept (a new one closes the oldest, with a 503 saying so), so the operator's next request, with
    or without credentials, is read and answered; host.sock is untouched."""
    listener = _listener(hive)
    idle = await _open_idle(hive, MAX_CONNECTIONS)
    try:
        await eventually(lambda: listener.evicted >= MAX_CONNECTIONS - MAX_PENDING, timeout=30)
        assert listener.pending <= MAX_PENDING
        assert listener.open_connections <= MAX_CONNECTIONS
        got = await _reads_eof(idle[0], 5.0)  # the oldest: closed with the reason
        assert got is not None
        assert got.startswith(b"HTTP/1.1 503 "), got
        assert b"waiting to send a request" in got
        await _operator_surfaces_answer(hive)
        status, _, _ = await http(hive, "GET", "/login")  # the login page too (no credentials)
        assert status == 200
    finally:
        await _close_all(idle)


async def test_a_request_head_has_a_deadline_and_a_stream_does_not(hive: Daemon) -> None:
    """slowloris: a head trickled a byte at a time is cut at the deadline (408); an authenticated
    SSE stream whose head came at once lives past it (the deadline is for the head only)."""
    listener = _listener(hive)
    listener.head_timeout = 1.0
    stream = await _connect(hive)
    await stream.send_all(f"GET /api/dashboard/stream HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
    slow = await _open_idle(hive, 8)

    async def trickle() -> None:
        for client in slow:
            await client.send_all(b"GET /api/state HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while True:
            for client in slow:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.send_all(b"a")
            await trio.sleep(0.2)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            for client in slow:
                got = await _reads_eof(client, 10.0)
                assert got is not None, "a trickled head outlived the deadline"
                assert got.startswith(b"HTTP/1.1 408 "), got
                assert b"request head was not complete in time" in got
            nursery.cancel_scope.cancel()
        assert listener.head_timeouts >= len(slow)
        # the stream's head was complete at once: still open well past the deadline
        assert await _reads_eof(stream, 1.5) is None
        assert listener.authenticated >= 1
    finally:
        await _close_all([stream, *slow])


async def test_unauthenticated_connections_cannot_take_the_operators_slots(hive: Daemon) -> None:
    """Hostile clients hold every unauthenticated slot (a POST /login whose body never comes) and
    256 idle connections besides: the next request without credentials is refused with a 503 that
    says why, the operator's authenticated /api/state still answers."""
    listener = _listener(hive)
    held: list[trio.SocketStream] = []
    idle: list[trio.SocketStream] = []
    try:
        for _ in range(MAX_UNAUTHENTICATED):
            client = await _connect(hive)
            await client.send_all(
                b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100000\r\n\r\ntoken="
            )
            held.append(client)
        await eventually(lambda: listener.unauthenticated == MAX_UNAUTHENTICATED, timeout=30)
        idle = await _open_idle(hive, MAX_CONNECTIONS)
        await eventually(lambda: listener.evicted >= MAX_CONNECTIONS - MAX_PENDING, timeout=30)
        assert listener.open_connections <= MAX_CONNECTIONS
        refused = await _connect(hive)
        async with refused:
            await refused.send_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            got = await _reads_eof(refused, 5.0)
        assert got is not None, "an unauthenticated connection past its slots was kept open"
        assert got.startswith(b"HTTP/1.1 503 "), got
        assert b"without credentials" in got
        assert listener.refused_over_cap >= 1
        assert listener.unauthenticated == MAX_UNAUTHENTICATED
        await _operator_surfaces_answer(hive)  # bearer: an authenticated slot
        # logging in is authenticated too (the login page sends the token in a header) ...
        status, headers, _ = await http(
            hive, "POST", "/login", headers=f"Authorization: Bearer {TEST_TOKEN}\r\n"
        )
        assert status == 200
        # ... and the session cookie it sets is a credential
        sid = headers["set-cookie"].split("hive_session=", 1)[1].split(";", 1)[0]
        status, _, body = await http(hive, "GET", "/api/state", headers=f"Cookie: hive_session={sid}\r\n")
        assert status == 200, body
    finally:
        await _close_all([*held, *idle])
    await eventually(lambda: listener.open_connections == 0, timeout=30)


async def test_an_unauthenticated_connection_is_closed_in_time(hive: Daemon) -> None:
    listener = _listener(hive)
    listener.unauthenticated_lifetime = 1.0
    client = await _connect(hive)
    async with client:
        await client.send_all(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100000\r\n\r\ntoken="
        )
        await eventually(lambda: listener.unauthenticated == 1, timeout=10)
        assert await _reads_eof(client, 10.0) is not None, "held past its lifetime"
    await eventually(lambda: listener.unauthenticated == 0, timeout=10)


def test_credentials_are_read_from_the_head() -> None:
    head = (
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=b; hive_session=s1d; c=d\r\n"
        b"authorization: Bearer t0k\r\n\r\nbody"
    )
    assert head_credentials(head) == ("Bearer t0k", "s1d")
    assert head_credentials(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nCookie: hive_session=x\r\n") == (None, None)
    assert head_credentials(b'GET / HTTP/1.1\nCookie: hive_session="q"\n\n') == (None, "q")


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

