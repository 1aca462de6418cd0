"""The dashboard's HTTP API through a real hypercorn: /api/state snapshot, SSE stream, replay."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import trio

from hivecore.daemon import Daemon
from tests.conftest import AUTH
from tests.web_client import http


async def http_get(daemon: Daemon, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """GET as the operator (bearer token)."""
    return await http(daemon, "GET", path, headers=AUTH + headers)


class SSE:
    """A minimal SSE client over a raw HTTP/1.1 connection (chunked framing skipped by parsing lines).

    Raw on purpose: httpx leaves its stream's async generators to the garbage collector when a test
    stops reading mid-stream, which trio reports (and the suite turns warnings into errors)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, daemon: Daemon, path: str, headers: str = "") -> SSE:
        url = urlsplit(daemon.dashboard_urls[0])
        assert url.hostname is not None
        assert url.port is not None
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n{AUTH}{headers}\r\n".encode())
        return cls(stream)

    async def wait_connected(self) -> None:
        """Wait for the server's ``: connected`` comment: the subscription exists from then on."""
        while b": connected" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError
            self.buf += chunk

    async def next_data(self) -> dict[str, object]:
        while True:
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                if line.startswith(b"data: "):
                    result: dict[str, object] = json.loads(line[6:])
                    return result
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError
            self.buf += chunk


async def test_state_snapshot_has_seq_and_rows(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    status, headers, body = await http_get(hive, "/api/state")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    state = json.loads(body)
    assert state["seq"] == hive.bus.current_seq()
    assert [c["name"] for c in state["containers"]] == ["coder"]
    assert state["containers"][0]["running"] is True
    assert {a["name"] for a in state["actors"]} >= {"event_bus", "store", "crash_watch", "host_socket"}


async def test_stream_delivers_changes_after_the_snapshot(hive: Daemon) -> None:
    with trio.fail_after(20):
        sse = await SSE.open(hive, "/api/dashboard/stream?kinds=transient_set,container_state_changed")
        async with sse.stream:
            await sse.wait_connected()
            await hive.coordinator.spawn("coder")
            first = await sse.next_data()
            second = await sse.next_data()
    assert first["kind"] == "transient_set"
    assert first["name"] == "coder"
    assert second["kind"] == "container_state_changed"
    assert isinstance(second["seq"], int)
    assert second["seq"] > first["seq"]  # type: ignore[operator]


async def test_last_event_id_replays_and_a_stale_id_says_refetch(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    seq = hive.bus.current_seq()
    await hive.coordinator.stop("coder")
    with trio.fail_after(20):
        sse = await SSE.open(hive, "/api/dashboard/stream", f"Last-Event-ID: {seq}\r\n")
        async with sse.stream:
            replayed = await sse.next_data()
        assert replayed["seq"] == seq + 1
        sse = await SSE.open(hive, "/api/dashboard/stream", "Last-Event-ID: 999999\r\n")
        async with sse.stream:
            refetch = await sse.next_data()
    assert refetch["kind"] == "refetch"


async def test_index_page_is_served(hive: Daemon) -> None:
    status, headers, body = await http_get(hive, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"HIVE-C0RE" in body
    status, _, _ = await http_get(hive, "/static/dashboard.js")
    assert status == 200


async def test_bad_stream_parameters_get_a_clear_400(hive: Daemon) -> None:
    status, _, body = await http_get(hive, "/api/dashboard/stream?kinds=transient_set,bogus")
    assert status == 400
    answer = json.loads(body)
    assert answer["ok"] is False
    assert answer["error"].startswith("unknown event kind(s) bogus; known: actor_crashed, ")
    status, _, body = await http_get(hive, "/api/dashboard/stream", "Last-Event-ID: ../etc\r\n")
    assert status == 400
    assert json.loads(body)["error"] == "Last-Event-ID must be a seq number, got '../etc'"
    assert hive.bus.statistics().subscribers == 0  # nothing was subscribed
