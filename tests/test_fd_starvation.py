"""No agent can starve the operator of file descriptors (issue 14, finding 7): per-socket
connection caps (8 per agent, 16 for the manager) with a clear refusal, an fd reserve that agent and
manager connections cannot eat into while host.sock and the dashboard keep answering, shorter idle
timeouts for extra connections, and the soft open-files limit raised to the hard one at start."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
import trio

from hivecore import fdlimit
from hivecore.daemon import Daemon
from hivecore.names import MANAGER_NAME
from hivecore.sockets.mcp import AGENT_MAX_CONNECTIONS, MANAGER_MAX_CONNECTIONS
from hivecore.sockets.server import JsonLinesServer
from tests.conftest import AUTH
from tests.test_host_socket import ask
from tests.waiting import eventually
from tests.web_client import http

ATTACK_CONNECTIONS = 400
"""Idle connections the attacker opens (20,000 exhausted the daemon on main; any number past the
cap shows the kind: without a cap every one of them holds a daemon fd)."""


async def _reads_eof(stream: trio.SocketStream, seconds: float) -> bytes | None:
    """What the daemon sent before closing, or ``None`` if it kept the connection open."""
    got = b""
    with trio.move_on_after(seconds):
        while chunk := await stream.receive_some():
            got += chunk
        return got
    return None


@pytest.fixture
async def quiet_agent(hive: Daemon) -> Daemon:
    """``coder`` exists but is stopped: nobody but the test holds its socket."""
    await hive.coordinator.spawn("coder")
    await hive.coordinator.stop("coder")
    with trio.fail_after(10):
        await hive.agent_sockets.wait_for(lambda a: a.bound() == ["coder"])
    return hive


async def _operator_surfaces_answer(daemon: Daemon) -> None:
    answer = await ask(daemon.config.host_socket_path, {"cmd": "list"})
    assert answer["ok"], answer
    status, _, body = await http(daemon, "GET", "/api/state", headers=AUTH)
    assert status == 200, body


SOCKETS = [
    ("agent socket", "coder", AGENT_MAX_CONNECTIONS),
    ("manager socket", MANAGER_NAME, MANAGER_MAX_CONNECTIONS),
]


@pytest.mark.parametrize(("what", "name", "cap"), SOCKETS, ids=[s[0] for s in SOCKETS])
async def test_idle_connections_past_the_cap_are_refused(
    quiet_agent: Daemon, what: str, name: str, cap: int
) -> None:
    daemon = quiet_agent
    path = daemon.config.agent_socket_path(name)
    sock = daemon.manager_socket if name == MANAGER_NAME else daemon.agent_sockets.socket(name)
    assert sock is not None
    server = sock.server
    clients: list[trio.SocketStream] = []
    try:
        clients.extend([await trio.open_unix_socket(os.fspath(path)) for _ in range(ATTACK_CONNECTIONS)])
        await eventually(lambda: server.statistics().connections == ATTACK_CONNECTIONS, timeout=30)
        # every client watched at once (one after another, each held one cost its own 0.5 s): a
        # refused one answers and closes; once all the refusals are in, a held one has still said
        # nothing 0.5 s later
        answers: list[bytes | None] = [None] * len(clients)

        async def watch(i: int) -> None:
            got = b""
            while chunk := await clients[i].receive_some():
                got += chunk
            answers[i] = got

        async with trio.open_nursery() as nursery:
            for i in range(len(clients)):
                nursery.start_soon(watch, i)
            expected = ATTACK_CONNECTIONS - cap
            await eventually(
                lambda: sum(a is not None for a in answers) >= expected, what=f"{expected} refusals"
            )
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        held = refused = 0
        for got in answers:
            if got is None:
                held += 1
                assert held <= cap, "the daemon holds more connections than the cap"
                continue
            refused += 1
            answer = json.loads(got)
            assert answer["ok"] is False
            assert "too many connections to" in answer["error"]
            assert f"the limit is {cap}" in answer["error"]
        assert held == cap
        assert refused == ATTACK_CONNECTIONS - cap
        assert server.statistics().open_connections == cap
        await _operator_surfaces_answer(daemon)
        # the held ones still work, and closing one makes room for a new client
        await clients[0].send_all(b'{"cmd": "whoami"}\n')
        await clients[0].aclose()
        await eventually(lambda: server.statistics().open_connections < cap)
        fresh = await trio.open_unix_socket(os.fspath(path))
        clients.append(fresh)
        await fresh.send_all(b'{"cmd": "whoami"}\n')
        with trio.fail_after(5):
            line = await fresh.receive_some()
        assert json.loads(line)["ok"] is True
    finally:
        for client in clients:
            await trio.aclose_forcefully(client)


def _fill_fd_holes() -> list[int]:
    """Dup fds until every one below the next free fd is in use (and it is at least 64): the kernel
    hands out the lowest free fd, so the daemon's next accept gets exactly that one."""
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = [os.dup(0)]
    while fillers[-1] < max(top, 63):
        fillers.append(os.dup(0))
    return fillers


async def test_agent_connections_stop_at_the_reserve_the_operator_keeps_answering(
    quiet_agent: Daemon,
) -> None:
    daemon = quiet_agent
    path = daemon.config.agent_socket_path("coder")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = _fill_fd_holes()
    resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[-1] + 1 + 16, hard))
    try:
        assert fdlimit.reserve_for(fdlimit.soft_limit()) > 16  # the next fds are all in the reserve
        client = await trio.open_unix_socket(os.fspath(path))
        async with client:
            got = await _reads_eof(client, 5.0)
        assert got is not None
        assert "short of file descriptors" in json.loads(got)["error"]
        await _operator_surfaces_answer(daemon)  # host.sock and the dashboard use the reserve
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    sock = daemon.agent_sockets.socket("coder")
    assert sock is not None
    server = sock.server
    assert server.statistics().refused_fd_reserve == 1
    # with fds to spare again, the agent is served
    client = await trio.open_unix_socket(os.fspath(path))
    async with client:
        await client.send_all(b'{"cmd": "whoami"}\n')
        with trio.fail_after(5):
            assert json.loads(await client.receive_some())["ok"] is True


async def test_extra_connections_get_the_short_idle_timeout(tmp_path: Path) -> None:
    async def handler(conn: object, line: bytes) -> None:
        raise AssertionError("no line is sent")

    path = Path(os.path.join("/tmp", f"fd{os.getpid()}.sock"))
    server = JsonLinesServer(
        "test.sock",
        path,
        handler,
        error_line=lambda m: json.dumps({"ok": False, "error": m}).encode() + b"\n",
        many_requests=True,
        idle_timeout=600.0,
        extra_idle_timeout=0.2,
        long_idle_slots=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        long1 = await trio.open_unix_socket(os.fspath(path))
        long2 = await trio.open_unix_socket(os.fspath(path))
        await eventually(lambda: server.statistics().open_connections == 2)
        extra = await trio.open_unix_socket(os.fspath(path))
        got = await _reads_eof(extra, 5.0)
        assert got is not None
        assert "within 0.2 s" in json.loads(got)["error"]
        assert await _reads_eof(long1, 0.3) is None  # the first two keep the long timeout
        assert await _reads_eof(long2, 0.01) is None
        for s in (long1, long2, extra):
            await s.aclose()
        nursery.cancel_scope.cancel()


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
        before, after = fdlimit.raise_nofile_limit()
        assert (before, after) == (min(soft, hard // 2), hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
