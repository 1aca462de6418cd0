"""The checks a request record's fields declare (``field(metadata=check(...))``), run once per
request by :func:`hivecore.wire.request.checked` before the façade is called, on every surface.

Each check takes the decoded value and returns it (possibly normalised: stripped, de-duplicated) or
raises a :class:`~hivecore.errors.HiveError` whose text is the answer. Structure (types, required
fields) is the converter's job; a check sees a value of the declared type. What needs state (does
the agent exist? is the approval pending? is the input in the lock?) is the façade's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hivecore.agent_env import MAX_KEYS, check_assignments, check_key
from hivecore.credentials import BadSecret, check_secret
from hivecore.errors import BadInput, Refused
from hivecore.names import MANAGER_NAME, is_manager, validate_name

Check = Callable[[Any], Any]
CHECK = "hive_check"
"""The attrs metadata key holding a field's check."""

MAX_TEXT = 4096
"""Descriptions and notes (characters)."""
MAX_INPUTS = 64
_INPUT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]{0,199}")
MAX_APPROVAL_ID = 10**18


DOC = "hive_doc"
"""The attrs metadata key holding a field's one-line description (the MCP tool schema's
``description`` of that property)."""


def check(fn: Check, doc: str | None = None) -> dict[str, Any]:
    """The metadata that attaches ``fn`` (and, with ``doc``, a description) to a record field."""
    return {CHECK: fn} if doc is None else {CHECK: fn, DOC: doc}


def doc(text: str) -> dict[str, Any]:
    """The metadata of a field with a description and no check."""
    return {DOC: text}


def _cut(text: str, limit: int = 40) -> str:
    return repr(text[:limit] + "…" if len(text) > limit else text)


def agent_name(value: str) -> str:
    """A valid agent name (:func:`hivecore.names.validate_name`)."""
    return validate_name(value)


MAX_NAMES = 256
"""The most agent names one ``agent_status`` may list."""


def agent_names(value: list[str]) -> list[str]:
    """Valid agent names, de-duplicated (first appearance wins), at most :data:`MAX_NAMES`."""
    if len(value) > MAX_NAMES:
        raise BadInput(f"at most {MAX_NAMES} names at once")
    return list(dict.fromkeys(validate_name(n) for n in value))


def recipient(value: str) -> str:
    """A message recipient as typed (``coder``, ``@manager``, ``*``): surrounding blanks and one
    leading ``@`` dropped; the broker checks the rest."""
    return value.strip().removeprefix("@")


def not_manager(verb: str) -> Check:
    """A valid agent name that is not the manager: the manager is never ``verb``-ed this way."""

    def check(value: str) -> str:
        if is_manager(value):  # before the name rules: "manager" is also a reserved word
            raise Refused(f"refusing to {verb} the manager")
        return validate_name(value)

    return check


def new_agent(value: str) -> str:
    """A name a new agent may take: valid (so none of the daemon's reserved words), not the manager."""
    valid = validate_name(value)
    if valid == MANAGER_NAME:
        raise Refused(f'"{MANAGER_NAME}" is the manager: hive-c0re creates it itself; it cannot be spawned')
    return valid


def text(what: str, limit: int = MAX_TEXT) -> Check:
    """Optional free text of at most ``limit`` characters."""

    def check(value: str | None) -> str | None:
        if value is not None and len(value) > limit:
            raise BadInput(f"{what} is longer than {limit} characters")
        return value

    return check


def approval_id(value: int) -> int:
    if not 0 <= value < MAX_APPROVAL_ID:
        raise BadInput(f"an approval id is a number from 0 to {MAX_APPROVAL_ID - 1}, got {value}")
    return value


def message_id(value: int | None) -> int | None:
    """An optional message id (``in_reply_to``): a positive number."""
    if value is not None and value < 1:
        raise BadInput(f"in_reply_to is a message id (a positive number), got {value}")
    return value


def meta_inputs(value: list[str]) -> list[str]:
    """Flake input names (``hyperhive``, ``agent-<n>``…): stripped, blanks dropped, de-duplicated,
    1 to :data:`MAX_INPUTS` of them, each a plain input name."""
    names = list(dict.fromkeys(n.strip() for n in value if n.strip()))
    if not names:
        raise BadInput("name at least one meta input to update (e.g. hyperhive, agent-coder)")
    if len(names) > MAX_INPUTS:
        raise BadInput(f"at most {MAX_INPUTS} inputs at once")
    for n in names:
        if not _INPUT_RE.fullmatch(n) or ".." in n:
            raise BadInput(f"not a flake input name: {_cut(n)}")
    return names


def optional_meta_inputs(value: list[str] | None) -> list[str] | None:
    return None if value is None else meta_inputs(value)


def inbox_limit(value: int) -> int:
    """How many of the operator's newest messages ``inbox`` shows: at least 1, at most 500."""
    if value < 1:
        raise BadInput("limit must be at least 1")
    return min(value, 500)


def log_lines(limit: int) -> Check:
    def check(value: int) -> int:
        if value < 1:
            raise BadInput("lines must be at least 1")
        return min(value, limit)

    return check


MAX_LOG_OFFSET = 1 << 62


def log_offset(value: int | None) -> int | None:
    """A byte offset into an agent's log (as a previous ``get_logs`` answer gave it)."""
    if value is not None and not 0 <= value < MAX_LOG_OFFSET:
        raise BadInput(f"offset is a byte offset from 0 to {MAX_LOG_OFFSET - 1}, got {value}")
    return value


def utf8_text(what: str, limit: int) -> Check:
    """Text of at most ``limit`` UTF-8 bytes (lone surrogates counted as encoded)."""

    def check(value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise BadInput(f"{what} is {size} bytes; the limit is {limit}")
        return value

    return check


def optional_agent_name(value: str | None) -> str | None:
    return None if value is None else validate_name(value)


def secret(value: str) -> str:
    """A login key or token (:func:`hivecore.credentials.check_secret`); the error never repeats it."""
    try:
        return check_secret(value)
    except BadSecret as exc:
        raise BadInput(str(exc)) from None


def env_assignments(value: dict[str, str]) -> dict[str, str]:
    """Environment values to set (:func:`hivecore.agent_env.check_assignments`)."""
    return check_assignments(value)


def env_keys(value: list[str]) -> list[str]:
    """Environment keys to remove (de-duplicated; each :func:`hivecore.agent_env.check_key`)."""
    keys = list(dict.fromkeys(value))
    if len(keys) > MAX_KEYS:
        raise BadInput(f"at most {MAX_KEYS} keys at once")
    return [check_key(k) for k in keys]
