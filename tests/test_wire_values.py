"""Issue 16 item 5: every text and number field of every verb, on every surface, is checked where it
is decoded (:func:`hivecore.wire.converter.value_problem`): a lone surrogate, a NUL byte, an integer
past sqlite's 64 bits or a number that is not finite gets one error naming the field, and nothing
happens (no row, no file, no traceback)."""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from hivecore.container_view import STATUS_FILE
from hivecore.daemon import Daemon
from hivecore.errors import EXIT_REFUSED
from hivecore.verbs import bind, spec
from hivecore.verbs.shape import Form, Route, Surface
from hivecore.wire.converter import value_problem
from tests.conftest import AUTH
from tests.test_dashboard_actions import answer
from tests.test_hivectl import err, hivectl
from tests.waiting import eventually
from tests.web_client import http

SURROGATE = "\ud800"
NUL = "a\x00b"
BIG = 2**63
RANGE = f"is out of range (a number field holds at most {BIG - 1})"
PROBLEMS: dict[str, list[tuple[Any, str]]] = {
    "text": [
        (SURROGATE, "text contains a lone surrogate (U+D800 at character 0); send valid Unicode"),
        (NUL, "text contains a NUL byte (at character 1)"),
    ],
    "int": [(BIG, f"{BIG} {RANGE}"), (-BIG - 1, f"{-BIG - 1} {RANGE}")],
    "float": [(math.nan, "nan is not a finite number"), (math.inf, "inf is not a finite number")],
}


def _kind(tp: Any) -> str | None:
    if tp is str:
        return "text"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return None if not args else _kind(args[0])
    return _kind(args[0]) if len(args) == 1 else None


def _fields(cl: type, prefix: str = "") -> Iterator[tuple[str, list[str], str]]:
    """(field path as the error shows it, keys to set, value kind) of every text/number field."""
    attrs.resolve_types(cl)
    for a in attrs.fields(cl):
        tp = a.type
        if attrs.has(tp):
            yield from ((f"{a.name}.{p}", [a.name, *k], kind) for p, k, kind in _fields(tp))
            continue
        kind = _kind(tp)
        if kind is None:
            continue
        listed = typing.get_origin(tp) is list
        yield (f"{prefix}{a.name}" + ("[0]" if listed else ""), [a.name] + (["[]"] if listed else []), kind)


