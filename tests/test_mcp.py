"""``hive-mcp`` (hivecore/mcp) driven by the official MCP SDK's own client over stdio, against a real
daemon's agent and manager sockets: the tools per principal, calls doing what the daemon does, bad
arguments answered as tool errors by a server that keeps serving."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import pytest
import trio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from actors.event_bus import EventBus
from hivecore.container_view import STATUS_FILE
from hivecore.daemon import Daemon
from hivecore.mcp import tools as hive_tools
from hivecore.mcp.server import SocketClient, _closed_by_peer
from hivecore.runtime.process import PACKAGE_ROOT
from hivecore.services.broker import Broker
from hivecore.sockets.framing import MAX_LINE
from hivecore.sockets.mcp import AgentSocket
from hivecore.store import Store
from hivecore.verbs import bind, spec
from hivecore.wire.agent import MAX_BODY
from tests.conftest import Parts, make_config, start_parts
from tests.waiting import eventually


@pytest.fixture
async def parts_with_sockets(state_dir: Path) -> AsyncIterator[Parts]:
    """Broker, agent sockets and manager socket up; agent ``coder`` exists, stopped (nothing but the
    test reads its inbox)."""
    config = make_config(state_dir, crash_watch_interval=3600.0)
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        d = parts.daemon
        await nursery.start(d.broker.run)
        await nursery.start(d.agent_sockets.run)
        await nursery.start(d.manager_socket.run)
        await d.coordinator.spawn("coder")
        await d.coordinator.stop("coder")
        with trio.fail_after(10):
            await d.agent_sockets.wait_for(lambda a: a.bound() == ["coder"])
        yield parts
        nursery.cancel_scope.cancel()


def server_params(socket: Path | str) -> StdioServerParameters:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(PACKAGE_ROOT),
        "HIVE_SOCKET": str(socket),
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "hivecore.mcp"], env=env)


def devnull() -> TextIO:
    return open(os.devnull, "w")


@contextlib.asynccontextmanager
async def session(socket: Path | str) -> AsyncIterator[ClientSession]:
    with devnull() as errlog:
        async with (
            stdio_client(server_params(socket), errlog=errlog) as (read, write),
            ClientSession(read, write) as s,
        ):
            with trio.fail_after(30):
                await s.initialize()
            yield s


def expected_tools(surface: spec.Surface) -> list[str]:
    return [v.cmd for v in spec.on(surface) if not v.harness_only]


async def call(s: ClientSession, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    with trio.fail_after(30):
        result = await s.call_tool(name, arguments)
    [content] = result.content
    assert content.type == "text"
    return result.is_error, content.text


async def hive_rows(d: Daemon) -> list[tuple[str, str, str]]:
    """Every message not from ``system`` (helper events): (sender, recipient, body)."""
    sql = "SELECT sender, recipient, body FROM messages WHERE sender != 'system'"
    rows = await d.store.call(lambda c: c.execute(sql).fetchall())
    return [tuple(r) for r in rows]


# --- the generated tools (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "surface"), [("agent", "agent_sock"), ("manager", "manager_sock")])
def test_tools_are_the_surface_rows_minus_turn_plumbing(role: str, surface: spec.Surface) -> None:
    tools = hive_tools.tools(role)
    assert [t.name for t in tools] == expected_tools(surface)
    assert {"recv", "ack_turn"}.isdisjoint(t.name for t in tools)
    # the record each tool sends is the one the socket's verb table binds to that row
    bound = {key: cl for cl, key in bind.records(surface).items()}
    for t in tools:
        [row] = [v for v in spec.on(surface) if v.cmd == t.name]
        assert t.record is bound[row.key]
        assert t.description == row.description
        assert t.input_schema["type"] == "object"


def _bare(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` without its properties' descriptions."""
    props = {k: {f: v for f, v in p.items() if f != "description"} for k, p in schema["properties"].items()}
    return {**schema, "properties": props}


