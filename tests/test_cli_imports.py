"""The CLIs start fast: ``hivectl`` and ``hive-c0re --help`` / ``hive-c0re VERB`` import no server piece."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEAVY_PACKAGES = {"quart", "quart_trio", "hypercorn", "trio", "attr", "attrs", "cattrs", "sqlite3"}
"""The web stack, the event loop, and what the wire records and their converter are built from."""
SERVER_MODULES = {
    "hivecore.daemon",
    "hivecore.coordinator",
    "hivecore.config",
    "hivecore.wire.host",
    "hivecore.wire.converter",
    "hivecore.sockets.server",
    "hivecore.sockets.host",
    "hivecore.unix_listener",
}


def imported_modules(*argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Every module ``python -m argv…`` imported, from ``-X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HIVE_HOST_SOCK": "/nonexistent/host.sock"},
        check=False,
    )
    modules = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return modules, result


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [
        (["hivecore.cli.hivectl", "--help"], 0),
        (["hivecore.cli.hivectl", "status"], 2),  # a real request (to a socket that is not there)
        (["hivecore.cli.hivectl", "purge", "--help"], 0),
        (["hivecore.cli.daemon", "--help"], 0),
        (["hivecore.cli.daemon", "serve", "--help"], 0),
        (["hivecore.cli.daemon", "status"], 2),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_clis_import_no_server_pieces(argv: list[str], exit_code: int) -> None:
    modules, result = imported_modules(*argv)
    assert result.returncode == exit_code, result.stderr[-2000:]
    assert "argparse" in modules  # the measurement works: it sees what was imported
    if argv[-1] == "status":
        assert "hivecore.sockets.client" in modules
        assert "no socket at /nonexistent/host.sock" in result.stderr
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_PACKAGES or m in SERVER_MODULES)
    assert heavy == []
