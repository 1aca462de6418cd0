"""How systemd turns an ``ExecStart=`` value into the argv it executes (the subset the module needs).

systemd (v252, what Debian ships; the rules have been stable for years) does it in two stages:

1. **When the unit is loaded** (``config_parse_exec`` in ``src/core/load-fragment.c``): the value is
   split into words by ``extract_first_word(EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE [| _RELAX])``:

   - words are separated by unquoted whitespace;
   - ``"…"`` and ``'…'`` quote (anywhere in a word; the quotes are removed), and an unterminated
     quote is an error;
   - a backslash starts a C escape, inside quotes or not: ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\" \\'``,
     ``\\s`` (space), ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``, ``\\NNN`` (octal); a NUL is refused. An
     unknown escape is an error in the first word and kept literally (backslash included) in the
     others (``_RELAX``);
   - an unquoted ``;`` word separates commands (not supported here: :class:`ExecSyntaxError`);
   - the first word may start with the prefixes ``-@:+!`` (not supported here either);

   then every word goes through specifier expansion (``unit_full_printf``): ``%%`` is ``%`` and
   ``%X`` is replaced by what specifier X stands for (``%h`` the home dir, ``%n`` the unit name …), an
   unknown one is an error, and a stray ``%`` at the very end of a word stays.
   :func:`split_exec_line` implements this stage and refuses every specifier other than ``%%``: an
   argument meant literally must never contain one.

2. **When the command is executed** (``replace_env_argv`` in ``src/basic/env-util.c``): a word that
   starts with ``$`` (not ``${``/``$$``) is read as ``$NAME`` and replaced by that variable's value
   split at whitespace (zero or more words: none if it is unset);
   in any other word ``${NAME}`` is replaced by the value (one word), ``$$`` by ``$``, and a ``$``
   followed by anything else stays as it is. :func:`substitute_env` implements this stage.

Stage 1 is cross-checked against the real systemd in ``tests/test_systemd_exec.py`` (systemd-analyze
verify reports the decoded executable path of a unit, which makes it an oracle for one word); stage 2
follows the documented rules (systemd.service(5), "Command lines").
"""

from __future__ import annotations

from collections.abc import Mapping

WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "s": " ",
}


class ExecSyntaxError(ValueError):
    """systemd would refuse the line (or it uses a feature this parser does not implement)."""


def _cunescape_one(text: str, i: int) -> tuple[str, int] | None:
    """The character the escape at ``text[i:]`` (just after the backslash) stands for and the index
    after it; ``None`` if systemd does not know the escape. Like ``cunescape_one``, NUL is refused."""
    if i >= len(text):
        return None
    c = text[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    widths = {"x": 2, "u": 4, "U": 8}
    if c in widths:
        digits = text[i + 1 : i + 1 + widths[c]]
        if len(digits) != widths[c] or not all(d in "0123456789abcdefABCDEF" for d in digits):
            return None
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return None
        if c == "x" and code >= 0x80:
            # \xHH is one *byte*; systemd would splice raw bytes. Not produced by JSON quoting.
            raise ExecSyntaxError(f"\\x{digits}: raw non-ASCII bytes are not supported by this parser")
        return chr(code), i + 1 + widths[c]
    if c in "01234567":
        digits = text[i : i + 3]
        if len(digits) != 3 or not all(d in "01234567" for d in digits):
            return None
        code = int(digits, 8)
        if code == 0 or code >= 0x80:
            return None if code == 0 else _raise_octal(digits)
        return chr(code), i + 3
    return None


def _raise_octal(digits: str) -> tuple[str, int]:
    raise ExecSyntaxError(f"\\{digits}: raw non-ASCII bytes are not supported by this parser")


def _extract_words(value: str) -> list[str]:
    """Stage 1 without the specifiers: the unquoted, unescaped words."""
    words: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in WHITESPACE:
            i += 1
        if i >= n:
            return words
        if value[i] == ";" and (i + 1 == n or value[i + 1] in WHITESPACE):
            raise ExecSyntaxError("an unquoted ';' separates commands: not supported here")
        first = not words
        if first and value[i] in "-@:+!":
            raise ExecSyntaxError(f"executable prefix {value[i]!r}: not supported here")
        word: list[str] = []
        quote: str | None = None
        while i < n:
            c = value[i]
            if c == "\\":
                decoded = _cunescape_one(value, i + 1)
                if decoded is None:
                    if first or i + 1 >= n:
                        raise ExecSyntaxError(f"invalid escape at offset {i} of {value!r}")
                    word.append("\\" + value[i + 1])  # EXTRACT_CUNESCAPE_RELAX: kept as written
                    i += 2
                    continue
                ch, i = decoded
                word.append(ch)
                continue
            if quote is not None:
                if c == quote:
                    quote = None
                else:
                    word.append(c)
            elif c in "'\"":
                quote = c
            elif c in WHITESPACE:
                break
            else:
                word.append(c)
            i += 1
        if quote is not None:
            raise ExecSyntaxError(f"unbalanced quoting in {value!r}")
        words.append("".join(word))


def expand_specifiers(word: str) -> str:
    """``%%`` is ``%``, a trailing stray ``%`` stays; any other specifier is refused (systemd would
    substitute something, or refuse the line)."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i] == "%" and i + 1 == len(word):
            out.append("%")  # "If string ended with a stray %, also end with %" (specifier_printf)
            i += 1
        elif word[i] == "%":
            if word[i + 1 : i + 2] != "%":
                raise ExecSyntaxError(f"specifier %{word[i + 1 : i + 2]} in {word!r} would be expanded")
            out.append("%")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def split_exec_line(value: str) -> list[str]:
    """Stage 1: the words systemd stores for ``ExecStart=value`` (argv before environment expansion)."""
    return [expand_specifiers(word) for word in _extract_words(value)]


def _replace_env(word: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i] != "$":
            out.append(word[i])
            i += 1
        elif word[i + 1 : i + 2] == "$":
            out.append("$")
            i += 2
        elif word[i + 1 : i + 2] == "{" and (end := word.find("}", i + 2)) != -1:
            out.append(env.get(word[i + 2 : end], ""))
            i = end + 1
        else:
            out.append("$")  # a lone $ (or an unterminated ${) stays as written
            i += 1
    return "".join(out)


def substitute_env(words: list[str], env: Mapping[str, str]) -> list[str]:
    """Stage 2: the argv systemd executes, with the unit's environment ``env``."""
    argv: list[str] = []
    for word in words:
        if word.startswith("$") and word[1:2] not in ("{", "$"):
            # the whole rest is the variable's name; unset (or a name like "FOO-x") drops the word.
            # (systemd also unquotes the value while splitting it; values here have no quotes)
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(_replace_env(word, env))
    return argv


def exec_argv(value: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The argv systemd executes for ``ExecStart=value`` (both stages)."""
    return substitute_env(split_exec_line(value), env or {})
