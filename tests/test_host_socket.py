"""host.sock over a real Unix socket against the real daemon (process runtime, real agent processes)."""

from __future__ import annotations

import collections
import contextlib
import grp
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hivecore.coordinator import Coordinator
from hivecore.daemon import Daemon
from hivecore.errors import HiveError
from hivecore.models import ContainerView
from hivecore.sockets.host import EMPTY_SCOPE, HostSocket, live_urls
from hivecore.wire.events import ContainerStateChanged
from hivecore.wire.host import (
    COMMANDS,
    MAX_LINE,
    AgentStatusRow,
    HostResponse,
    RequestError,
    encode_response,
    failure,
    parse_request,
)
from tests.conftest import Parts
from tests.waiting import eventually

# --- helpers ----------------------------------------------------------------------------------------


async def ask_raw(path: Path, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data``, read until the server closes; the whole answer."""
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(path))
        async with stream:
            await stream.send_all(data)
            if half_close:
                stream.socket.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := await stream.receive_some():
                out += chunk
            return out


async def ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    answer = await ask_raw(path, json.dumps(request).encode() + b"\n")
    assert answer.endswith(b"\n"), answer
    assert answer.count(b"\n") == 1, answer
    decoded: dict[str, Any] = json.loads(answer)
    assert decoded["version"] == 1
    assert ("error" in decoded) == (decoded["ok"] is False)
    return decoded


async def ok(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    answer = await ask(path, request)
    assert answer["ok"] is True, answer
    return answer


async def refused(path: Path, request: dict[str, Any]) -> str:
    answer = await ask(path, request)
    assert answer["ok"] is False, answer
    return str(answer["error"])


def rows(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in answer["agent_statuses"]}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for socket paths (the ``parts`` fixture's state dir is taken)."""
    path = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- every verb against the real daemon --------------------------------------------------------------


async def test_lifecycle_verbs_over_the_socket(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    assert await ask_raw(sock, b'{"cmd":"list"}\n') == b'{"version":1,"ok":true,"agents":[]}\n'
    assert (
        await ask_raw(sock, b'{"cmd":"agent_status"}\n') == b'{"version":1,"ok":true,"agent_statuses":[]}\n'
    )

    await ok(sock, {"cmd": "spawn", "name": "a"})
    await ok(sock, {"cmd": "spawn", "name": "b"})
    assert (await ok(sock, {"cmd": "list"}))["agents"] == ["a", "b"]
    status = await ask_raw(sock, b'{"cmd":"agent_status"}\n')
    views = hive.coordinator.views()
    assert status == encode_response(
        HostResponse(ok=True, agent_statuses=[AgentStatusRow.from_view(v) for v in views.values()])
    )
    assert {n: r["running"] for n, r in rows(json.loads(status)).items()} == {"a": True, "b": True}
    assert "already exists" in await refused(sock, {"cmd": "spawn", "name": "a"})

    await ok(sock, {"cmd": "stop", "scope": {"agent_names": ["a"]}, "graceful": True})
    assert {n: r["running"] for n, r in rows(await ok(sock, {"cmd": "agent_status"})).items()} == {
        "a": False,
        "b": True,
    }
    await ok(sock, {"cmd": "start", "scope": {"agent_names": ["a"]}})
    await ok(sock, {"cmd": "restart", "name": "a"})
    await ok(sock, {"cmd": "stop", "scope": {"agents": True}, "graceful": False})
    assert not any(r["running"] for r in rows(await ok(sock, {"cmd": "agent_status"})).values())
    await ok(sock, {"cmd": "start", "scope": {"agents": True}})
    assert all(r["running"] for r in rows(await ok(sock, {"cmd": "agent_status"})).values())
    await ok(sock, {"cmd": "kill", "name": "b"})
    assert not rows(await ok(sock, {"cmd": "agent_status"}))["b"]["running"]

    await ok(sock, {"cmd": "destroy", "name": "b"})
    assert hive.config.paths.agent_dir("b").exists()  # state kept: a tombstone
    await ok(sock, {"cmd": "destroy", "name": "a", "purge": True})
    assert not hive.config.paths.agent_dir("a").exists()
    assert (await ok(sock, {"cmd": "list"}))["agents"] == []


async def test_set_paused_works_stopped_and_is_idempotent(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "p"})
    await ok(sock, {"cmd": "stop", "scope": {"agent_names": ["p"]}})
    for _ in range(2):
        await ok(sock, {"cmd": "set_paused", "name": "p", "paused": True})
        assert rows(await ok(sock, {"cmd": "agent_status"}))["p"]["paused"] is True
    for _ in range(2):
        await ok(sock, {"cmd": "set_paused", "name": "p", "paused": False})
        assert rows(await ok(sock, {"cmd": "agent_status"}))["p"]["paused"] is False
    assert await refused(sock, {"cmd": "set_paused", "name": "zz", "paused": True}) == (
        'agent "zz" is not managed by this hive'
    )


async def test_refusals_and_not_yet_available_verbs(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "a"})
    ghost = 'agent "ghost" is not managed by this hive'
    assert await ask_raw(sock, b'{"cmd":"restart","name":"ghost"}\n') == (
        b'{"version":1,"ok":false,"error":"agent \\"ghost\\" is not managed by this hive"}\n'
    )
    for request in (
        {"cmd": "kill", "name": "ghost"},
        {"cmd": "destroy", "name": "ghost"},
        {"cmd": "start", "scope": {"agent_names": ["a", "ghost"]}},
        {"cmd": "stop", "scope": {"agent_names": ["ghost"]}, "graceful": True},
    ):
        assert await refused(sock, request) == ghost
    assert rows(await ok(sock, {"cmd": "agent_status"}))["a"]["running"]  # the valid name was not stopped

    scopes: list[dict[str, Any]] = [{}, {"agent_names": []}, {"agents": False}]
    for scope in scopes:
        assert await refused(sock, {"cmd": "stop", "scope": scope, "graceful": True}) == EMPTY_SCOPE
    assert await refused(sock, {"cmd": "start"}) == EMPTY_SCOPE
    error = await refused(sock, {"cmd": "start", "scope": {"agents": True, "forge": True, "matrix": True}})
    assert error.startswith("scope selects forge, matrix: this hive runs no such service")
    assert "invalid agent name" in await refused(sock, {"cmd": "restart", "name": "../x"})

    assert await ask_raw(sock, b'{"cmd":"pending"}\n') == b'{"version":1,"ok":true,"approvals":[]}\n'
    for request, what in (
        ({"cmd": "rebuild", "name": "ghost"}, ghost),
        ({"cmd": "request_spawn", "name": "a", "description": "d"}, 'agent "a" already exists'),
        ({"cmd": "request_spawn", "name": "hm1nd"}, '"hm1nd" is the manager'),
        ({"cmd": "approve", "id": 1}, "no approval 1"),
        ({"cmd": "deny", "id": 1, "note": "n"}, "no approval 1"),
    ):
        assert (await refused(sock, request)).startswith(what)
    assert await ask_raw(sock, b'{"cmd":"pending"}\n') == b'{"version":1,"ok":true,"approvals":[]}\n'
    # the dashboard bound an ephemeral port: urls names the real one
    assert (await ok(sock, {"cmd": "urls"}))["urls"] == {"home": hive.dashboard_urls[0] + "/"}
    assert not hive.dashboard_urls[0].endswith(":0")


