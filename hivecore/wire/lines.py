"""JSON lines without the converter (standard library only): what a fast client needs.

``hivectl`` and ``hive-c0re VERB`` import this instead of :mod:`hivecore.wire.host`, which builds
the server's cattrs decoders; :func:`hivecore.wire.host.encode_request` and ``encode_response``
produce their lines with :func:`json_line` too, so there is one line format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

HOST_SOCK_VERSION = 1
"""Bumped only for breaking changes (a field removed, renamed or retyped); new optional fields need none."""


def json_line(body: object) -> bytes:
    """Compact JSON (no spaces, so lines are byte-stable) plus ``\\n``; UTF-8 text as is.

    A lone surrogate (``"\\ud800"`` echoed from a request, or a command-line argument that was not
    UTF-8) cannot be UTF-8 encoded: then the whole line is written ASCII-escaped, which is the same
    JSON value.
    """
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def request_line(cmd: str, fields: Mapping[str, Any]) -> bytes:
    """One host.sock request line, ``cmd`` first (as the original's clients write it)."""
    return json_line({"cmd": cmd, **fields})
