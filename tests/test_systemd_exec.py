"""tests/systemd_exec.py, systemd's Exec-line rules, checked against the real systemd where possible.

``systemd-analyze verify`` loads a unit offline (no systemd as PID 1 needed) and reports the decoded
path of an ExecStart= that it cannot execute: "Command <path> is not executable" (or "Executable
name contains special characters: <path>"). With the word under test spliced after a fixed
``/nonexistent/x`` prefix, that message is systemd's own reading of the word (unquoting, C escapes,
specifiers), which :func:`systemd_decode` extracts. ``$``-substitution happens only when a command
runs and is not covered by this oracle; it is tested against the documented rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd_exec import ExecSyntaxError, exec_argv, split_exec_line, substitute_env

PREFIX = "/nonexistent/x"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def systemd_decode(tmp_path: Path, raw_word: str) -> str:
    """How systemd reads ``raw_word`` (a quoted word, ``"…"``), before any ``$``-substitution."""
    assert raw_word.startswith('"'), raw_word
    unit = tmp_path / "oracle" / "probe.service"
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(f'[Service]\nExecStart="{PREFIX}{raw_word[1:]}\n', encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, check=False, timeout=60
    )
    out = (result.stdout + result.stderr).decode("utf-8", errors="surrogateescape")
    m = re.fullmatch(
        r"probe\.service: Command (.*) is not executable: No such file or directory\n", out, re.DOTALL
    ) or re.match(
        r".*?: Executable name contains special characters: (.*)\nprobe\.service: Unit configuration",
        out,
        re.DOTALL,
    )
    assert m is not None, f"unexpected systemd-analyze output for {raw_word!r}: {out!r}"
    decoded = m.group(1)
    assert decoded.startswith(PREFIX), decoded
    return decoded.removeprefix(PREFIX)


ORACLE_CASES = [
    r'"plain"',
    r'"two words"',
    r'"100%% done"',
    r'"%%h %%n %%%%"',
    r'"$$HOME ${x} $$"',
    r'"quote \" backslash \\ apostrophe \' end"',
    r'"\n\t\b\f"',  # (not \r: systemd's log line shows it as \n, the oracle cannot tell them apart)
    r'"100%"',  # a stray % at the end stays
    r'"\u00e9\u2014\U0001F41D"',
    r'"raw ça 🐝 ünï"',
    r'"mid"dle" q"uote',
    r'"single ' "'" "inside" "'" ' double"',
    r'"\s space"',
    r'"\101\x42"',
]


@needs_systemd
@pytest.mark.parametrize("raw", ORACLE_CASES)
def test_parser_matches_systemd_word_by_word(tmp_path: Path, raw: str) -> None:
    assert [systemd_decode(tmp_path, raw)] == split_exec_line(raw)


@needs_systemd
@pytest.mark.parametrize("line", ['/bin/true "unbalanced', "/bin/true %Q", '/bin/true "a%Qb"', r"/bin/\q"])
def test_lines_systemd_refuses_are_refused(tmp_path: Path, line: str) -> None:
    unit = tmp_path / "bad.service"
    unit.write_text(f"[Service]\nExecStart={line}\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, check=False, timeout=60
    )
    assert result.returncode != 0
    with pytest.raises(ExecSyntaxError):
        split_exec_line(line)


def test_split() -> None:
    assert split_exec_line('  /bin/x  a\t"b c"  \'d e\' f"g h"i ""  ') == [
        "/bin/x",
        "a",
        "b c",
        "d e",
        "fg hi",
        "",
    ]
    assert split_exec_line(r'/bin/x "\"" \\ "\x41"') == ["/bin/x", '"', "\\", "A"]
    assert split_exec_line(r"/bin/x a\qb") == ["/bin/x", r"a\qb"]  # unknown escape: kept (not argv[0])
    with pytest.raises(ExecSyntaxError, match="invalid escape"):
        split_exec_line(r"/bin/\q")
    # NUL is refused by cunescape_one, so (relaxed, not argv[0]) the escape is kept as written
    assert split_exec_line(r'/bin/x "\u0000" \r') == ["/bin/x", r"\u0000", "\r"]
    assert split_exec_line('/bin/x "100%" %%%') == ["/bin/x", "100%", "%%"]  # a stray % at the end stays
    with pytest.raises(ExecSyntaxError, match="';'"):
        split_exec_line("/bin/x ; /bin/y")
    assert split_exec_line('/bin/x ";"') == ["/bin/x", ";"]
    with pytest.raises(ExecSyntaxError, match="prefix"):
        split_exec_line("-/bin/x")


def test_env_substitution() -> None:
    env = {"HOME": "/root", "WORDS": "a  b c", "x": "X"}
    assert substitute_env(
        ["$WORDS", "$NOPE", "${WORDS}", "$$HOME", "a$HOME", "${x}y", "$$", "$", "${"], env
    ) == [
        "a",
        "b",
        "c",
        "a  b c",
        "$HOME",
        "a$HOME",
        "Xy",
        "$",
        "${",
    ]
    assert exec_argv('/bin/x "$$HOME" "100%%" "${x}"', env) == ["/bin/x", "$HOME", "100%", "X"]
