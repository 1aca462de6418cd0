"""Terminal safety: text that came from an agent is made visible before it reaches a terminal.

An agent controls its status line, descriptions, message bodies and the diffs it proposes. Printed
raw, an escape sequence in them drives the operator's terminal: OSC 52 writes the clipboard, cursor
moves rewrite rows already printed (a ``pending`` row that says something else), a title sequence
lies about where you are. Everything hivectl prints that is not its own words goes through
:func:`escape` (one line) or :func:`escape_block` (a multi-line body or diff).

What is escaped, each shown as a visible ``\\xNN`` / ``\\uNNNN``:

* C0 controls U+0000-U+001F (ESC, BEL, BS, CR, … and TAB and LF in one-line text) and DEL U+007F,
  so no CSI (``ESC [``), OSC (``ESC ]``), DCS or bare carriage return can start;
* C1 controls U+0080-U+009F (``\\x9b`` is a one-character CSI, ``\\x9d`` an OSC on some terminals);
* bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the line/paragraph
  separators U+2028/U+2029, which reorder or break what the operator reads.

Pure and idempotent: escaping escaped text changes nothing.
"""

from __future__ import annotations

import re

_BIDI = "\u202a-\u202e\u2066-\u2069\u2028\u2029"
_UNSAFE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_BLOCK = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
"""As :data:`_UNSAFE_LINE` but keeping LF and TAB (a body's own lines and indentation)."""
_UNSAFE_JSON = re.compile(f"[\x7f-\x9f{_BIDI}]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw (it already escapes C0)."""


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` for one line of a terminal: every control character shown as ``\\xNN``/``\\uNNNN``."""
    return _UNSAFE_LINE.sub(_visible, text)


def escape_block(text: str) -> str:
    """``text`` for a multi-line body or diff: as :func:`escape`, but LF and TAB are kept."""
    return _UNSAFE_BLOCK.sub(_visible, text)


def escape_json(line: str) -> str:
    """A JSON text whose string values are safe to print: DEL, C1 and bidi characters become
    ``\\u00NN``/``\\uNNNN`` escapes (the same JSON value; a JSON encoder already escapes C0)."""
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
