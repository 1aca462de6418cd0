"""The verb table (:mod:`hivecore.verbs`) against every surface of a real daemon: each surface serves
exactly the rows its principal may call, and the same bad input gets the same error everywhere."""

from __future__ import annotations

import argparse
import json
import os
import typing
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore.cli import hivectl as hivectl_cli
from hivecore.daemon import Daemon
from hivecore.errors import (
    EXIT_REFUSED,
    BadInput,
    Busy,
    HiveError,
    InvalidName,
    NotAvailable,
    Refused,
    UnknownAgent,
    UnknownApproval,
    answer_for,
)
from hivecore.harness import Channel
from hivecore.services.broker import BadMessage
from hivecore.sockets.mcp import AgentSocket
from hivecore.verbs import bind, spec
from hivecore.wire import agent as wire_agent
from hivecore.wire import host as wire_host
from hivecore.wire import manager as wire_manager
from hivecore.wire.request import RequestError, UnknownRequest
from tests.conftest import AUTH
from tests.test_dashboard_actions import answer
from tests.test_hivectl import err, hivectl
from tests.waiting import eventually
from tests.web_client import http

ROWS = {surface: {v.cmd for v in spec.on(surface)} for surface in spec.SURFACES}


def test_every_row_is_bound_and_every_principal_is_its_surfaces() -> None:
    assert set(bind.BINDINGS) == set(spec.BY_KEY)
    for surface in spec.SURFACES:
        for cl, key in bind.records(surface).items():
            row = spec.BY_KEY[key]
            assert row.cmd == cl.CMD
            assert spec.PRINCIPAL_OF[surface] in row.principals, (surface, key)
    # the operator's verbs reach no agent and no manager socket
    operator_only = {v.key for v in spec.VERBS if v.principals == {"operator"}}
    assert {"approve", "deny", "destroy", "spawn", "meta_update", "purge_tombstone"} <= operator_only
    for surface in ("manager_sock", "agent_sock"):
        assert not operator_only & set(bind.records(surface).values())


def test_the_wire_unions_decode_exactly_the_rows() -> None:
    """The sockets' decoders are generated from the table (one union per surface, built from its
    rows' records): each row's record is in its surface's union and nothing else is, and a verb of
    another surface is an unknown verb there."""
    assert set(wire_host.COMMANDS) == ROWS["host_sock"]
    assert set(wire_manager.MANAGER_COMMANDS) == ROWS["manager_sock"]
    assert set(wire_agent.AGENT_COMMANDS) == ROWS["agent_sock"]
    for surface in ("host_sock", "manager_sock", "agent_sock"):
        members = set(typing.get_args(bind.request_union(surface)))
        assert members == {*bind.records(surface), UnknownRequest}, surface
        assert {cl.CMD for cl in members - {UnknownRequest}} == ROWS[surface]
    for parse in (wire_agent.parse_agent_request, wire_manager.parse_manager_request):
        refused = parse(b'{"cmd": "approve", "id": 1}')
        assert isinstance(refused, RequestError)
        assert "approve" in refused.message
    assert isinstance(wire_host.parse_request(b'{"cmd": "approve", "id": 1}'), wire_host.ApproveRequest)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_hivectl_has_a_subcommand_for_each_row_and_no_other() -> None:
    subs = _subcommands(hivectl_cli.build_parser())
    expected = {c.name: v.cmd for v in spec.on("hivectl") for c in v.commands}
    assert set(subs) == set(expected)
    for name, sub in subs.items():
        assert sub.get_default("build") is not None, name
    assert set(expected.values()) == ROWS["hivectl"] == ROWS["host_sock"]  # hivectl speaks host.sock


async def test_every_server_serves_exactly_its_rows(hive: Daemon) -> None:
    host = {cl.CMD for cl in bind.records("host_sock")}
    assert host == ROWS["host_sock"]
    assert {cl.CMD for cl in hive.manager_socket.verbs} == ROWS["manager_sock"]
    agent = AgentSocket(hive.config, "probe", hive.broker, hive.views)
    assert {cl.CMD for cl in agent.verbs} == ROWS["agent_sock"]
    app = hive.dashboard_app
    assert app is not None
    posts = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or ()) and rule.rule not in ("/login", "/logout")
    }
    assert posts == {v.route.path for v in spec.on("dashboard") if v.route is not None}


