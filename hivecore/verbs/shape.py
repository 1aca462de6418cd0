"""The shapes of the verb table's rows (:mod:`hivecore.verbs.spec`): principals, surfaces, how a verb
shows on the dashboard (:class:`Route`, with the form-field readers) and in hivectl
(:class:`Command`). Stdlib only, like the table.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hivecore.errors import BadInput

Principal = Literal["operator", "manager", "agent"]
Surface = Literal["host_sock", "hivectl", "dashboard", "manager_sock", "agent_sock"]
SURFACES: tuple[Surface, ...] = ("host_sock", "hivectl", "dashboard", "manager_sock", "agent_sock")
PRINCIPAL_OF: Mapping[Surface, Principal] = {
    "host_sock": "operator",
    "hivectl": "operator",
    "dashboard": "operator",
    "manager_sock": "manager",
    "agent_sock": "agent",
}

TRUE_WORDS = frozenset({"1", "true", "on", "yes"})
_ID_RE = re.compile(r"[0-9]{1,18}")
MAX_FORM_FIELD = 1 << 20


# --- how a verb shows on a surface ---------------------------------------------------------------


Form = Mapping[str, str]
"""A dashboard request's fields: the route's path parameters and the form fields (first values)."""


@dataclass(frozen=True)
class Route:
    """A dashboard POST route. ``fields`` turns the form into the request record's fields (as JSON
    would carry them); a missing or malformed field raises :class:`BadInput` (400)."""

    path: str
    fields: Callable[[Form], dict[str, Any]]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call of a hivectl subcommand."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A hivectl subcommand: its name, arguments, the request fields it sends and what it prints
    on success (``None``: the answer is rendered as a table)."""

    name: str
    args: tuple[Arg, ...]
    fields: Callable[[argparse.Namespace], dict[str, Any]]
    done: Callable[[argparse.Namespace], str] | None = None
    help: str | None = None
    """Overrides the row's help (two subcommands sharing a verb, e.g. pause/resume)."""


@dataclass(frozen=True)
class Verb:
    """One row. ``key`` is unique; ``cmd`` is the wire name (two rows may share it when no surface
    shows both, e.g. host.sock's scoped ``start`` and the manager socket's one-agent ``start``)."""

    key: str
    cmd: str
    help: str
    principals: frozenset[Principal]
    surfaces: frozenset[Surface]
    route: Route | None = None
    commands: tuple[Command, ...] = ()
    stream: bool = False
    """The surface's server answers it itself, because the answer is tied to the connection
    (``subscribe_agent_status``'s stream, ``recv``'s lease and put-back, ``ack_turn``'s lease)."""
    harness_only: bool = False
    """Turn plumbing the agent harness drives (``recv``, ``ack_turn``): on the agent and manager
    sockets, never an MCP tool (``hive-mcp`` leaves it out), so the model cannot ack its own turn."""
    tool_help: str | None = None
    """The MCP tool's description when it should say more than :attr:`help` (limits, what to do
    instead); ``None``: :attr:`help`."""
    read_only: bool = False
    """The verb changes nothing (a query). Every other row is state-changing and each call of it is
    appended to the audit trail (:mod:`hivecore.audit`) by the server half, on every surface."""

    def __post_init__(self) -> None:
        for surface in self.surfaces:
            if PRINCIPAL_OF[surface] not in self.principals:
                raise ValueError(f"verb {self.key}: {surface} serves {PRINCIPAL_OF[surface]}, not listed")
        if ("dashboard" in self.surfaces) != (self.route is not None):
            raise ValueError(f"verb {self.key}: a dashboard row needs a route, and only it")
        if ("hivectl" in self.surfaces) != bool(self.commands):
            raise ValueError(f"verb {self.key}: a hivectl row needs a command, and only it")
        if self.harness_only and not self.surfaces <= {"manager_sock", "agent_sock"}:
            raise ValueError(f"verb {self.key}: only agent and manager socket rows can be harness-only")

    @property
    def description(self) -> str:
        """What a model reads about this verb as an MCP tool."""
        return self.tool_help or self.help


# --- form fields (dashboard) ---------------------------------------------------------------------


def _cut(text: str, limit: int = 40) -> str:
    return repr(text[:limit] + "…" if len(text) > limit else text)


def form_text(form: Form, name: str, *, required: bool = True, limit: int = MAX_FORM_FIELD) -> str | None:
    """A text field; blank counts as missing."""
    value = form.get(name)
    if value is None or not value.strip():
        if required:
            raise BadInput(f"missing field {name!r}")
        return None
    if len(value) > limit:
        raise BadInput(f"field {name!r} is longer than {limit} characters")
    return value


def form_id(form: Form, name: str = "id", what: str = "an approval id") -> int:
    text = form.get(name, "")
    if not _ID_RE.fullmatch(text):
        raise BadInput(f"{what} is a number, got {_cut(text)}")
    return int(text)


def form_flag(form: Form, name: str) -> bool:
    return (form.get(name) or "").strip().lower() in TRUE_WORDS


def form_list(form: Form, name: str) -> list[str]:
    """A comma-separated list (``inputs=a,b``); the request record checks the items."""
    text = form_text(form, name, required=False) or ""
    return [item for item in text.split(",")]
