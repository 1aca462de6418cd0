"""nixos-module.nix: real `nix-instantiate --parse`, flags the daemon accepts, options documented.

A full NixOS evaluation needs nixpkgs, which this machine does not have offline; parsing with the
real nix plus checking the unit's command line against the real argument parser catches the
mistakes that matter (syntax, a flag the daemon does not know, an undocumented option). The module
is evaluated against a stand-in lib, and its ExecStart parsed the way systemd parses it, in
test_nixos_module_eval.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hivecore.cli.daemon import build_parser

ROOT = Path(__file__).resolve().parent.parent
MODULE = (ROOT / "nixos-module.nix").read_text()


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix is not installed (make test installs it)"
)
def test_module_parses_with_real_nix() -> None:
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(ROOT / "nixos-module.nix")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_flag_the_unit_passes_is_accepted_by_serve() -> None:
    flags = re.findall(r'"(--[a-z-]+)"', MODULE)
    assert "--runtime" in flags
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr,index]
    known = {opt for action in serve._actions for opt in action.option_strings}
    assert set(flags) <= known, set(flags) - known


def test_every_option_is_documented_and_every_documented_option_exists() -> None:
    block = MODULE[MODULE.index("options.services.hive-c0re") :]
    declared = set(re.findall(r"^    ([a-zA-Z]+) = mk(?:Option|EnableOption)", block, re.MULTILINE))
    documented = set(
        re.findall(r"`services\.hive-c0re\.([a-zA-Z]+)`", (ROOT / "docs" / "nixos.md").read_text())
    )
    assert declared == documented
    assert "enable" in declared