def _request(cmd: str, keys: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cmd": cmd}
    node = out
    for i, key in enumerate(keys):
        last = i == len(keys) - 1 or keys[i + 1] == "[]"
        if last:
            node[key] = [value] if i + 1 < len(keys) else value
            break
        node = node.setdefault(key, {})
    return out


SOCKET_SURFACES: tuple[Surface, ...] = ("host_sock", "manager_sock", "agent_sock")


def _cases(surface: Surface) -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for cl, key in bind.records(surface).items():
        for path, keys, kind in _fields(cl):
            for value, problem in PROBLEMS[kind]:
                out.append((f"{key}.{path}", _request(cl.CMD, keys, value), f"field {path!r}: {problem}"))
    return out


def test_the_table_covers_every_text_and_number_field() -> None:
    fields = {c[0].rsplit(".", 1)[0] for s in SOCKET_SURFACES for c in _cases(s)}
    for expected in (
        "send.body",
        "send.in_reply_to",
        "set_status.text",
        "request_spawn.description",
        "request_apply_commit.description",
        "deny.note",
        "deny.id",
        "approve.id",
        "start.scope.agent_names[0]",
        "recv.wait_seconds",
        "get_logs.lines",
    ):
        assert expected in fields or expected.rsplit(".", 1)[0] in fields, expected


def test_value_problem_names_nested_fields_and_keys() -> None:
    assert value_problem({"scope": {"agent_names": ["ok", SURROGATE]}}) == (
        f"field 'scope.agent_names[1]': {PROBLEMS['text'][0][1]}"
    )
    assert value_problem({"x\x00": 1}) == "a key of the request: text contains a NUL byte (at character 1)"
    assert value_problem({"a": 2**63 - 1, "b": -(2**63), "c": "ok\u2028", "d": 1.5, "e": None}) is None
    assert value_problem({"id": 10**40}) == f"field 'id': a 41-digit number {RANGE}"


# --- the real surfaces -----------------------------------------------------------------------------------


async def _line(path: Path, line: bytes) -> dict[str, Any]:
    with trio.fail_after(20):
        stream = await trio.open_unix_socket(os.fspath(path))
        async with stream:
            await stream.send_all(line + b"\n")
            data = b""
            while b"\n" not in data and (chunk := await stream.receive_some()):
                data += chunk
    out: dict[str, Any] = json.loads(data)
    return out


def _encode(request: dict[str, Any]) -> bytes:
    # json.dumps writes a lone surrogate as \ud800 and NaN as NaN: what a hostile client sends
    return json.dumps(request).encode()


async def test_every_field_on_every_socket_gets_one_error_naming_it(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    await eventually(lambda: hive.agent_sockets.socket("coder") is not None, what="coder's socket bound")
    sockets = {
        "host_sock": hive.config.host_socket_path,
        "manager_sock": hive.config.manager_socket_path,
        "agent_sock": hive.config.agent_socket_path("coder"),
    }
    state = hive.config.paths.agent_state("coder")
    checked = 0
    for surface, path in sockets.items():
        for case, request, expected in _cases(typing.cast(Surface, surface)):
            got = await _line(path, _encode(request))
            assert got["ok"] is False, (surface, case, got)
            assert got["error"] == f'bad "{request["cmd"]}" request: {expected}', (surface, case, got)
            checked += 1
    assert checked > 60
    assert await hive.coordinator.approvals() == []
    # set_status wrote nothing: no status file and no temp file of one (coder's own harness writes
    # its other files beside them meanwhile)
    assert [p.name for p in state.iterdir() if STATUS_FILE in p.name] == []
    # a bad cmd itself is named, not echoed
    got = await _line(sockets["host_sock"], _encode({"cmd": SURROGATE}))
    assert got["error"] == f"bad request: field 'cmd': {PROBLEMS['text'][0][1]}"


class _Recording(dict[str, str]):
    """A form whose every field holds its own name (``id``: a number) and that remembers which
    fields the route read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get(self, key: str, default: Any = None) -> str:
        self.read.append(key)
        return "7" if key == "id" else f"marker-{key}"

    def __getitem__(self, key: str) -> str:
        return self.get(key)


def _form_fields(route: Route) -> list[str]:
    """The form fields (and path parameters) a route passes on as text."""
    form = _Recording()
    out = json.dumps(route.fields(typing.cast(Form, form)))
    return [f for f in dict.fromkeys(form.read) if f"marker-{f}" in out]


async def test_every_dashboard_form_field_gets_one_error_naming_it(hive: Daemon) -> None:
    # a form that is not UTF-8 is refused before its fields are read (the test below), so of the
    # text problems only a NUL byte reaches a record
    checked = 0
    for verb in spec.on("dashboard"):
        route = verb.route
        assert route is not None
        params = [p.strip("<>") for p in route.path.split("/") if p.startswith("<")]
        for field in _form_fields(route):
            if field == "id":  # a path parameter of digits only (form_id): nothing else reaches a record
                continue
            form = {
                "name": "coder",
                "body": "hi",
                "to": "coder",
                "note": "n",
                "inputs": "hyperhive",
                "secret": "k",
            }
            if field in params:
                path = route.path.replace(f"<{field}>", "x%00y")
            else:
                path = route.path.replace("<name>", "coder").replace("<id>", "7")
                form[field] = NUL
            status, _, body = await http(hive, "POST", path, form, headers=AUTH)
            assert status == 400, (verb.key, field, status, body)
            error = answer(body)["error"]
            assert "text contains a NUL byte" in error, (verb.key, field, error)
            assert "field " in error, (verb.key, field, error)
            checked += 1
    assert checked >= 12
    assert await hive.coordinator.approvals() == []


async def test_a_dashboard_form_that_is_not_utf8_is_refused_not_garbled(hive: Daemon) -> None:
    # the form parser reads %ff as U+FFFD: an agent was "logged in" with a key nobody sent
    cases = [
        ("/agent-login/coder", b"secret=sk-%ff%fe", "form field 'secret' is not valid UTF-8"),
        ("/agent-login/coder", b"secret=sk-\xff", "form field 'secret' is not valid UTF-8"),
        ("/op-send", b"to=coder&body=caf%e9", "form field 'body' is not valid UTF-8"),
        ("/op-send", b"to=coder&b%ffdy=hi", "is not valid UTF-8"),
    ]
    headers = AUTH + "Content-Type: application/x-www-form-urlencoded\r\n"
    for path, raw, expected in cases:
        status, _, body = await http(hive, "POST", path, raw, headers=headers)
        assert status == 400, (path, raw, status, body)
        assert expected in answer(body)["error"], (path, raw, body)
    # UTF-8, percent-encoded or raw, still reads as sent (the name check quotes it back)
    for raw in (b"to=caf%C3%A9&body=hi", "to=café&body=hi".encode()):
        status, _, body = await http(hive, "POST", "/op-send", raw, headers=headers)
        assert status == 400, body
        assert "'café'" in answer(body)["error"] or '"café"' in answer(body)["error"], body
    assert await hive.coordinator.approvals() == []


async def test_hivectl_arguments_that_are_not_text_or_past_64_bits_get_the_same_errors(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    bad_utf8 = os.fsdecode(b"why \xff")  # a command-line argument that is not UTF-8
    cases = [
        (
            ("deny", "1", "--note", bad_utf8),
            "bad \"deny\" request: field 'note': text contains a lone surrogate (U+DCFF",
        ),
        (("request-spawn", "newbie", "--description", bad_utf8), "field 'description': text contains a lone"),
        (("approve", str(BIG)), f"bad \"approve\" request: field 'id': {BIG} {RANGE}"),
        (("deny", str(-BIG - 1)), f"field 'id': {-BIG - 1} {RANGE}"),
    ]
    for argv, expected in cases:
        result = await hivectl(*argv, sock=sock)
        assert result.returncode == EXIT_REFUSED, (argv, err(result))
        assert expected in err(result), (argv, err(result))
    assert await hive.coordinator.approvals() == []


async def test_a_field_named_twice_is_refused_on_every_socket(hive: Daemon) -> None:
    """JSON keeps the last of two equal keys: ``{"cmd":"list","cmd":"destroy"}`` destroyed an agent
    whose operator read a harmless line. A field named twice is one clear error, and nothing runs."""
    await hive.coordinator.spawn("coder")
    await eventually(lambda: hive.agent_sockets.socket("coder") is not None, what="coder's socket bound")
    lines = {
        hive.config.host_socket_path: b'{"cmd":"list","cmd":"destroy","name":"coder"}',
        hive.config.manager_socket_path: b'{"cmd":"whoami","cmd":"kill","name":"coder"}',
        hive.config.agent_socket_path("coder"): b'{"cmd":"send","to":"manager","body":"a","body":"b"}',
    }
    for path, line in lines.items():
        got = await _line(path, line)
        assert got["ok"] is False, (path, got)
        assert "names the field" in got["error"], got
        assert got["error"].endswith("twice; send each field once"), got
    assert "coder" in await hive.coordinator.agent_names()
