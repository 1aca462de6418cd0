"""The dashboard's HTTP API through a real hypercorn: /api/state snapshot, SSE stream, replay."""

from __future__ import annotations

import json

import trio

from hivecore.daemon import Daemon
from tests.conftest import AUTH
from tests.web_client import event_stream, http


async def http_get(daemon: Daemon, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """GET as the operator (bearer token)."""
    return await http(daemon, "GET", path, headers=AUTH + headers)


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
        path = "/api/dashboard/stream?kinds=transient_set,container_state_changed"
        async with event_stream(hive, path, AUTH) as sse:
            assert sse.response.headers["content-type"].startswith("text/event-stream")
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
        async with event_stream(hive, "/api/dashboard/stream", f"{AUTH}Last-Event-ID: {seq}\r\n") as sse:
            replayed = await sse.next_data()
        assert replayed["seq"] == seq + 1
        async with event_stream(hive, "/api/dashboard/stream", f"{AUTH}Last-Event-ID: 999999\r\n") as sse:
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
