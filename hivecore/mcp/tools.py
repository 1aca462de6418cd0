"""The hive's MCP tools, generated from the verb table (pure: no I/O, no SDK).

A principal's tools are the rows of its socket's surface (``agent_sock`` for an agent,
``manager_sock`` for the manager; :mod:`hivecore.verbs.spec`) that are not
:attr:`~hivecore.verbs.shape.Verb.harness_only`. A tool is named by the row's wire ``cmd`` (so
Claude Code shows it as ``mcp__hyperhive__<cmd>``), described by
:attr:`~hivecore.verbs.shape.Verb.description` and takes the row's request record as its
arguments, as a JSON Schema derived from the record's attrs fields (:func:`json_schema`).

A call is one request line on the principal's socket (``{"cmd": <tool>, **arguments}``; the tool
name always wins over an argument named ``cmd``); the daemon checks it, exactly as for any other
client. Its answer becomes the tool result (:func:`result_of`): the answer's fields without the
envelope, or the daemon's ``error`` as a tool error.

Light on purpose (the verb table, the wire records; no trio, no daemon modules): ``hive-mcp`` must
answer the CLI's handshake fast.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from hivecore.sockets.framing import MAX_LINE
from hivecore.verbs import bind, spec
from hivecore.verbs.checks import DOC
from hivecore.wire.request import Request

Role = Literal["agent", "manager"]
SURFACE_OF_ROLE: Mapping[str, spec.Surface] = {"agent": "agent_sock", "manager": "manager_sock"}
ENVELOPE = frozenset({"version", "ok", "error"})


@attrs.frozen
class Tool:
    """One MCP tool: its name (the wire ``cmd``), description and input JSON Schema."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    record: type[Request]


class ToolError(Exception):
    """A call that never reached the daemon (unknown tool, arguments not a JSON object)."""


def records(surface: spec.Surface) -> dict[str, type[Request]]:
    """``cmd`` → request record for every request the socket of ``surface`` parses."""
    return {cl.CMD: cl for cl in bind.records(surface)}


def tools(role: str) -> tuple[Tool, ...]:
    """The tools of principal ``role`` (``agent`` or ``manager``), in verb-table order.

    :class:`ValueError` for another role, or a row whose cmd the socket does not parse (a table bug).
    """
    surface = SURFACE_OF_ROLE.get(role)
    if surface is None:
        raise ValueError(f"no MCP tools for role {role!r}; hive-mcp serves an agent or the manager socket")
    by_cmd = records(surface)
    out = []
    for verb in spec.on(surface):
        if verb.harness_only:
            continue
        record = by_cmd.get(verb.cmd)
        if record is None:
            raise ValueError(f"verb {verb.key}: {surface} parses no {verb.cmd!r} request")
        out.append(Tool(verb.cmd, verb.description, json_schema(record), record))
    return tuple(out)


# --- JSON Schema from attrs records ---------------------------------------------------------------


def json_schema(record: type[Any]) -> dict[str, Any]:
    """The JSON Schema (an ``object``) of an attrs request record: a property per field (with the
    field's ``description`` from its :data:`~hivecore.verbs.checks.DOC` metadata), ``required`` for
    the fields without a default, no other properties. Supports str, int, float, bool, lists,
    ``X | None``, ``Literal`` and nested attrs records; :class:`TypeError` for anything else."""
    hints = typing.get_type_hints(record)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(record):
        if not field.init or field.name.startswith("_"):
            continue
        prop = _schema_of(hints[field.name], f"{record.__name__}.{field.name}")
        if description := field.metadata.get(DOC):
            prop = {**prop, "description": description}
        properties[field.name] = prop
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


_SCALARS: Mapping[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_of(tp: Any, where: str) -> dict[str, Any]:
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _schema_of(rest[0], where)
            if set(inner) == {"type"} and isinstance(inner["type"], str):
                return {"type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
    elif origin in (list, tuple, frozenset, set) and args:
        return {"type": "array", "items": _schema_of(args[0], where)}
    elif origin is Literal:
        return {"enum": list(args)}
    elif attrs.has(tp):
        return json_schema(tp)
    raise TypeError(f"{where}: no JSON Schema for {tp!r}")


# --- calls ----------------------------------------------------------------------------------------


def request_line(tool: str, arguments: Mapping[str, Any] | None, known: Mapping[str, Tool]) -> bytes:
    """The socket request line calling ``tool`` with ``arguments`` (:class:`ToolError` for a tool this
    principal lacks, an argument its schema does not name, or arguments that cannot be sent: not
    JSON, or a line longer than the daemon reads, :data:`~hivecore.sockets.framing.MAX_LINE` bytes;
    sent anyway, the daemon would answer and close while the line is still being written, and the
    call would look lost)."""
    if tool not in known:
        raise ToolError(f"unknown tool {tool!r}; this hive offers: {', '.join(known)}")
    fields = dict(arguments or {})
    # the schema says additionalProperties: false; the socket ignores unknown fields (the
    # reference's wire does), so a misspelt argument is refused here rather than silently dropped
    takes = known[tool].input_schema["properties"]
    if unknown := [k for k in fields if k not in takes]:
        accepted = ", ".join(takes) or "no arguments"
        raise ToolError(f"{tool} takes no argument {unknown[0][:40]!r}; it takes: {accepted}")
    fields["cmd"] = tool
    try:
        line = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ToolError(f"arguments cannot be sent as JSON: {exc}") from None
    if len(line) > MAX_LINE:
        raise ToolError(
            f"the arguments are {len(line)} bytes as a request; the hive reads at most {MAX_LINE} "
            "(a message body at most 4096): write longer content to a file in your state dir and "
            "send its path"
        )
    return line + b"\n"


def result_of(answer_line: bytes) -> tuple[bool, str, dict[str, Any]]:
    """``(is_error, text, structured)`` for one daemon answer line: on success ``text`` is the answer's
    fields as compact JSON (``{}`` when the verb returns nothing) and ``structured`` those fields; on
    failure ``text`` is the daemon's ``error``."""
    try:
        answer = json.loads(answer_line)
    except ValueError:
        return True, "the daemon sent an unreadable answer", {}
    if not isinstance(answer, dict):
        return True, "the daemon sent an unreadable answer", {}
    if not answer.get("ok"):
        return True, str(answer.get("error") or "the daemon refused the request without a reason"), {}
    fields = {k: v for k, v in answer.items() if k not in ENVELOPE}
    return False, json.dumps(fields, ensure_ascii=False, separators=(",", ":")), fields