async def test_a_verb_a_socket_does_not_list_is_unknown_there(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    await eventually(lambda: hive.agent_sockets.socket("coder") is not None, what="coder's socket bound")
    for cmd in ("approve", "deny", "destroy", "spawn", "meta_update", "kill", "get_logs"):
        got = await _mcp(hive.config.agent_socket_path("coder"), {"cmd": cmd, "id": 1, "name": "coder"})
        assert got["error"].startswith(f'unknown cmd "{cmd}"; this socket answers: '), got
    for cmd in ("approve", "deny", "destroy", "spawn", "meta_update", "status", "set_status"):
        got = await _mcp(hive.config.manager_socket_path, {"cmd": cmd, "id": 1, "name": "coder", "text": "x"})
        assert got["error"].startswith(f'unknown cmd "{cmd}"; this socket answers: '), got


# --- the same bad input, the same answer on every surface --------------------------------------------


async def _host(hive: Daemon, request: dict[str, Any]) -> str:
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(hive.config.host_socket_path))
        async with stream:
            await stream.send_all(json.dumps(request).encode() + b"\n")
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    decoded = json.loads(data)
    assert decoded["ok"] is False, decoded
    return str(decoded["error"])


async def _mcp(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    chan = await Channel.open(path)
    try:
        with trio.fail_after(20):
            return await chan.call(request)
    finally:
        await chan.aclose()


async def _manager(hive: Daemon, request: dict[str, Any]) -> str:
    got = await _mcp(hive.config.manager_socket_path, request)
    assert got["ok"] is False, got
    return str(got["error"])


async def _dashboard(hive: Daemon, path: str, form: dict[str, str], status: int) -> str:
    got, _, body = await http(hive, "POST", path, form, headers=AUTH)
    assert got == status, body
    return str(answer(body)["error"])


LONG = "x" * 4097

SAME = [
    # (host.sock request, manager socket request or None, dashboard (path, form, status) or None,
    #  hivectl argv or None, the error every one of them answers)
    (
        {"cmd": "kill", "name": "hm1nd"},
        {"cmd": "kill", "name": "hm1nd"},
        ("/kill/hm1nd", {}, 409),
        ["kill", "hm1nd"],
        "refusing to kill the manager",
    ),
    (
        {"cmd": "kill", "name": "Bad..Name"},
        {"cmd": "kill", "name": "Bad..Name"},
        ("/kill/Bad..Name", {}, 400),
        ["kill", "Bad..Name"],
        None,  # InvalidName's text, compared across surfaces
    ),
    (
        {"cmd": "request_spawn", "name": "hm1nd"},
        {"cmd": "request_spawn", "name": "hm1nd"},
        ("/request-spawn", {"name": "hm1nd"}, 409),
        ["request-spawn", "hm1nd"],
        '"hm1nd" is the manager: hive-c0re creates it itself; it cannot be spawned',
    ),
    (
        {"cmd": "request_spawn", "name": "system"},
        {"cmd": "request_spawn", "name": "system"},
        ("/request-spawn", {"name": "system"}, 400),
        ["request-spawn", "system"],
        None,
    ),
    (
        {"cmd": "request_spawn", "name": "newbie", "description": LONG},
        {"cmd": "request_spawn", "name": "newbie", "description": LONG},
        ("/request-spawn", {"name": "newbie", "description": LONG}, 400),
        ["request-spawn", "newbie", "--description", LONG],
        "description is longer than 4096 characters",
    ),
    (
        {"cmd": "destroy", "name": "manager"},
        None,
        ("/destroy/manager", {}, 409),
        ["destroy", "manager"],
        "refusing to destroy the manager",
    ),
    (
        {"cmd": "meta_update", "inputs": ["../etc", "a"]},
        None,
        ("/meta-update", {"inputs": "../etc,a"}, 400),
        ["meta-update", "../etc", "a"],
        "not a flake input name: '../etc'",
    ),
    (
        {"cmd": "meta_update", "inputs": [" "]},
        None,
        ("/meta-update", {"inputs": " , "}, 400),
        None,
        "name at least one meta input to update (e.g. hyperhive, agent-coder)",
    ),
    (
        {"cmd": "deny", "id": 1, "note": LONG},
        None,
        ("/deny/1", {"note": LONG}, 400),
        ["deny", "1", "--note", LONG],
        "note is longer than 4096 characters",
    ),
    # reminders and scheduled prompts (issue 18 items 2 and 3)
    (
        {"cmd": "cancel_reminder", "id": 999},
        None,
        ("/cancel-reminder/999", {}, 404),
        ["cancel-reminder", "999"],
        "no pending reminder 999",
    ),
    (
        {"cmd": "unschedule", "id": 999},
        None,
        ("/unschedule/999", {}, 404),
        ["unschedule", "999"],
        "no schedule 999",
    ),
    (
        {"cmd": "schedule", "to": ["alpha"], "body": "x", "every": "5x"},
        {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "x", "every": "5x"},
        ("/schedule", {"to": "alpha", "body": "x", "every": "5x"}, 400),
        ["schedule", "--to", "alpha", "--every", "5x", "x"],
        "not a duration: '5x'; write e.g. 90s, 5m, 1h30m, 2d or 1w (or plain seconds)",
    ),
    (
        {"cmd": "schedule", "to": ["alpha"], "body": "x"},
        {"cmd": "request_schedule_prompt", "to": ["alpha"], "body": "x"},
        ("/schedule", {"to": "alpha", "body": "x"}, 400),
        ["schedule", "--to", "alpha", "x"],
        "give exactly one of every (a duration: 1h, 30m) and at (a time), got neither",
    ),
]


@pytest.mark.parametrize(("host", "manager", "dashboard", "argv", "expected"), SAME, ids=lambda v: None)
async def test_the_same_bad_input_gets_the_same_error_on_every_surface(
    hive: Daemon,
    host: dict[str, Any],
    manager: dict[str, Any] | None,
    dashboard: tuple[str, dict[str, str], int] | None,
    argv: list[str] | None,
    expected: str | None,
) -> None:
    answers = {"host_sock": await _host(hive, host)}
    if manager is not None:
        answers["manager_sock"] = await _manager(hive, manager)
    if dashboard is not None:
        answers["dashboard"] = await _dashboard(hive, *dashboard)
    if argv is not None:
        result = await hivectl(*argv, sock=hive.config.host_socket_path)
        assert result.returncode == EXIT_REFUSED
        answers["hivectl"] = err(result).removeprefix("hivectl: ").removesuffix("\n")
    first = expected if expected is not None else answers["host_sock"]
    assert answers == dict.fromkeys(answers, first)
    assert await hive.coordinator.approvals() == []  # nothing happened anywhere


async def test_a_row_refuses_a_principal_it_does_not_list() -> None:
    class Facade:
        async def approve(self, approval_id: int, **kw: object) -> None:
            raise AssertionError("reached the façade")

    manager = bind.Context(Facade(), bind.MANAGER)
    with pytest.raises(Refused, match="approve is not for the manager"):
        await bind.call("approve", manager, {"id": 1})


def test_one_mapping_from_errors_to_answers() -> None:
    cases: list[tuple[BaseException, int]] = [
        (BadInput("x"), 400),
        (InvalidName("x"), 400),
        (BadMessage("x"), 400),
        (UnknownAgent("a"), 404),
        (UnknownApproval(7), 404),
        (Refused("x"), 409),
        (Busy("x"), 409),
        (NotAvailable("x"), 409),
        (HiveError("x"), 409),
    ]
    for exc, status in cases:
        got = answer_for(exc, "verb")
        assert (got.line, got.http_status, got.exit_code, got.internal) == (str(exc), status, 1, False)
    bug = answer_for(ExceptionGroup("g", [KeyError("k")]), "kill")
    assert (bug.line, bug.http_status, bug.internal) == (
        "internal error during kill: KeyError: 'k'",
        500,
        True,
    )


@pytest.mark.parametrize(
    ("prefix", "surface"),
    [("| `manager/mcp.sock` |", "manager_sock"), ("| `agents/<name>/mcp.sock` |", "agent_sock")],
)
def test_sockets_doc_lists_each_sockets_verbs(prefix: str, surface: spec.Surface) -> None:
    """docs/sockets.md's table of sockets names exactly the verbs the table puts on each."""
    doc = (Path(__file__).parent.parent / "docs" / "sockets.md").read_text()
    [line] = [ln for ln in doc.splitlines() if ln.startswith(prefix)]
    listed = line.rstrip(" |").rsplit("|", 1)[1].strip().strip("`").split()
    assert sorted(listed) == sorted(v.cmd for v in spec.on(surface))
