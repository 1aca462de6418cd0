"""Dashboard HTTP hardening through a real hypercorn and raw sockets (issue 11, defects 1 and 7).

Every request gets exactly one answer, never a 5xx or a traceback, and no request holds a file
descriptor past its client. Quiescence is awaited with ``wait_all_tasks_blocked`` (the daemon runs in
the test's own trio loop), never with a sleep.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from hivecore.daemon import Daemon

CUSHION = 0.05
"""Seconds with every task blocked and no I/O ready before the daemon counts as settled."""


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=CUSHION)


async def connect(daemon: Daemon) -> trio.SocketStream:
    url = urlsplit(daemon.dashboard_urls[0])
    assert url.hostname is not None
    assert url.port is not None
    return await trio.open_tcp_stream(url.hostname, url.port)


class Reader:
    """Parses HTTP/1.1 responses (content-length or chunked bodies) off a raw stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some()
        self.buf += chunk
        return bool(chunk)

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not await self._fill():
                raise EOFError(f"connection closed, still waiting for {marker!r}; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise EOFError("connection closed inside a body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def response(self, *, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = (await self._until(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        status = int(lines[0].split()[1])
        body = b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, body
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self._until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._until(b"\r\n")
                    break
                body += await self._exactly(size)
                await self._exactly(2)
        else:
            body = await self._exactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def at_eof(self) -> bool:
        return not self.buf and not await self._fill()


async def request(daemon: Daemon, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await connect(daemon)
    async with stream:
        await stream.send_all(raw)
        return await Reader(stream).response(head_request=raw.startswith(b"HEAD "))


def get(path: str, headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()


# --- defect 1: HEAD on the stream held the connection forever ---------------------------------------


async def test_head_on_the_stream_answers_and_the_next_request_on_the_connection_too(hive: Daemon) -> None:
    await settle()
    baseline = fd_count()
    with trio.fail_after(10):
        stream = await connect(hive)
        reader = Reader(stream)
        await stream.send_all(
            b"HEAD /api/dashboard/stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        status, headers, _ = await reader.response(head_request=True)
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        status, _, body = await reader.response()
        assert status == 200
        assert json.loads(body)["ok"] is True
        await stream.aclose()
    await settle()
    assert fd_count() == baseline
    assert hive.bus.statistics().subscribers == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
async def test_other_methods_on_the_stream_answer_at_once(hive: Daemon, method: str) -> None:
    with trio.fail_after(10):
        stream = await connect(hive)
        async with stream:
            reader = Reader(stream)
            await stream.send_all(
                f"{method} /api/dashboard/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            status, _, _ = await reader.response()
            assert status < 500
            assert status != 200 or method == "OPTIONS"
            status, _, _ = await reader.response()
            assert status == 200
    assert hive.bus.statistics().subscribers == 0


async def test_a_stream_client_that_leaves_releases_its_fd_and_subscription(hive: Daemon) -> None:
    await settle()
    baseline = fd_count()
    with trio.fail_after(10):
        stream = await connect(hive)
        await stream.send_all(b"GET /api/dashboard/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(stream)
        await reader._until(b": connected")
        assert hive.bus.statistics().subscribers == 1
        await stream.aclose()
    await settle()
    assert hive.bus.statistics().subscribers == 0
    assert fd_count() == baseline


# --- defect 7: odd input gave 500s with tracebacks --------------------------------------------------


@pytest.mark.parametrize(
    "last_id",
    [b"\xb2", b"1\xb2", b"\xc2\xb2", b"9" * 5000, b"-1", b"+3", b"1_000", b"\xd9\xa3", b"0x10"],
)
async def test_odd_last_event_ids_get_a_clear_400(
    hive: Daemon, caplog: pytest.LogCaptureFixture, last_id: bytes
) -> None:
    raw = b"GET /api/dashboard/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: %s\r\nConnection: close\r\n\r\n"
    with trio.fail_after(10):
        status, _, body = await request(hive, raw % last_id)
    assert status == 400, body
    assert json.loads(body)["error"].startswith("Last-Event-ID must be a seq number")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert hive.bus.statistics().subscribers == 0


async def test_last_event_id_with_surrounding_spaces_still_replays(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    seq = hive.bus.current_seq()
    await hive.coordinator.stop("coder")
    with trio.fail_after(10):
        stream = await connect(hive)
        async with stream:
            await stream.send_all(
                f"GET /api/dashboard/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {seq}  \r\n\r\n".encode()
            )
            reader = Reader(stream)
            frame = await reader._until(b"\n\n")
            while b"data: " not in frame:
                frame = await reader._until(b"\n\n")
    data = json.loads(frame.partition(b"data: ")[2])
    assert data["seq"] == seq + 1


@pytest.mark.parametrize(
    "path",
    [
        "/static/" + "a" * 5000,
        "/static/" + "a/" * 3000,
        "/" + "x" * 5000,
        "/static/%00",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/%ff%fe",
    ],
)
async def test_odd_paths_get_a_clear_4xx(hive: Daemon, caplog: pytest.LogCaptureFixture, path: str) -> None:
    with trio.fail_after(10):
        status, _, _ = await request(hive, get(path))
    assert 400 <= status < 500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
