"""Terminal safety (issue 14, finding 12): hivectl shows agent-supplied text with every control
character made visible, so an agent cannot write the operator's clipboard (OSC 52), move the cursor
to rewrite printed rows, retitle the terminal, or reorder text with bidi overrides."""

from __future__ import annotations

import json
import re

import pytest

from hivecore.cli.terminal import escape, escape_block, escape_json
from hivecore.daemon import Daemon
from hivecore.names import MANAGER_NAME
from tests.conftest import call
from tests.test_hivectl import hivectl

ATTACKS = [
    ("OSC 52 clipboard write", "\x1b]52;c;cm0gLXJmIH4K\x07", "\\x1b]52;c;cm0gLXJmIH4K\\x07"),
    ("OSC with ST terminator", "\x1b]0;root@prod\x1b\\", "\\x1b]0;root@prod\\x1b\\"),
    ("CSI cursor up + erase line", "\x1b[2A\x1b[2Kapproved", "\\x1b[2A\\x1b[2Kapproved"),
    ("C1 CSI (one byte)", "\x9b2A", "\\x9b2A"),
    ("C1 OSC", "\x9d52;c;eA==\x9c", "\\x9d52;c;eA==\\x9c"),
    ("DCS", "\x1bPq#0\x1b\\", "\\x1bPq#0\\x1b\\"),
    ("carriage return overwrite", "evil\rgood", "evil\\x0dgood"),
    ("backspace overwrite", "rm\x08\x08ok", "rm\\x08\\x08ok"),
    ("bell", "\x07", "\\x07"),
    ("NUL", "a\x00b", "a\\x00b"),
    ("DEL", "a\x7fb", "a\\x7fb"),
    ("bidi override", "\u202eexe.txt", "\\u202eexe.txt"),
    ("bidi isolate", "\u2066x\u2069", "\\u2066x\\u2069"),
    ("line separator", "a\u2028b", "a\\u2028b"),
    ("newline in a one-line cell", "row\nfake row", "row\\x0afake row"),
    ("tab in a one-line cell", "a\tb", "a\\x09b"),
    ("plain text and unicode stay", "héllo wörld ✓ 漢字", "héllo wörld ✓ 漢字"),
]


@pytest.mark.parametrize(("what", "raw", "shown"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_escape_makes_every_control_visible(what: str, raw: str, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(shown) == shown  # idempotent: escaped text has nothing left to escape
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]", escape(raw))


def test_a_block_keeps_its_lines_and_tabs_only() -> None:
    body = "line one\n\tindented\r\n\x1b[31mred\x1b[0m\n"
    assert escape_block(body) == "line one\n\tindented\\x0d\n\\x1b[31mred\\x1b[0m\n"


def test_escape_json_keeps_the_value() -> None:
    text = "a\x9b2A\u202eb\x7f"
    line = json.dumps({"t": text}, ensure_ascii=False)
    safe = escape_json(line)
    assert json.loads(safe) == {"t": text}
    assert not re.search("[\x7f-\x9f\u202a-\u202e]", safe)


EVIL = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2A\x1b[2K\x9b1;1H\u202eok"
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


async def test_hivectl_shows_agent_text_escaped(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    # the manager's words: a spawn description; an agent's: its status line
    await hive.coordinator.spawn(MANAGER_NAME, source="internal")
    got = await call(
        hive.config.manager_socket_path, {"cmd": "request_spawn", "name": "newbie", "description": EVIL}
    )
    assert got["ok"], got
    await hive.coordinator.spawn("coder")
    status_file = hive.config.paths.agents / "coder" / "state" / "hyperhive-status"
    status_file.write_text(EVIL)
    await hive.views.rescan(["coder"])
    assert hive.views.rows()["coder"].status_text == EVIL
    for args in (["pending"], ["status"], ["status", "coder"], ["--json", "pending"], ["--json", "status"]):
        result = await hivectl(*args, sock=sock)
        assert result.returncode == 0, result
        text = result.stdout.decode()
        assert not UNSAFE.search(text), (args, text)
        assert "52;c;cm0gLXJmIH4K" in text  # still there, visibly
    # an error that quotes agent-supplied text is escaped too
    result = await hivectl("approve", "999999", sock=sock)
    assert result.returncode == 1
    assert not UNSAFE.search(result.stderr.decode())
