"""The generic JSON-lines server over real Unix sockets: several requests per connection, handler
failures, idle timeouts, bind failures; and the one client against it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hivecore.sockets.client import Hints, Unreachable, exchange, request
from hivecore.sockets.server import Connection, JsonLinesServer, ListenError


def error_line(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


async def echo_length(conn: Connection, line: bytes) -> None:
    """Answers ``{"ok":true,"n":<bytes>}``; ``boom`` raises before answering, ``late`` after."""
    if line == b"boom":
        raise RuntimeError("boom")
    await conn.send(json.dumps({"ok": True, "n": len(line)}).encode() + b"\n")
    if line == b"late":
        raise ValueError("after the answer")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def many(short_dir: Path) -> AsyncIterator[JsonLinesServer]:
    server = JsonLinesServer(
        "test.sock", short_dir / "test.sock", echo_length, error_line=error_line, many_requests=True
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


async def converse(path: Path, data: bytes, *, half_close: bool = True) -> list[bytes]:
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(path))
        async with stream:
            await stream.send_all(data)
            if half_close:
                stream.socket.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := await stream.receive_some():
                out += chunk
    return out.splitlines(keepends=True)


async def test_several_requests_on_one_connection_are_answered_in_order(many: JsonLinesServer) -> None:
    answers = await converse(many.path, b"a\nbb\n\nccc")  # the last line is unterminated at EOF
    assert [json.loads(a) for a in answers] == [
        {"ok": True, "n": 1},
        {"ok": True, "n": 2},
        {"ok": True, "n": 0},
        {"ok": True, "n": 3},
    ]
    assert many.statistics().requests == 4


async def test_a_handler_failure_is_logged_answered_once_and_closes(
    many: JsonLinesServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="hivecore.sockets.server"):
        answers = await converse(many.path, b"a\nboom\nnever\n")
        assert answers == [
            b'{"ok": true, "n": 1}\n',
            b'{"ok": false, "error": "internal error: RuntimeError: boom"}\n',
        ]
        # a handler that already answered is not answered for again
        assert await converse(many.path, b"late\nnever\n") == [b'{"ok": true, "n": 4}\n']
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[1].args[0] for r in failures if r.exc_info and r.exc_info[1]] == [
        "boom",
        "after the answer",
    ]
    assert many.statistics().internal_errors == 2
    assert await converse(many.path, b"ok\n") == [b'{"ok": true, "n": 2}\n']


async def test_over_long_line_gets_an_error_line_and_the_connection_closes(many: JsonLinesServer) -> None:
    answers = await converse(many.path, b"a\n" + b"x" * (64 * 1024 + 1) + b"\nb\n", half_close=False)
    assert answers == [
        b'{"ok": true, "n": 1}\n',
        b'{"ok": false, "error": "request line exceeds 65536 bytes"}\n',
    ]


async def test_idle_timeout_applies_to_each_line(
    short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server = JsonLinesServer(
        "test.sock",
        short_dir / "t.sock",
        echo_length,
        error_line=error_line,
        many_requests=True,
        idle_timeout=5,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stream = await trio.open_unix_socket(os.fspath(server.path))
        async with stream:
            start = trio.current_time()
            await stream.send_all(b"a\n")
            out = b""
            while out.count(b"\n") < 2:
                chunk = await stream.receive_some()
                assert chunk
                out += chunk
            assert (
                out
                == b'{"ok": true, "n": 1}\n{"ok": false, "error": "no complete request line within 5 s"}\n'
            )
            assert trio.current_time() - start == pytest.approx(5.0)
            assert await stream.receive_some() == b""  # closed
        assert server.statistics().idle_timeouts == 1
        nursery.cancel_scope.cancel()


async def test_a_path_that_cannot_be_bound_is_named(short_dir: Path) -> None:
    (short_dir / "file").write_text("not a directory")
    path = short_dir / "file" / "x.sock"
    server = JsonLinesServer("test.sock", path, echo_length, error_line=error_line)
    with pytest.raises(ListenError, match=f"test.sock: cannot listen on {path}: ") as caught:
        await server.run()
    assert caught.value.path == path


# --- the client ------------------------------------------------------------------------------------


async def test_the_client_reads_every_line_until_the_server_closes(
    many: JsonLinesServer, short_dir: Path
) -> None:
    async def two_lines(conn: Connection, line: bytes) -> None:
        await conn.send(b"one " + line + b"\n")
        await conn.send(b"two\n")

    once = JsonLinesServer("once.sock", short_dir / "once.sock", two_lines, error_line=error_line)
    async with trio.open_nursery() as nursery:
        await nursery.start(once.run)
        with trio.fail_after(30):
            lines = await trio.to_thread.run_sync(lambda: list(exchange(os.fspath(once.path), b"x\n", 5)))
            # request() takes the first answer and hangs up: it works with a many-requests server too
            first = await trio.to_thread.run_sync(request, os.fspath(many.path), b"abcd\n", 5)
        nursery.cancel_scope.cancel()
    assert lines == [b"one x", b"two"]
    assert first == b'{"ok": true, "n": 4}'


async def test_a_silent_server_is_a_clear_timeout(short_dir: Path) -> None:
    async def mute(conn: Connection, line: bytes) -> None:
        await trio.sleep_forever()

    server = JsonLinesServer("mute.sock", short_dir / "mute.sock", mute, error_line=error_line)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with pytest.raises(Unreachable, match=r"no answer from the daemon within 0\.2 s"):
            await trio.to_thread.run_sync(request, os.fspath(server.path), b"x\n", 0.2)
        nursery.cancel_scope.cancel()


async def test_connect_errors_name_the_fix(short_dir: Path) -> None:
    missing = os.fspath(short_dir / "missing.sock")
    with pytest.raises(Unreachable, match=f"no socket at {missing}: the daemon is not running"):
        request(missing, b"x\n", 1)
    hints = Hints(start="start the agent", choose="set AGENT_SOCK", group=None)
    with pytest.raises(Unreachable, match="not running \\(start the agent\\), or set AGENT_SOCK"):
        request(missing, b"x\n", 1, hints)
    stale = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(stale))
    dead.close()
    with pytest.raises(Unreachable, match=r"nothing is listening on .*start it with `hive-c0re serve`"):
        request(os.fspath(stale), b"x\n", 1)
