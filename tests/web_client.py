"""The tests' HTTP client for the dashboard (httpx, on trio through anyio).

Helpers keep the shape the tests were written against: extra headers as raw ``Name: value\\r\\n``
lines, answers as ``(status, {lower-case name: value}, body)``. Raw bytes on a socket stay only in
the tests that send malformed or pipelined requests on purpose (``tests/test_hardening_web.py``).

SSE streams are read with httpx-sse through :func:`event_stream`.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import attrs
import httpx
import trio
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from hivecore.daemon import Daemon

TIMEOUT = httpx.Timeout(20.0)
"""Bounds every request (connect, each read): a hung server fails the test."""


def header_lines(raw: str) -> dict[str, str]:
    """``"A: 1\\r\\nB: 2\\r\\n"`` → ``{"A": "1", "B": "2"}``."""
    out: dict[str, str] = {}
    for line in raw.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            out[name.strip()] = value.strip()
    return out


def _flat(headers: httpx.Headers) -> dict[str, str]:
    """Lower-case names; a repeated header's values joined with newlines (``set-cookie``)."""
    got: dict[str, str] = {}
    for name, value in headers.multi_items():
        key = name.lower()
        got[key] = f"{got[key]}\n{value}" if key in got else value
    return got


async def http(
    daemon: Daemon, method: str, path: str, body: bytes | dict[str, str] = b"", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection, ``path`` sent as given; a dict body is sent
    form-encoded; ``headers`` may set ``Host`` (the default is ``x``)."""
    sent = header_lines(headers)
    if isinstance(body, dict):
        body = urlencode(body).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    sent.setdefault("Host", "x")  # not a loopback name: what the tests were written against
    async with httpx.AsyncClient(base_url=daemon.dashboard_urls[0], timeout=TIMEOUT) as client:
        request = client.build_request(method, path, content=body, headers=sent)
        request.extensions["target"] = path.encode()  # as given: ``..`` segments reach the server
        response = await client.send(request)
    return response.status_code, _flat(response.headers), response.content


@attrs.define
class EventStream:
    """An open SSE stream of the dashboard: its response (headers) and its events, in order."""

    response: httpx.Response
    _events: trio.MemoryReceiveChannel[ServerSentEvent]

    async def next(self) -> ServerSentEvent:
        """The next event (keep-alive comments yield data-less events too); ``EOFError`` once the
        server ended the stream."""
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            raise EOFError("the server ended the stream") from None

    async def wait_connected(self) -> None:
        """Wait for the server's first frame (``retry:``/``id:`` and ``: connected``): it is sent once
        the subscription exists, so every event published from then on reaches this stream."""
        while (await self.next()).retry is None:
            pass

    async def next_data(self) -> dict[str, object]:
        """The next event that carries data, its JSON decoded."""
        while not (event := await self.next()).data:
            pass
        data: dict[str, object] = json.loads(event.data)
        return data


async def _pump(source: EventSource, sink: trio.MemorySendChannel[ServerSentEvent]) -> None:
    # Runs until cancelled or the stream ends. The channel is unbounded, so this task only ever
    # waits inside httpx's chain of async generators: a cancel unwinds (and so finishes) every one
    # of them, and none is left for the garbage collector (trio reports those as ResourceWarnings).
    with sink:
        async for event in source.aiter_sse():
            sink.send_nowait(event)


@asynccontextmanager
async def event_stream(daemon: Daemon, path: str, headers: str = "") -> AsyncIterator[EventStream]:
    """``GET path`` as an SSE stream (``headers`` as raw lines; ``Host`` defaults to ``x``), read in a
    task of its own until the block ends; the connection is closed on the way out."""
    sent = header_lines(headers)
    sent.setdefault("Host", "x")
    sink, events = trio.open_memory_channel[ServerSentEvent](math.inf)
    with events:
        try:
            async with (
                httpx.AsyncClient(base_url=daemon.dashboard_urls[0], timeout=TIMEOUT) as client,
                aconnect_sse(client, "GET", path, headers=sent) as source,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(_pump, source, sink)
                yield EventStream(source.response, events)
                # the pump may still hand over an event it holds: the channel stays open until it is gone
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # the test's own failure (or the pump's), unwrapped
                raise group.exceptions[0] from None
            raise
