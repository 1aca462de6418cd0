"""A stand-in for the Anthropic Messages API on loopback, for driving the real ``claude`` CLI.

The only stand-in in the end-to-end tests is the model: the CLI, ``hive-mcp``, the harness and the
daemon are real. :class:`ModelApi` is a real HTTP server (stdlib, in a thread) answering
``POST /v1/messages`` the way the API does: with ``"stream": true`` the server-sent events
``message_start``, ``content_block_start``/``content_block_delta`` (``text_delta``,
``input_json_delta``)/``content_block_stop``, ``message_delta``, ``message_stop``; otherwise one
JSON message. What it answers is scripted by :class:`Rule` rows, matched against the text of the
newest user message (the turn's prompt):

* the newest user message carries a ``tool_result``: the tool ran; answer ``done`` (end of turn);
* else the first rule whose ``needle`` occurs in it: a ``tool_use`` of ``rule.tool`` with
  ``rule.input`` (or, with ``hang``, no answer until the client goes away: a turn killed mid-way);
* else a short text answer.

Every request body is kept (:attr:`ModelApi.requests`) so tests can see what the CLI sent (the
tools it offered the model, the system prompt).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

API_KEY = "sk-ant-api03-standin-key-for-tests"


@attrs.define
class Rule:
    needle: str
    tool: str | None = None
    input: dict[str, Any] = attrs.field(factory=dict)
    hang: bool = False
    """Never answer (until the client disconnects): the turn is stuck mid-way."""
    times: int | None = None
    """Match at most this many times (``None``: always)."""
    used: int = 0


class ModelApi:
    """The stand-in server; ``url`` is its ``ANTHROPIC_BASE_URL``. Use as a context manager."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = list(rules)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.hanging = threading.Event()
        """Set while a ``hang`` rule holds a request."""
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/"):
                    self._send(404, b'{"type":"error","error":{"type":"not_found_error","message":"no"}}')
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, b'{"type":"error","error":{"type":"invalid_request_error"}}')
                    return
                with api.lock:
                    api.requests.append(body)
                blocks = api.answer(body)
                if blocks is None:  # hang until the client goes away (or the server stops)
                    api.hanging.set()
                    try:
                        while not api._stop.wait(0.1):
                            pass
                    finally:
                        api.hanging.clear()
                    return
                if body.get("stream"):
                    self._stream(body, blocks)
                else:
                    self._send(200, json.dumps(message(body, blocks, final=True)).encode())

            def do_GET(self) -> None:
                self._send(404, b'{"type":"error","error":{"type":"not_found_error","message":"no"}}')

            do_HEAD = do_GET

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for event, data in events(body, blocks):
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="model-api", daemon=True)

    def __enter__(self) -> ModelApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def env(self) -> dict[str, str]:
        """What points a ``claude`` CLI at this server, and keeps it off every other network."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": API_KEY,
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }

    def answer(self, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The content blocks for one request (``None``: hang)."""
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        if any(isinstance(p, dict) and p.get("type") == "tool_result" for p in parts):
            return [{"type": "text", "text": "done"}]
        text = "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        with self.lock:
            for rule in self.rules:
                if rule.needle in text and (rule.times is None or rule.used < rule.times):
                    rule.used += 1
                    if rule.hang:
                        return None
                    if rule.tool is not None:
                        n = len(self.requests)
                        return [
                            {
                                "type": "tool_use",
                                "id": f"toolu_{n:08d}",
                                "name": rule.tool,
                                "input": rule.input,
                            }
                        ]
        return [{"type": "text", "text": "noted"}]

    def tool_names(self, index: int = -1) -> list[str]:
        """The tools offered to the model in request ``index``."""
        with self.lock:
            return [t.get("name", "") for t in self.requests[index].get("tools") or []]

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        """Block until ``predicate(self)`` (for threads; trio tests use ``eventually``)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError("the stand-in model never saw what was expected")
            time.sleep(0.05)


def _usage() -> dict[str, int]:
    return {
        "input_tokens": 120,
        "output_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _stop_reason(blocks: list[dict[str, Any]]) -> str:
    return "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"


def message(body: dict[str, Any], blocks: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
    return {
        "id": f"msg_standin_{int(time.monotonic() * 1e6)}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "claude-standin",
        "content": blocks if final else [],
        "stop_reason": _stop_reason(blocks) if final else None,
        "stop_sequence": None,
        "usage": _usage(),
    }


def events(body: dict[str, Any], blocks: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The streaming events of one answer, as the Messages API sends them."""
    yield "message_start", {"type": "message_start", "message": message(body, blocks, final=False)}
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "text_delta", "text": block["text"]},
                },
            )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
            "usage": {"output_tokens": 12},
        },
    )
    yield "message_stop", {"type": "message_stop"}
