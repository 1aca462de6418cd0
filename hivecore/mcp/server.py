"""``hive-mcp``: the hive's MCP server (stdio) for the one principal whose socket ``HIVE_SOCKET`` names.

Server name ``hyperhive``: Claude Code names its tools ``mcp__hyperhive__<verb>``. Who the tools are
for is asked of the socket itself (``whoami``: its ``role``), once, at the first ``tools/list`` or
``tools/call``; identity is the socket, as for every other client. The tools are
:func:`hivecore.mcp.tools.tools` of that role. Calls go one at a time over one kept connection
(:class:`SocketClient`: reopened when the daemon closed it meanwhile, so a daemon restart between
calls costs nothing); each sends one request line and reads one answer line. A daemon refusal is
a tool result with ``isError`` carrying the daemon's message; an unreachable daemon is a tool error
saying so. The server itself never fails on
a call: it keeps serving until its stdin closes.

Environment: ``HIVE_SOCKET`` (required), ``HIVE_MCP_CALL_TIMEOUT`` (seconds a call may take, default
900: a manager ``update`` waits for a rebuild).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import trio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from hivecore.mcp import tools as hive_tools

log = logging.getLogger("hivecore.mcp")

SERVER_NAME = "hyperhive"
DEFAULT_CALL_TIMEOUT = 900.0
MAX_ANSWER = 8 * 1024 * 1024
"""The longest answer line read from the daemon (bytes)."""
INSTRUCTIONS = (
    "The hive's tools: talk to other agents, the manager and the operator, and (for the manager) "
    "manage agents and ask the operator for approvals. Messages to you arrive as turns; you do not "
    "poll for them."
)


class DaemonUnreachable(Exception):
    """The socket could not be reached or answered nothing readable; the message says which."""


class SocketClient:
    """Requests on a JSON-lines Unix socket, one at a time, on one kept connection.

    The connection is opened on first use and kept (the agent socket keeps a long idle slot for the
    MCP server). Before a request it is checked for a close the daemon sent meanwhile (idle
    timeout, restart): then a new one is opened. A connection that fails mid-request is dropped and
    the call reported as failed, never retried (it may have happened)."""

    def __init__(self, path: str, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._stream: anyio.abc.ByteStream | None = None
        self._lock = anyio.Lock()

    async def _connect(self) -> anyio.abc.ByteStream:
        if self._stream is not None and _closed_by_peer(self._stream):
            await self._drop()
        if self._stream is None:
            try:
                self._stream = await anyio.connect_unix(self.path)
            except OSError as exc:
                raise DaemonUnreachable(
                    f"cannot reach the hive at {self.path}: {exc.strerror or exc}; the daemon may be "
                    "restarting, try again shortly"
                ) from None
        return self._stream

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def aclose(self) -> None:
        """Close the kept connection (if any)."""
        async with self._lock:
            await self._drop()

    async def request(self, line: bytes) -> bytes:
        """Send ``line`` (ending in a newline); the answer line without its newline."""
        async with self._lock:
            with anyio.move_on_after(self.timeout) as scope:
                try:
                    stream = await self._connect()
                    await stream.send(line)
                    buf = bytearray()
                    while (i := buf.find(b"\n")) < 0:
                        if len(buf) > MAX_ANSWER:
                            raise DaemonUnreachable("the daemon's answer is too long")
                        buf += await stream.receive(65536)
                    if i + 1 != len(buf):
                        raise DaemonUnreachable("the daemon answered more than one line")
                    return bytes(buf[:i])
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await self._drop()
                    raise DaemonUnreachable(
                        "the daemon closed the connection without answering (the call may or may not "
                        "have happened)"
                    ) from None
                except BaseException:
                    await self._drop()
                    raise
            await self._drop()
            assert scope.cancel_called
            raise DaemonUnreachable(f"the daemon did not answer within {self.timeout:g} s")


def _closed_by_peer(stream: anyio.abc.ByteStream) -> bool:
    """True when the kept connection is readable between requests: the daemon closed it (after an
    idle-timeout error line) or reset it. No request is outstanding, so nothing else can be there."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None:
        return False
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class HiveTools:
    """The principal's tools, learnt from the socket on first use, and the calls."""

    def __init__(self, client: SocketClient) -> None:
        self.client = client
        self._tools: Mapping[str, hive_tools.Tool] | None = None
        self._lock = anyio.Lock()

    async def known(self) -> Mapping[str, hive_tools.Tool]:
        async with self._lock:
            if self._tools is None:
                answer = await self.client.request(b'{"cmd":"whoami"}\n')
                is_error, text, fields = hive_tools.result_of(answer)
                if is_error:
                    raise DaemonUnreachable(f"the hive did not say who this socket is: {text}")
                role = (fields.get("whoami") or {}).get("role")
                self._tools = {t.name: t for t in hive_tools.tools(str(role))}
            return self._tools

    async def list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        known = await self.known()
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=dict(t.input_schema))
                for t in known.values()
            ]
        )

    async def call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            line = hive_tools.request_line(params.name, params.arguments, await self.known())
            is_error, text, fields = hive_tools.result_of(await self.client.request(line))
        except (hive_tools.ToolError, DaemonUnreachable) as exc:
            is_error, text, fields = True, str(exc), {}
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content=fields if not is_error else None,
            is_error=is_error,
        )


