"""The one cattrs converter: the only place wire shapes are turned into JSON-able dicts and back.

Rules every wire record follows:

* a field whose default is ``None`` is **omitted** from the output while it is ``None``;
  every other field is always present, in definition order;
* unknown keys on input are ignored, and missing fields with defaults take their default — so a
  payload written by an older (or newer) version still decodes;
* validation errors become one readable sentence via :func:`describe_error`.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn
from cattrs.strategies import configure_tagged_union

T = TypeVar("T")


def _omit_none_factory(cl: type[Any], conv: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    # cattrs' own omit_if_default moves omittable fields to the end; the wire contract pins field
    # order, so unstructure everything in order and drop the None-defaulted keys afterwards.
    base = make_dict_unstructure_fn(cl, conv)
    omittable = tuple(a.name for a in attrs.fields(cl) if a.default is None)
    if not omittable:
        return base

    def unstructure(obj: Any) -> dict[str, Any]:
        out = base(obj)
        for key in omittable:
            if out[key] is None:
                del out[key]
        return out

    return unstructure


def _strict(kind: type[T]) -> Callable[[Any, Any], T]:
    # cattrs' defaults coerce (int("5"), bool("false") is True); a wire field must already have the
    # right JSON type. bool is not accepted where an int is expected.
    def structure(value: Any, _: Any) -> T:
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value  # type: ignore[return-value]  # checked just above

    return structure


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_list(kind: Any) -> bool:
    """``list[X]``, or ``list[X] | None`` (an optional list is a JSON array too when given)."""
    if typing.get_origin(kind) is list:
        return True
    return any(typing.get_origin(k) is list for k in typing.get_args(kind)) and type(None) in typing.get_args(
        kind
    )


def _strict_attrs_factory(cl: type[Any], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    # cattrs alone would accept "scope": "x" as an empty record and "agent_names": "abc" as
    # ["a", "b", "c"]; a wire record must come from a JSON object and its lists from JSON arrays.
    attrs.resolve_types(cl)
    base = make_dict_structure_fn(cl, conv)
    lists = [a for a in attrs.fields(cl) if _is_list(a.type)]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {json_type_name(value)}")
        for a in lists:
            if a.name in value and value[a.name] is not None and not isinstance(value[a.name], list):
                err = TypeError(f"expected an array, got {json_type_name(value[a.name])}")
                err.__notes__ = [AttributeValidationNote(f"@ attribute {a.name}", a.name, a.type)]
                raise ClassValidationError(f"While structuring {cl.__name__}", [err], cl)
        return base(value, cl)

    return structure


MAX_WIRE_INT = 2**63 - 1
"""The largest integer a request may carry (sqlite's INTEGER is a signed 64-bit number)."""


def value_problem(data: Any, where: str = "") -> str | None:
    """The first thing in a decoded request (``json.loads`` output) that no field may hold, as one
    sentence naming the field (``field 'body': …``), or ``None``.

    Refused everywhere, before any record is built: text with a NUL byte or a lone surrogate (it
    cannot be stored, encoded or passed on), integers outside sqlite's signed 64 bits, and numbers
    that are not finite (``NaN``, ``Infinity``). Object keys are checked like text."""
    if isinstance(data, str):
        return _text_problem(data, where)
    if isinstance(data, bool) or data is None:
        return None
    if isinstance(data, int):
        if not -MAX_WIRE_INT - 1 <= data <= MAX_WIRE_INT:
            limit = f"a number field holds at most {MAX_WIRE_INT}"
            return f"{_field(where)}: {_cut_number(data)} is out of range ({limit})"
        return None
    if isinstance(data, float):
        return None if math.isfinite(data) else f"{_field(where)}: {data} is not a finite number"
    if isinstance(data, list):
        for i, item in enumerate(data):
            if (problem := value_problem(item, f"{where}[{i}]")) is not None:
                return problem
        return None
    if isinstance(data, dict):
        for key, item in data.items():
            at = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and (problem := _text_problem(key, where, key=True)) is not None:
                return problem
            if (problem := value_problem(item, at)) is not None:
                return problem
    return None


def _field(where: str) -> str:
    return f"field {where!r}" if where else "the request"


def _cut_number(value: int) -> str:
    digits = str(value)
    return digits if len(digits) <= 24 else f"a {len(digits)}-digit number"


def _text_problem(text: str, where: str, *, key: bool = False) -> str | None:
    what = f"a key of {_field(where)}" if key else _field(where)
    if "\x00" in text:
        return f"{what}: text contains a NUL byte (at character {text.index(chr(0))})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{what}: text contains a lone surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}); send valid Unicode"
        )
    return None


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_unstructure_hook_factory(attrs.has, _omit_none_factory)
    conv.register_structure_hook_factory(attrs.has, _strict_attrs_factory)
    for kind in (bool, int, str, float):
        conv.register_structure_hook(kind, _strict(kind))
    return conv