def test_schemas_follow_the_records() -> None:
    [send] = [t for t in hive_tools.tools("agent") if t.name == "send"]
    assert _bare(send.input_schema) == {
        "type": "object",
        "properties": {
            "to": {"type": "string"},
            "body": {"type": "string"},
            "in_reply_to": {"type": ["integer", "null"]},
        },
        "required": ["to", "body"],
        "additionalProperties": False,
    }
    assert "4096 bytes" in send.description
    assert "4096" in send.input_schema["properties"]["body"]["description"]
    [logs] = [t for t in hive_tools.tools("manager") if t.name == "get_logs"]
    assert _bare(logs.input_schema)["properties"]["lines"] == {"type": "integer"}
    assert logs.input_schema["required"] == ["name"]


@pytest.mark.parametrize("role", ["agent", "manager"])
def test_every_tool_argument_is_described(role: str) -> None:
    for tool in hive_tools.tools(role):
        for name, prop in tool.input_schema["properties"].items():
            text = prop.get("description")
            assert isinstance(text, str), (tool.name, name)
            assert 10 < len(text) <= 200, (tool.name, name, text)


def test_no_tools_for_the_operator_or_unknown_roles() -> None:
    for role in ("operator", "", "None"):
        with pytest.raises(ValueError, match="hive-mcp serves an agent or the manager socket"):
            hive_tools.tools(role)


def test_arguments_the_schema_does_not_name_are_refused() -> None:
    known = {t.name: t for t in hive_tools.tools("agent")}
    line = hive_tools.request_line("send", {"to": "manager", "body": "x"}, known)
    assert json.loads(line) == {"cmd": "send", "to": "manager", "body": "x"}
    # an argument named cmd could pick another verb; a misspelt one would be dropped silently
    with pytest.raises(
        hive_tools.ToolError, match="send takes no argument 'cmd'; it takes: to, body, in_reply_to"
    ):
        hive_tools.request_line("send", {"cmd": "approve", "to": "manager", "body": "x"}, known)
    with pytest.raises(hive_tools.ToolError, match="takes no argument 'in_reply_too'"):
        hive_tools.request_line("send", {"to": "manager", "body": "x", "in_reply_too": 3}, known)
    with pytest.raises(
        hive_tools.ToolError, match="get_loose_ends takes no argument 'x'; it takes: no arguments"
    ):
        hive_tools.request_line("get_loose_ends", {"x": 1}, known)
    with pytest.raises(hive_tools.ToolError, match="unknown tool 'recv'"):
        hive_tools.request_line("recv", {}, known)
    with pytest.raises(hive_tools.ToolError, match="cannot be sent as JSON"):
        hive_tools.request_line("send", {"to": float("nan")}, known)


def test_a_request_past_the_line_limit_is_refused_before_it_is_sent() -> None:
    known = {t.name: t for t in hive_tools.tools("agent")}
    fits = "x" * (MAX_LINE - len('{"text":"","cmd":"set_status"}'))
    assert len(hive_tools.request_line("set_status", {"text": fits}, known)) == MAX_LINE + 1
    too_long = f"{MAX_LINE + 1} bytes as a request; the hive reads at most"
    with pytest.raises(hive_tools.ToolError, match=too_long):
        hive_tools.request_line("set_status", {"text": fits + "x"}, known)


# --- the real server, the SDK's client, a real daemon ------------------------------------------------


async def test_agent_tools_act_as_the_agent(parts_with_sockets: Parts) -> None:
    d = parts_with_sockets.daemon
    async with session(d.config.agent_socket_path("coder")) as s:
        listed = await s.list_tools()
        assert [t.name for t in listed.tools] == expected_tools("agent_sock")
        assert all(t.description and t.input_schema["type"] == "object" for t in listed.tools)

        is_error, text = await call(s, "whoami", {})
        assert not is_error
        assert json.loads(text) == {"whoami": {"name": "coder", "inbox": "coder", "role": "agent"}}

        is_error, text = await call(s, "send", {"to": "manager", "body": "review done"})
        assert not is_error, text
        [msg_id] = json.loads(text)["ids"]
        assert await hive_rows(d) == [("coder", "manager", "review done")]
        assert msg_id > 0

        is_error, text = await call(s, "set_status", {"text": "reviewing #4"})
        assert not is_error, text
        assert (d.config.paths.agent_state("coder") / STATUS_FILE).read_text() == "reviewing #4\n"


