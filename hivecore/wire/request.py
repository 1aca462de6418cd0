"""What every request record shares: the base class, the one line decoder (host.sock and the agent
and manager sockets), the form/record decoder, and :func:`checked`, which runs the checks a
record's fields declare (:mod:`hivecore.verbs.checks`).
"""

from __future__ import annotations

import json
import sys
from typing import Any, ClassVar, TypeVar

import attrs
import cattrs

from hivecore.errors import BadInput, HiveError
from hivecore.sockets.framing import MAX_LINE
from hivecore.verbs.checks import CHECK
from hivecore.wire.converter import converter, describe_error, json_type_name, value_problem

R = TypeVar("R")


@attrs.frozen(kw_only=True)
class Request:
    """A request record; ``CMD`` is its wire tag."""

    CMD: ClassVar[str] = ""


@attrs.frozen(kw_only=True)
class UnknownRequest(Request):
    """The tagged unions' fallback: an unknown verb decodes to this and is answered with an error."""

    cmd: str = ""


@attrs.frozen
class RequestError:
    """A request line that could not be decoded; ``message`` is the answer's ``error``."""

    message: str


class _DuplicateField(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a JSON object that names a field twice is refused (``json`` keeps the
    last, so ``{"cmd":"list","cmd":"destroy"}`` would run what a reader of the line did not see)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateField(key)
        out[key] = value
    return out


def parse_line(line: bytes, union: Any, *, example: str, known: tuple[str, ...] | None = None) -> Any:
    """Decode one request line (without its newline) against the tagged ``union`` (whose fallback is
    :class:`UnknownRequest`); never raises for bad input: every problem is one :class:`RequestError`.
    ``example`` is the verb the empty-line hint shows; ``known`` is listed after an unknown cmd."""
    if len(line) > MAX_LINE:
        return RequestError(f"request line exceeds {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RequestError(f"request is not valid UTF-8 (byte {exc.start})")
    if not text.strip():
        return RequestError(f'empty request; send one JSON object per line, e.g. {{"cmd":"{example}"}}')
    try:
        data = json.loads(text, object_pairs_hook=_object_without_duplicates)
    except _DuplicateField as exc:
        shown = json.dumps(exc.name[:64])
        return RequestError(f"request names the field {shown} twice; send each field once")
    except json.JSONDecodeError as exc:
        return RequestError(f"request is not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return RequestError("request is not valid JSON: nested too deeply")
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        return RequestError(
            f"request has a number with more than {sys.get_int_max_str_digits()} digits; no field takes one"
        )
    if not isinstance(data, dict):
        return RequestError(f"request must be a JSON object, got {json_type_name(data)}")
    if "cmd" not in data:
        return RequestError('request has no "cmd" field')
    cmd = data["cmd"]
    if not isinstance(cmd, str):
        return RequestError(f'field "cmd" must be a string, got {json_type_name(cmd)}')
    if (problem := value_problem(data)) is not None:
        shown = "" if value_problem(cmd) is not None else f' "{cmd[:64]}"'
        return RequestError(f"bad{shown} request: {problem}")
    try:
        request = converter.structure(data, union)
    except Exception as exc:  # cattrs validation errors and anything a hook raised
        return RequestError(f'bad "{cmd}" request: {describe_error(exc)}')
    if isinstance(request, UnknownRequest):
        if known is None:
            return RequestError(f"unknown cmd {json.dumps(cmd, ensure_ascii=False)}")
        shown = json.dumps(cmd[:64], ensure_ascii=False)
        return RequestError(f"unknown cmd {shown}; this socket answers: {', '.join(known)}")
    return request


def structure(data: dict[str, Any], cl: type[R]) -> R:
    """``data`` (fields as JSON would carry them) as a ``cl`` record; :class:`BadInput` if it does
    not fit (the same sentence a socket's ``bad "<cmd>" request`` carries), or holds a value no
    field may (:func:`~hivecore.wire.converter.value_problem`)."""
    if (problem := value_problem(data)) is not None:
        raise BadInput(f'bad "{getattr(cl, "CMD", cl.__name__)}" request: {problem}')
    try:
        return converter.structure(data, cl)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise BadInput(f'bad "{getattr(cl, "CMD", cl.__name__)}" request: {describe_error(exc)}') from None


def checked(request: R) -> R:
    """``request`` after the checks its fields declare (in field order; the first failing check's
    :class:`~hivecore.errors.HiveError` is raised), with normalised values."""
    changes: dict[str, Any] = {}
    for a in attrs.fields(type(request)):  # type: ignore[arg-type]  # R is an attrs record
        fn = a.metadata.get(CHECK)
        if fn is None:
            continue
        value = getattr(request, a.name)
        new = fn(value)
        if new is not value:
            changes[a.name] = new
    return attrs.evolve(request, **changes) if changes else request  # type: ignore[misc]


__all__ = ["HiveError", "Request", "RequestError", "UnknownRequest", "checked", "parse_line", "structure"]