converter = make_converter()


def configure_tagged(union: Any, *, tag_attr: str, tag_name: str, default: type | None = None) -> None:
    """Decode/encode ``union`` as a tagged union: key ``tag_name`` holds each class's ``tag_attr``.

    With ``default``, a payload whose tag names no member decodes as ``default`` (so callers can
    answer "unknown cmd" instead of cattrs raising a bare KeyError).
    """

    def tag(cl: type) -> str:
        return str(getattr(cl, tag_attr))

    configure_tagged_union(
        union,
        converter,
        tag_generator=tag,
        tag_name=tag_name,
        default=attrs.NOTHING if default is None else default,
    )


def describe_error(exc: BaseException) -> str:
    """One line saying what was wrong with a decoded payload (``$.id: expected int …``)."""
    if isinstance(exc, cattrs.BaseValidationError):
        parts = cattrs.transform_error(exc, path="$", format_exception=_format_leaf)
        return "; ".join(_rephrase(p) for p in parts)
    return str(exc)


def _format_leaf(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    name = getattr(kind, "__name__", None) or str(kind)
    return f"expected {name}"


def _rephrase(part: str) -> str:
    # "expected int @ $.id" -> "field 'id': expected int"
    message, _, where = part.rpartition(" @ ")
    where = where.removeprefix("$").removeprefix(".")
    return f"field {where!r}: {message}" if where else message


def dumps(obj: object, unstructure_as: Any = None) -> str:
    """Compact JSON of a wire record (no spaces, so lines are byte-stable); ``unstructure_as`` a
    tagged union adds the tag."""
    return json.dumps(
        converter.unstructure(obj, unstructure_as=unstructure_as), separators=(",", ":"), ensure_ascii=False
    )


def loads(data: str | bytes, cl: type[T]) -> T:
    return converter.structure(json.loads(data), cl)


def configure_renamed(cl: type[Any], **renames: str) -> None:
    """Encode/decode ``cl`` with some fields under other wire names (``from_="from"``), keeping the
    omit-``None`` and strict-object rules; call before ``cl`` joins a tagged union."""
    from cattrs.gen import override

    overrides = {field: override(rename=wire) for field, wire in renames.items()}
    base_unstructure = make_dict_unstructure_fn(cl, converter, **overrides)  # type: ignore[arg-type]
    omittable = tuple(renames.get(a.name, a.name) for a in attrs.fields(cl) if a.default is None)

    def unstructure(obj: Any) -> dict[str, Any]:
        out = base_unstructure(obj)
        for key in omittable:
            if out[key] is None:
                del out[key]
        return out

    attrs.resolve_types(cl)
    base_structure = make_dict_structure_fn(cl, converter, **overrides)  # type: ignore[arg-type]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {json_type_name(value)}")
        return base_structure(value, cl)

    converter.register_unstructure_hook(cl, unstructure)
    converter.register_structure_hook(cl, structure)
