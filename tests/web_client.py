"""The tests' HTTP client for the dashboard (httpx, on trio through anyio).

Helpers keep the shape the tests were written against: extra headers as raw ``Name: value\\r\\n``
lines, answers as ``(status, {lower-case name: value}, body)``. Raw bytes on a socket stay in the
tests that send malformed requests on purpose (``tests/test_hardening_web.py``) and in the SSE
readers (``tests/test_dashboard_api.py``: httpx leaves a stream's async generators to the garbage
collector when a reader stops mid-stream, which trio reports).
"""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

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