def build(client: SocketClient) -> Server[Any]:
    """The SDK server serving ``client``'s principal."""
    hive = HiveTools(client)
    return Server(
        SERVER_NAME,
        version="1",
        instructions=INSTRUCTIONS,
        on_list_tools=hive.list_tools,
        on_call_tool=hive.call_tool,
    )


class PipeText:
    """One end of the stdio pipes as the text file :func:`mcp.server.stdio.stdio_server` reads lines
    from (``async for``) or writes to (``write``, ``flush``), on a non-blocking file descriptor: the
    SDK's default wraps ``sys.stdin``/``sys.stdout`` in worker threads, two or three thread hops per
    tool call, which dominated a call's round trip on a loaded machine (``bench/mcp_tools.py``)."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._buf = bytearray()

    def __aiter__(self) -> PipeText:
        return self

    async def __anext__(self) -> str:
        while (i := self._buf.find(b"\n")) < 0:
            data = await self._stream.receive_some(1 << 16)
            if not data:
                if not self._buf:
                    raise StopAsyncIteration
                i = len(self._buf) - 1
                break
            self._buf += data
        line = bytes(self._buf[: i + 1])
        del self._buf[: i + 1]
        return line.decode("utf-8", errors="replace")

    async def write(self, text: str) -> None:
        await self._stream.send_all(text.encode("utf-8"))

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self._stream.aclose()


def claim_stdio() -> tuple[int, int]:
    """Private copies of fds 0 and 1 for the protocol; fd 0 becomes the null device and fd 1 stderr,
    so nothing else can read the protocol's input or write into its output."""
    stdin, stdout = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return stdin, stdout


async def serve(client: SocketClient) -> None:
    """Serve MCP on stdin/stdout until stdin closes."""
    server = build(client)
    fd_in, fd_out = claim_stdio()
    stdin, stdout = PipeText(fd_in), PipeText(fd_out)
    try:
        async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):  # type: ignore[arg-type]
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
            await stdin.aclose()
            await stdout.aclose()


def main(argv: list[str] | None = None) -> int:
    """Serve on stdio; 2 (a sentence on stderr) when the environment names no usable socket."""
    logging.basicConfig(level=logging.WARNING, format="hive-mcp: %(levelname)s %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.stderr.write("usage: hive-mcp (no arguments; the socket is HIVE_SOCKET)\n")
        return 2
    path = os.environ.get("HIVE_SOCKET", "")
    if not path:
        sys.stderr.write("hive-mcp: HIVE_SOCKET must name the agent's (or the manager's) socket\n")
        return 2
    raw = os.environ.get("HIVE_MCP_CALL_TIMEOUT", "")
    try:
        timeout = float(raw) if raw else DEFAULT_CALL_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        sys.stderr.write(f"hive-mcp: HIVE_MCP_CALL_TIMEOUT must be a positive number, not {raw!r}\n")
        return 2
    anyio.run(serve, SocketClient(path, timeout), backend="trio")
    return 0