async def test_one_failure_among_several_is_reported_and_the_rest_still_happen(
    hive: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = hive.config.host_socket_path
    for name in ("a", "b", "c"):
        await ok(sock, {"cmd": "spawn", "name": name})
    await ok(sock, {"cmd": "stop", "scope": {"agents": True}, "graceful": False})
    real_start = hive.coordinator.start

    async def flaky_start(name: str) -> None:
        if name == "b":
            raise HiveError("b is feeling shy")
        await real_start(name)

    monkeypatch.setattr(hive.coordinator, "start", flaky_start)
    assert await refused(sock, {"cmd": "start", "scope": {"agents": True}}) == (
        "start failed for 1 of 3 agents: b: b is feeling shy"
    )
    assert await refused(sock, {"cmd": "start", "scope": {"agent_names": ["b"]}}) == "b is feeling shy"
    running = {n: r["running"] for n, r in rows(await ok(sock, {"cmd": "agent_status"})).items()}
    assert running == {"a": True, "b": False, "c": True}


async def test_a_handler_bug_is_logged_and_answered(
    hive: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sock = hive.config.host_socket_path

    async def broken() -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(hive.coordinator, "agent_names", broken)
    with caplog.at_level(logging.ERROR, logger="hivecore.sockets.host"):
        assert await refused(sock, {"cmd": "list"}) == "internal error during list: RuntimeError: boom"
    assert any(r.exc_info for r in caplog.records)
    monkeypatch.undo()
    await ok(sock, {"cmd": "list"})


# --- subscribe_agent_status --------------------------------------------------------------------------


async def receive_lines(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    i = buf.index(b"\n")
    line = bytes(buf[: i + 1])
    del buf[: i + 1]
    return line


async def count_until_eof(stream: trio.SocketStream, buf: bytearray) -> int:
    """How many more lines arrive before the server closes the connection."""
    received = 0
    while True:
        try:
            await receive_lines(stream, buf)
        except EOFError:
            return received
        received += 1


async def test_subscribe_acks_then_streams_single_rows(
    hive: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "s"})
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(sock))
        async with stream:
            await stream.send_all(b'{"cmd":"subscribe_agent_status"}\n')
            buf = bytearray()
            assert await receive_lines(stream, buf) == b'{"version":1,"ok":true}\n'
            await ok(sock, {"cmd": "set_paused", "name": "s", "paused": True})
            while True:
                update = json.loads(await receive_lines(stream, buf))
                assert update["version"] == 1
                assert update["ok"] is True
                assert len(update["agent_statuses"]) == 1
                if update["agent_statuses"][0]["paused"]:
                    break
            assert update["agent_statuses"][0]["name"] == "s"
            subscribers = hive.bus.statistics().subscribers
    # the client hung up: the server notices and unsubscribes without waiting for another event
    await eventually(lambda: hive.bus.statistics().subscribers < subscribers)  # no event to wait on
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_lagging_subscriber_is_dropped_and_the_daemon_is_unaffected(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(sock))
        async with stream:
            await stream.send_all(b'{"cmd":"subscribe_agent_status"}\n')
            buf = bytearray()
            assert await receive_lines(stream, buf) == b'{"version":1,"ok":true}\n'
            for i in range(500):  # synchronous: the subscriber cannot keep up
                view = ContainerView(name="ghost", container="h-ghost", status_text=f"{i}")
                hive.bus.publish(ContainerStateChanged(container=view))
            received = await count_until_eof(stream, buf)
    assert received < 500
    assert hive.bus.statistics().dropped_subscribers >= 1
    await ok(sock, {"cmd": "agent_status"})


async def test_a_subscriber_that_stops_reading_is_dropped_after_the_send_timeout(
    parts: Parts, short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "host.sock"
    admin = HostSocket(parts.coordinator, parts.bus, path, send_timeout=5.0, subscriber_buffer=100_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        stream = await trio.open_unix_socket(os.fspath(path))
        async with stream:
            await stream.send_all(b'{"cmd":"subscribe_agent_status"}\n')
            buf = bytearray()
            assert await receive_lines(stream, buf) == b'{"version":1,"ok":true}\n'
            big = "x" * 10_000
            for i in range(200):  # ~2 MB: more than the socket buffers hold
                view = ContainerView(name="ghost", container="h-ghost", status_text=f"{i}{big}")
                parts.bus.publish(ContainerStateChanged(container=view))
                await trio.lowlevel.checkpoint()
            await trio.sleep(60)  # virtual time: the server's blocked send times out
            assert admin.statistics().dropped_subscribers == 1
            assert await count_until_eof(stream, buf) < 200
        nursery.cancel_scope.cancel()


# --- robustness ---------------------------------------------------------------------------------------


async def test_two_hundred_concurrent_agent_status_clients(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "a"})
    await ok(sock, {"cmd": "spawn", "name": "b"})
    await ok(sock, {"cmd": "stop", "scope": {"agent_names": ["b"]}})
    expected = encode_response(
        HostResponse(
            ok=True, agent_statuses=[AgentStatusRow.from_view(v) for v in hive.coordinator.views().values()]
        )
    )
    answers: list[bytes] = []

    async def client() -> None:
        answers.append(await ask_raw(sock, b'{"cmd":"agent_status"}\n'))

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(client)
    assert len(answers) == 200
    assert set(answers) == {expected}
    assert [r["running"] for r in json.loads(expected)["agent_statuses"]] == [True, False]


def _malformed_lines() -> st.SearchStrategy[bytes]:
    scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    value = st.recursive(
        scalar,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=6,
    )
    fields = st.dictionaries(st.sampled_from(["name", "id", "scope", "paused", "purge", "graceful"]), value)
    valid = [b'{"cmd":"list"}', b'{"cmd":"stop","scope":{"agents":true}}', b'{"cmd":"approve","id":1}']
    return st.one_of(
        st.binary(max_size=120),
        value.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(COMMANDS), fields).map(
            lambda t: json.dumps({"cmd": t[0], **t[1]}).encode()
        ),
        st.dictionaries(st.text(max_size=6), value, max_size=3).map(lambda d: json.dumps(d).encode()),
        st.sampled_from(valid).flatmap(lambda v: st.integers(0, len(v) - 1).map(lambda i: v[:i])),
    ).map(lambda b: b.replace(b"\n", b" "))


def _blocking_ask(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)  # a wedged server fails the example instead of hanging the suite
        s.connect(path)
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def test_a_thousand_malformed_lines_never_crash_or_wedge_the_server(hive: Daemon) -> None:
    sock = os.fspath(hive.config.host_socket_path)
    sent: list[bytes] = []

    @settings(
        max_examples=1000,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(_malformed_lines())
    def check(line: bytes) -> None:
        parsed = parse_request(line)
        assume(isinstance(parsed, RequestError))  # a well-formed request by chance: not what this test sends
        assert isinstance(parsed, RequestError)
        sent.append(line)
        assert _blocking_ask(sock, line + b"\n") == encode_response(failure(parsed.message))

    await trio.to_thread.run_sync(check)
    assert len(sent) == 1000
    assert (await ok(Path(sock), {"cmd": "list"}))["agents"] == []


async def test_framing_edge_cases(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    too_long = f'{{"version":1,"ok":false,"error":"request line exceeds {MAX_LINE} bytes"}}\n'.encode()
    assert await ask_raw(sock, b"x" * (MAX_LINE + 10)) == too_long  # no newline ever comes
    assert await ask_raw(sock, b" " * (MAX_LINE + 1) + b"\n") == too_long
    # an unterminated last line at EOF still counts; only the first line is read
    assert (await ask_raw(sock, b'{"cmd":"list"}', half_close=True)).startswith(b'{"version":1,"ok":true')
    assert (
        await ask_raw(sock, b'{"cmd":"list"}\n{"cmd":"nope"}\n') == b'{"version":1,"ok":true,"agents":[]}\n'
    )
    assert await ask_raw(sock, b"", half_close=True) == b""  # connected and left
    await ok(sock, {"cmd": "list"})


async def test_idle_client_is_answered_and_closed_after_ten_seconds(
    parts: Parts, short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "host.sock"
    admin = HostSocket(parts.coordinator, parts.bus, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        for opening in (b"", b'{"cmd":"li'):
            start = trio.current_time()
            answer = await ask_raw(path, opening)
            assert answer == b'{"version":1,"ok":false,"error":"no complete request line within 10 s"}\n'
            assert trio.current_time() - start == pytest.approx(10.0)
        assert admin.statistics().idle_timeouts == 2
        assert (await ask(path, {"cmd": "list"}))["ok"] is True
        nursery.cancel_scope.cancel()


# --- the socket file -----------------------------------------------------------------------------------


async def test_socket_mode_group_and_directory(parts: Parts, short_dir: Path) -> None:
    parent = short_dir / "run"
    path = parent / "host.sock"
    group = "daemon" if os.geteuid() == 0 else None
    admin = HostSocket(parts.coordinator, parts.bus, path, group=group)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        st_sock = path.lstat()
        assert stat.S_ISSOCK(st_sock.st_mode)
        assert stat.S_IMODE(st_sock.st_mode) == 0o660
        assert stat.S_IMODE(parent.stat().st_mode) == 0o751
        if group is not None:
            assert st_sock.st_gid == grp.getgrnam(group).gr_gid
        nursery.cancel_scope.cancel()
    assert not path.exists()  # unlinked on the way out


async def test_sticky_shared_directory_is_left_alone(parts: Parts, short_dir: Path) -> None:
    shared = short_dir
    shared.chmod(0o1777)
    admin = HostSocket(parts.coordinator, parts.bus, shared / "host.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        nursery.cancel_scope.cancel()


async def test_unknown_group_is_refused(parts: Parts, short_dir: Path) -> None:
    admin = HostSocket(parts.coordinator, parts.bus, short_dir / "host.sock", group="no-such-group-zz")
    with pytest.raises(HiveError, match="group 'no-such-group-zz' does not exist"):
        await admin.run()


async def test_stale_socket_is_replaced(parts: Parts, short_dir: Path) -> None:
    path = short_dir / "host.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))
    dead.close()  # the file stays behind, nobody listens
    assert stat.S_ISSOCK(path.lstat().st_mode)
    admin = HostSocket(parts.coordinator, parts.bus, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        assert (await ask(path, {"cmd": "list"}))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_live_socket_is_never_stolen(hive: Daemon) -> None:
    path = hive.config.host_socket_path
    inode = path.lstat().st_ino
    intruder = HostSocket(hive.coordinator, hive.bus, path)
    with pytest.raises(HiveError, match="another process is already listening on"):
        await intruder.run()
    assert path.lstat().st_ino == inode
    await ok(path, {"cmd": "list"})


async def test_a_file_that_is_not_a_socket_is_left_alone(parts: Parts, short_dir: Path) -> None:
    path = short_dir / "host.sock"
    path.write_text("precious")
    with pytest.raises(HiveError, match="not a socket"):
        await HostSocket(parts.coordinator, parts.bus, path).run()
    assert path.read_text() == "precious"


async def test_a_successors_socket_is_not_unlinked(parts: Parts, short_dir: Path) -> None:
    path = short_dir / "host.sock"
    admin = HostSocket(parts.coordinator, parts.bus, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        path.unlink()  # an operator (or a successor daemon) replaced the file
        successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        successor.bind(os.fspath(path))
        nursery.cancel_scope.cancel()
    assert stat.S_ISSOCK(path.lstat().st_mode)
    successor.close()


async def test_home_url_override(parts: Parts, short_dir: Path) -> None:
    path = short_dir / "host.sock"
    admin = HostSocket(
        parts.coordinator,
        parts.bus,
        path,
        urls=live_urls(None, "0.0.0.0", 7000, lambda: "http://127.0.0.1:43210"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        assert (await ask(path, {"cmd": "urls"}))["urls"] == {"home": "http://127.0.0.1:43210/"}
        nursery.cancel_scope.cancel()


# --- hostile input: one answer line each, nothing logged, no fd leaked (issue 11 defect 6) -----------

_HUGE = "@@huge@@"


def _hostile_lines() -> st.SearchStrategy[bytes]:
    surrogate = st.characters(categories=["Cs"])
    text = st.text(st.one_of(st.characters(), surrogate), max_size=8)
    lone = st.tuples(text, surrogate, text).map("".join)
    scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text | st.just(_HUGE)
    value = st.recursive(
        scalar,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
        max_leaves=8,
    )
    # every verb except the two that would change or hold the hive (spawn, subscribe)
    safe_cmds = [c for c in COMMANDS if c not in ("spawn", "subscribe_agent_status")]
    cmd = st.sampled_from(safe_cmds) | text
    fields = st.dictionaries(st.sampled_from(["name", "id", "scope", "paused", "purge", "graceful"]), value)

    def to_json(v: object) -> bytes:
        # ensure_ascii: surrogates travel as \ud800 escapes, the way a JSON client would send them
        digits = "9" * 4400
        return json.dumps(v).replace(f'"{_HUGE}"', digits).encode()

    return st.one_of(
        value.map(to_json),
        st.tuples(cmd, fields).map(lambda t: to_json({"cmd": t[0], **t[1]})),
        # a lone surrogate where it is echoed back: an unknown cmd, an invalid name
        st.tuples(st.sampled_from(["restart", "kill", "destroy", "purge_tombstone"]) | lone, lone).map(
            lambda t: to_json({"cmd": t[0], "name": t[1]})
        ),
        st.binary(max_size=200),  # mostly invalid UTF-8
        st.builds(lambda b: b'{"cmd":"' + b + b'"}', st.binary(min_size=1, max_size=8)),
        st.integers(MAX_LINE + 1, MAX_LINE + 4096).map(lambda n: b"[" + b"1," * (n // 2) + b"1]"),
    ).map(lambda b: b.replace(b"\n", b" "))


def _exchange_raw(path: str, data: bytes, *, half_close: bool) -> bytes:
    """Send everything (or as much as the server takes before answering), read until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)  # a wedged server fails the example instead of hanging the suite
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(ConnectionResetError):  # the server closed with our bytes unread
            while chunk := s.recv(65536):
                out += chunk
        return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_hostile_lines_get_exactly_one_answer_each(
    parts: Parts, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "host.sock"
    admin = HostSocket(parts.coordinator, parts.bus, path)
    examples: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        baseline = _open_fds()

        @settings(
            max_examples=300,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(_hostile_lines(), st.booleans())
        def check(line: bytes, terminated: bool) -> None:
            examples.append(line)
            # an unterminated line is followed by EOF (a half-close): it is still the request
            data = line + b"\n" if terminated else line
            answer = _exchange_raw(os.fspath(path), data, half_close=not terminated)
            if not terminated and not line.strip():
                assert answer == b""  # connected and left without a word: nothing to answer
                return
            assert answer.count(b"\n") == 1, (line[:200], answer[:200])
            assert answer.endswith(b"\n")
            decoded = json.loads(answer.decode("utf-8"))  # valid UTF-8 and JSON, even for surrogates
            assert decoded["version"] == 1
            assert isinstance(decoded["ok"], bool)
            if len(line) > MAX_LINE:
                assert decoded["error"] == f"request line exceeds {MAX_LINE} bytes"
            elif isinstance(parse_request(line), RequestError):
                assert decoded["ok"] is False
                assert decoded["error"]

        with caplog.at_level(logging.DEBUG):
            await trio.to_thread.run_sync(check)
        await trio.testing.wait_all_tasks_blocked()
        assert _open_fds() <= baseline  # nothing held past its client (start-up work may release some)
        assert admin.server.statistics().open_connections == 0
        nursery.cancel_scope.cancel()
    assert len(examples) == 300
    assert any(b"9" * 4400 in e for e in examples)
    assert any(b"\\ud" in e for e in examples)
    assert any(len(e) > MAX_LINE for e in examples)
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    assert admin.statistics().internal_errors == 0


# --- a huge scope costs one lookup (issue 11 defect 9) -----------------------------------------------


class CountingFacade:
    """The real coordinator, counting the lookups host.sock makes."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.coordinator, name)
        if name in ("agent_names", "require_agent", "start", "stop"):

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return await real(*args, **kwargs)

            return counted
        return real


async def test_a_64_kib_scope_naming_one_agent_13000_times_is_one_lookup(
    parts: Parts, short_dir: Path
) -> None:
    await parts.coordinator.spawn("a")
    await parts.coordinator.spawn("b")
    await parts.coordinator.stop("a")
    facade = CountingFacade(parts.coordinator)
    path = short_dir / "host.sock"
    admin = HostSocket(facade, parts.bus, path)  # a delegating wrapper
    scope = {"agent_names": ["a"] * 13_000 + ["b", "a"]}
    line = json.dumps({"cmd": "stop", "scope": scope}).encode() + b"\n"
    assert len(line) > 60_000
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        assert (await ask_raw(path, line)) == b'{"version":1,"ok":true}\n'
        assert facade.calls == {"agent_names": 1, "stop": 2}  # a and b, once each, in that order
        facade.calls.clear()
        ghost = {"agent_names": ["a"] * 13_000 + ["ghost"] * 3, "agents": True}
        answer = await ask(path, {"cmd": "start", "scope": ghost})
        assert answer["error"] == 'agent "ghost" is not managed by this hive'
        assert facade.calls == {"agent_names": 1, "require_agent": 1}  # nothing started
        nursery.cancel_scope.cancel()
    assert {n: v.running for n, v in parts.coordinator.views().items()} == {"a": False, "b": False}