async def test_manager_tools_reach_the_operator(parts_with_sockets: Parts) -> None:
    d = parts_with_sockets.daemon
    async with session(d.config.manager_socket_path) as s:
        listed = await s.list_tools()
        names = [t.name for t in listed.tools]
        assert names == expected_tools("manager_sock")
        assert {"request_spawn", "kill", "get_logs"} <= set(names)
        assert "set_status" not in names  # an agent's verb, not the manager's

        is_error, text = await call(s, "request_spawn", {"name": "scout", "description": "reads docs"})
        assert not is_error, text
        approval_id = json.loads(text)["approval_id"]
        [pending] = [a for a in await d.coordinator.pending() if a.id == approval_id]
        assert (pending.status, pending.agent) == ("pending", "scout")


async def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(parts_with_sockets: Parts) -> None:
    d = parts_with_sockets.daemon
    async with session(d.config.manager_socket_path) as s:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("send", {"to": "coder"}, "field 'body': required field missing"),
            ("send", {"to": "coder", "body": "x" * (MAX_BODY + 1)}, "4096"),
            ("send", {"to": "nobody-here", "body": "hi"}, "nobody-here"),
            ("request_spawn", {"name": "../../etc"}, "name"),
            ("request_spawn", {"name": "hm1nd"}, "is the manager"),
            ("kill", {"name": "hm1nd"}, "refusing to kill the manager"),
            ("get_logs", {"name": "coder", "lines": "many"}, "field 'lines'"),
            ("get_logs", {"name": "coder", "lines": 0}, "lines must be at least 1"),
            ("approve", {"id": 1}, "unknown tool 'approve'"),
            ("ack_turn", {}, "unknown tool 'ack_turn'"),
            ("send", {"to": "coder", "body": "x", "cmd": "approve"}, "send takes no argument 'cmd'"),
            # far past the line limit: refused by hive-mcp itself (sent, the daemon would close the
            # connection while the line is still being written: "may or may not have happened")
            ("send", {"to": "coder", "body": "y" * (16 * MAX_LINE)}, "the hive reads at most"),
        ]
        for name, arguments, needle in cases:
            is_error, text = await call(s, name, arguments)
            assert is_error, (name, arguments, text)
            assert needle in text, (name, arguments, text)
        # still serving, and nothing above reached the broker or the approvals
        assert await hive_rows(d) == []
        assert await d.coordinator.pending() == []
        is_error, text = await call(s, "send", {"to": "coder", "body": "still here"})
        assert not is_error, text
        assert d.manager_socket.internal_errors == 0


async def test_an_unreachable_daemon_is_a_tool_error_not_a_crash(state_dir: Path) -> None:
    missing = state_dir / "nothing.sock"
    async with session(missing) as s:
        with trio.fail_after(30):
            with pytest.raises(Exception, match="cannot reach the hive"):
                await s.list_tools()
            # the server is still there and answers the next request the same way
            is_error, text = await call(s, "send", {"to": "manager", "body": "x"})
        assert is_error
        assert "cannot reach the hive" in text


async def test_the_kept_connection_survives_the_daemon_closing_it(state_dir: Path) -> None:
    """hive-mcp keeps one connection; one the socket closed while idle is replaced, not a failed call."""
    config = make_config(state_dir)
    config.paths.create_layout()
    bus = EventBus()
    store = Store(config.paths.db)
    broker = Broker(store, bus, lambda: ["coder"])
    rows: Any = NoRows()
    sock = AgentSocket(config, "coder", broker, rows, idle_timeout=0.3, extra_idle_timeout=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(store.run)
        await nursery.start(sock.run)
        client = SocketClient(str(sock.path), timeout=10)
        whoami = b'{"cmd":"whoami"}\n'
        assert json.loads(await client.request(whoami))["whoami"]["name"] == "coder"
        first = client._stream
        assert first is not None
        await eventually(lambda: _closed_by_peer(first), what="the idle connection closed by the socket")
        assert json.loads(await client.request(whoami))["ok"]
        assert client._stream is not first
        await client.aclose()
        nursery.cancel_scope.cancel()


class NoRows:
    def rows(self) -> dict[str, object]:
        return {}

    async def rescan(self, names: object = None) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {}
