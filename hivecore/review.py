"""What the operator reviews for an apply_commit, computed once from git's output (pure functions).

* :func:`transforms_in` — the ``.gitattributes`` lines that would make what nix builds differ from
  the reviewed blobs (``git archive`` applies them): ``export-subst`` (``$Format:%b$`` pulls the
  hidden commit body in), ``export-ignore``, ``filter``, ``ident``, ``working-tree-encoding``,
  ``text``/``eol``/``crlf``, and macro definitions (``[attr]``) that could stand for any of them.
* :func:`build_review` — the complete file list from ``git diff --numstat -z`` (never capped), each
  file's patch cut at ``per_file`` bytes and the whole at ``total`` bytes (truncation marked per
  file), binary files with their size.
"""

from __future__ import annotations

import re

from hivecore.models import ReviewFile

TRANSFORM_ATTRIBUTES = frozenset(
    {"export-subst", "export-ignore", "filter", "ident", "working-tree-encoding", "text", "eol", "crlf"}
)
PER_FILE_CAP = 32 * 1024
"""Bytes of one file's patch kept in the stored review."""
TOTAL_CAP = 256 * 1024
"""Bytes of patch kept for one approval (files past it show in the list, marked truncated)."""

_HEADER = re.compile(rb"^diff --git ", re.MULTILINE)


_BLANK = b" \t\r\n"
"""What git's attribute parser (``attr.c``) treats as blank: lines end at ``\\n`` only and words are
separated by these four bytes alone (never by ``\\f``, ``\\v``, U+2028 or other whitespace
Python's ``splitlines``/``split`` would cut at)."""
_WORDS = re.compile(rb"[^ \t\r\n]+")


def _after_pattern(line: bytes) -> bytes:
    """The part of an attributes line after its pattern, as git may read it. A pattern starting
    with ``"`` is C-quoted and ends at the first unescaped ``"``, but when git cannot unquote it
    (unterminated, a bad escape) it is a plain pattern ending at the first blank: both readings'
    rest is returned (a word too many only refuses more)."""
    match = _WORDS.match(line)
    plain = line[match.end() :] if match else b""
    if not line.startswith(b'"'):
        return plain
    i = 1
    while i < len(line):
        if line[i] == 0x5C:  # a backslash escapes the next byte
            i += 2
            continue
        if line[i] == 0x22:
            return line[i + 1 :] + b" " + plain
        i += 1
    return plain


def transforms_in(path: str, text: bytes) -> list[str]:
    """``"<path>:<line>: <attribute>"`` for every transform a ``.gitattributes`` blob sets or unsets,
    read the way git reads it (:data:`_BLANK`)."""
    found: list[str] = []
    for number, raw in enumerate(text.split(b"\n"), 1):
        line = raw.lstrip(_BLANK)
        if not line or line.startswith(b"#"):
            continue
        if line.startswith(b"[attr]"):
            macro = _WORDS.match(line)
            shown = macro.group().decode(errors="replace") if macro else "[attr]"
            found.append(f"{path}:{number}: a macro definition ({shown})")
            continue
        for word in _WORDS.findall(_after_pattern(line)):
            attr = word.lstrip(b"-!").split(b"=", 1)[0].decode(errors="replace")
            if attr in TRANSFORM_ATTRIBUTES:
                found.append(f"{path}:{number}: {attr}")
    return list(dict.fromkeys(found))


def parse_numstat(out: bytes) -> list[tuple[str, int | None, int | None]]:
    """``git diff --numstat -z --no-renames`` → ``(path, added, removed)``; binary: ``None, None``."""
    rows: list[tuple[str, int | None, int | None]] = []
    for record in out.split(b"\0"):
        if not record:
            continue
        added, removed, name = record.split(b"\t", 2)
        a = None if added == b"-" else int(added)
        r = None if removed == b"-" else int(removed)
        rows.append((name.decode(errors="replace"), a, r))
    return rows


def split_patch(patch: bytes) -> list[bytes]:
    """A unified diff cut into one chunk per file (each starting at its ``diff --git`` line)."""
    starts = [m.start() for m in _HEADER.finditer(patch)]
    if not starts:
        return []
    return [patch[s:e] for s, e in zip(starts, [*starts[1:], len(patch)], strict=True)]


def build_review(
    numstat: list[tuple[str, int | None, int | None]],
    patch: bytes,
    patch_complete: bool,
    sizes: dict[str, int],
    *,
    per_file: int = PER_FILE_CAP,
    total: int = TOTAL_CAP,
) -> tuple[list[ReviewFile], str]:
    """``(files, diff)``: every path of ``numstat`` in order; ``diff`` their patches, each cut at
    ``per_file`` bytes and all at ``total`` (a cut file is ``truncated`` and says so in the text).

    ``patch`` is git's patch for the same diff in the same order, possibly cut short
    (``patch_complete`` False): files whose chunk is missing or cut are ``truncated``.
    """
    chunks = split_patch(patch)
    if len(chunks) > len(numstat):
        chunks = chunks[: len(numstat)]
    files: list[ReviewFile] = []
    out: list[str] = []
    used = 0
    for i, (path, added, removed) in enumerate(numstat):
        chunk = chunks[i] if i < len(chunks) else None
        complete = chunk is not None and (patch_complete or i < len(chunks) - 1)
        binary = added is None
        truncated = not complete
        if chunk is not None:
            room = max(0, min(per_file, total - used))
            if len(chunk) > room:
                chunk, truncated = chunk[:room], True
            used += len(chunk)
            text = chunk.decode(errors="replace")
            if text and not text.endswith("\n"):
                text += "\n"
            out.append(text)
        if truncated:
            out.append(
                f"… diff of {path} truncated (review cap {per_file // 1024} KiB a file, "
                f"{total // 1024} KiB in all)\n"
            )
        files.append(
            ReviewFile(
                path=path,
                added=added,
                removed=removed,
                binary=binary,
                size=sizes.get(path),
                truncated=truncated,
            )
        )
    return files, "".join(out)
