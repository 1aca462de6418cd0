"""nixos-module.nix evaluated by the real nix, and its ExecStart parsed the way systemd parses it.

A NixOS evaluation needs nixpkgs, which cannot be fetched here (no network). The module only uses a
few functions of ``lib`` and ``utils``, so :data:`STANDIN` provides them (options become plain
records; ``utils.escapeSystemdExecArg(s)`` is copied from nixpkgs' ``nixos/lib/utils.nix``), applies
the module to a ``config`` built from the module's own option defaults plus the test's settings
(type-checked), and returns the ``hive-c0re`` service. Then:

- the ExecStart line goes through :mod:`tests.systemd_exec` (systemd's Exec-line rules: unquoting,
  C escapes, ``%%``, ``$$``) and the resulting argv must equal the intended one byte for byte,
  including pronouns full of ``%``, ``$HOME``, ``${x}``, quotes, backslashes and non-ASCII text;
- that argv goes through the real ``serve`` parser: the daemon gets exactly the configured values;
- with systemd-analyze installed, real systemd checks the line too: a unit with it verifies cleanly,
  and each of its words, decoded by systemd itself (see ``test_systemd_exec.py``), matches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hivecore.cli.daemon import build_parser, config_from_args
from tests.systemd_exec import exec_argv, split_exec_line
from tests.test_systemd_exec import systemd_decode

ROOT = Path(__file__).resolve().parent.parent
NIX = shutil.which("nix-instantiate")
pytestmark = pytest.mark.skipif(NIX is None, reason="nix is not installed (make test installs it)")

STANDIN = r"""
# A stand-in for the parts of nixpkgs' lib, NixOS' utils and pkgs that nixos-module.nix uses.
{ modulePath, settingsFile, packagePath }:
let
  inherit (builtins) all attrNames concatStringsSep filter isAttrs isBool isInt isList isString
    mapAttrs match replaceStrings toJSON;
  mkType = name: check: { inherit name check; };
  types = {
    str = mkType "string" isString;
    bool = mkType "boolean" isBool;
    port = mkType "port" (v: isInt v && v >= 0 && v <= 65535);
    package = mkType "package" (v: isString v || isAttrs v);
    ints.positive = mkType "positive integer" (v: isInt v && v > 0);
    ints.unsigned = mkType "unsigned integer" (v: isInt v && v >= 0);
    listOf = t: mkType "list of ${t.name}" (v: isList v && all t.check v);
    nullOr = t: mkType "null or ${t.name}" (v: v == null || t.check v);
    strMatching = re: mkType "string matching ${toJSON re}" (v: isString v && match re v != null);
  };
  lib = rec {
    inherit types;
    mkOption = option: option;
    mkEnableOption = name: { type = types.bool; default = false; description = "Enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    optionals = condition: list: if condition then list else [ ];
    literalMD = text: { _type = "literalMD"; inherit text; };
    cleanSource = src: src;
    concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  };
  # nixpkgs nixos/lib/utils.nix (isPath/isString/... spelled builtins.*)
  utils = rec {
    escapeSystemdExecArg = arg:
      let
        s = if builtins.isPath arg then "${arg}"
          else if isString arg then arg
          else if isInt arg || builtins.isFloat arg then toString arg
          else throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
      in
        replaceStrings [ "%" "$" ] [ "%%" "$$" ] (toJSON s);
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };
  pkgs = {
    git = "/nix/store/00000000000000000000000000000000-git";
    nixos-container = "/nix/store/00000000000000000000000000000000-nixos-container";
    python3Packages = throw "the default package is not built by this test";
  };
  settings = builtins.fromJSON (builtins.readFile settingsFile);
  module = import modulePath {
    inherit lib pkgs utils;
    config = {
      services.hive-c0re = cfg;
      nix.package = "/nix/store/00000000000000000000000000000000-nix";
    };
  };
  declared = module.options.services.hive-c0re;
  value = name: option:
    let v = if name == "package" then packagePath else settings.${name} or option.default;
    in if option.type.check v then v
       else throw "services.hive-c0re.${name}: ${toJSON v} is not a ${option.type.name}";
  cfg = mapAttrs value declared;
  unknown = filter (name: !(declared ? ${name})) (attrNames settings);
in
  if unknown != [ ] then throw "unknown options: ${toJSON unknown}"
  else {
    enabled = module.config.condition;
    service = module.config.content.systemd.services.hive-c0re;
  }
"""

NASTY_PRONOUNS = [
    "she/her",
    "100% $HOME ${x} %h %n %% $$ $",
    "$HOME",
    "${x}",
    'it\'s "they" \\ back\\slash \\n \\x41 \\u00e9',
    "ça/él — 🐝 ünïcödé",
    ";",
    "",
    "tab\there\nnewline",
    "'single' `tick` #hash *glob",
]


def evaluate(tmp_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The module's ``enabled`` and ``service`` (``systemd.services.hive-c0re``) for ``settings``."""
    standin = tmp_path / "standin.nix"
    standin.write_text(STANDIN)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings))
    package = tmp_path / "pkg"
    result = subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(standin),
            "--argstr",
            "modulePath",
            str(ROOT / "nixos-module.nix"),
            "--argstr",
            "settingsFile",
            str(settings_file),
            "--argstr",
            "packagePath",
            str(package),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NIX_REMOTE": "", "NIX_STATE_DIR": str(tmp_path / "nix-state")},
    )
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    evaluated: dict[str, Any] = json.loads(result.stdout)
    return evaluated


def intended_argv(package: Path, settings: dict[str, Any]) -> list[str]:
    """What the unit must run for ``settings`` (the module's defaults where a setting is absent)."""
    s = {
        "stateDir": "/var/lib/hyperhive",
        "dashboardHost": "127.0.0.1",
        "dashboardPort": 7000,
        "adminGroup": "hive-admin",
        "operatorPronouns": "she/her",
        "crashWatchInterval": 10,
        "agentMemoryMax": "4G",
        "agentCpuQuota": "200%",
        "retentionDays": 180,
        "hyperhiveFlake": None,
        "domain": None,
        "agentEnvFile": None,
        "extraArgs": [],
        "notifyUrls": [],
        "notifyOn": None,
        "notifyUrlFile": None,
        **settings,
    }
    argv = [
        f"{package}/bin/hive-c0re",
        "serve",
        "--state-dir", s["stateDir"],
        "--runtime", "nixos",
        "--dashboard-host", s["dashboardHost"],
        "--dashboard-port", str(s["dashboardPort"]),
        "--runtime-dir", "/run/hyperhive",
        "--host-socket", "/run/hyperhive/host.sock",
        "--admin-group", s["adminGroup"],
        "--operator-pronouns", s["operatorPronouns"],
        "--crash-watch-interval", str(s["crashWatchInterval"]),
        "--agent-memory-max", s["agentMemoryMax"],
        "--agent-cpu-quota", s["agentCpuQuota"],
    ]  # fmt: skip
    argv += ["--alarm-manager-unread", "15", "--alarm-unacked", "30", "--crash-loop", "3/10"]
    argv += ["--alarm-approval-age", "24"]
    argv += ["--retention-days", str(s["retentionDays"])]
    for url in s["notifyUrls"]:
        argv += ["--notify-url", url]
    if s["notifyUrlFile"] is not None:
        argv += ["--notify-url-file", s["notifyUrlFile"]]
    if s["notifyOn"] is not None:
        argv += ["--notify-on", ",".join(s["notifyOn"])]
    if s["hyperhiveFlake"] is not None:
        argv += ["--hyperhive-flake", s["hyperhiveFlake"]]
    if s["domain"] is not None:
        argv += ["--domain", s["domain"]]
    if s["agentEnvFile"] is not None:
        argv += ["--agent-env-file", s["agentEnvFile"]]
    extra: list[str] = s["extraArgs"]
    return argv + extra


def test_defaults(tmp_path: Path) -> None:
    evaluated = evaluate(tmp_path, {})
    assert evaluated["enabled"] is False
    config = evaluated["service"]["serviceConfig"]
    assert exec_argv(config["ExecStart"]) == intended_argv(tmp_path / "pkg", {})
    assert config["RuntimeDirectory"] == "hyperhive"
    assert config["RuntimeDirectoryPreserve"] == "yes"
    assert config["KillMode"] == "process"
    assert (config["Type"], config["NotifyAccess"], config["WatchdogSec"]) == ("notify", "main", 60)


@pytest.mark.parametrize("pronouns", NASTY_PRONOUNS)
def test_exec_start_reaches_the_daemon_intact(tmp_path: Path, pronouns: str) -> None:
    settings: dict[str, Any] = {
        "enable": True,
        "operatorPronouns": pronouns,
        "stateDir": "/srv/hive state/%i",
        "domain": "hive.example.org",
        "hyperhiveFlake": "git+https://example.org/hyperhive?ref=main&rev=${x}",
        "agentMemoryMax": "1.5G",
        "agentCpuQuota": "12.5%",
        "extraArgs": ["--log-level", "DEBUG"],
        "notifyUrls": ["ntfy+https://ntfy.example.org/hive-%i", "https://hooks.example.org/x?token=$HOME"],
        "notifyOn": ["alarm_raised", "container_crash"],
    }
    evaluated = evaluate(tmp_path, settings)
    assert evaluated["enabled"] is True
    exec_start = evaluated["service"]["serviceConfig"]["ExecStart"]
    # systemd's parsing, with an environment that would betray any unescaped variable
    argv = exec_argv(exec_start, {"HOME": "/root", "x": "EXPANDED"})
    assert argv == intended_argv(tmp_path / "pkg", settings)
    # and the daemon's own parser gets every value back unchanged
    config = config_from_args(build_parser().parse_args(argv[1:]))
    assert config.operator_pronouns == pronouns
    assert str(config.state_dir) == "/srv/hive state/%i"
    assert config.hyperhive_flake == settings["hyperhiveFlake"]
    assert (config.agent_memory_max, config.agent_cpu_quota) == ("1.5G", "12.5%")
    assert config.runtime_dir == Path("/run/hyperhive")
    assert config.runtime == "nixos"
    assert config.notify_urls == tuple(settings["notifyUrls"])
    assert config.notify_on == ("alarm_raised", "container_crash")


def test_agent_env_file_reaches_the_daemon(tmp_path: Path) -> None:
    env = tmp_path / "agents env %i"
    env.write_text("ANTHROPIC_BASE_URL=http://gateway\n")
    env.chmod(0o600)
    settings = {"enable": True, "agentEnvFile": str(env)}
    argv = exec_argv(evaluate(tmp_path, settings)["service"]["serviceConfig"]["ExecStart"])
    assert argv == intended_argv(tmp_path / "pkg", settings)
    config = config_from_args(build_parser().parse_args(argv[1:]))
    assert config.agent_env_file == env


def test_swarm_options_reach_the_daemon(tmp_path: Path) -> None:
    creds = tmp_path / "hive %i.creds"
    creds.write_text("lab:secret\n")  # a user:password line (docs/swarm.md)
    creds.chmod(0o600)  # --swarm-creds is a secret file: 0600 or refused
    settings = {"enable": True, "swarmUrl": "tls://nats.example.org:4222", "hiveName": "lab"}
    settings["swarmCredsFile"] = str(creds)
    settings["swarmOperatorHives"] = ["ops", "lab2"]
    argv = exec_argv(evaluate(tmp_path, settings)["service"]["serviceConfig"]["ExecStart"])
    tail = ["--swarm", "tls://nats.example.org:4222", "--hive-name", "lab", "--swarm-creds", str(creds)]
    tail += ["--swarm-operator-hives", "ops,lab2"]
    assert argv == intended_argv(tmp_path / "pkg", {}) + tail
    config = config_from_args(build_parser().parse_args(argv[1:]))
    assert config.swarm is not None
    assert (config.swarm.url, config.swarm.hive_name, config.swarm.creds) == (
        settings["swarmUrl"],
        "lab",
        creds,
    )
    assert config.swarm.operator_hives == ("ops", "lab2")


def test_shell_quoting_is_not_enough_for_systemd() -> None:
    """Why the module uses escapeSystemdExecArgs rather than escapeShellArgs: single quotes stop a
    shell from expanding, not systemd."""
    assert exec_argv("/bin/x '$HOME'", {"HOME": "/root"}) == ["/bin/x", "/root"]
    assert exec_argv("/bin/x 'a ${x} b'", {"x": "E"}) == ["/bin/x", "a E b"]
    with pytest.raises(ValueError, match="specifier %h"):
        exec_argv("/bin/x '%h'")


@pytest.mark.parametrize(
    ("option", "value"),
    [("agentMemoryMax", "4X"), ("agentMemoryMax", "4 G"), ("agentCpuQuota", "-1%"), ("agentCpuQuota", "2")],
)
def test_junk_limits_fail_evaluation(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(AssertionError, match=f"services.hive-c0re.{option}: .* is not a string matching"):
        evaluate(tmp_path, {option: value})


def raw_words(exec_start: str) -> list[str]:
    """The words of the rendered line as written: each one a JSON string, one space apart."""
    words = re.findall(r'"(?:[^"\\]|\\.)*"', exec_start)
    assert " ".join(words) == exec_start, "ExecStart is not JSON-quoted words separated by spaces"
    return words


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_real_systemd_reads_the_exec_start_the_same_way(tmp_path: Path) -> None:
    pronouns = '100% $HOME ${x} it\'s "they" \\ ça 🐝\ttab'
    settings = {"enable": True, "operatorPronouns": pronouns, "stateDir": "/srv/%i"}
    exec_start = evaluate(tmp_path, settings)["service"]["serviceConfig"]["ExecStart"]
    # 1. the whole line loads without a complaint (binary present: verify checks it is executable)
    binary = tmp_path / "pkg" / "bin" / "hive-c0re"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    unit = tmp_path / "units" / "hive-c0re.service"
    unit.parent.mkdir()
    unit.write_text(f"[Service]\nExecStart={exec_start}\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # 2. every word as systemd itself decodes it (before $-substitution) is what our parser says
    words = split_exec_line(exec_start)
    assert [systemd_decode(tmp_path, raw) for raw in raw_words(exec_start)] == words
    assert exec_argv(exec_start)[words.index("--operator-pronouns") + 1] == pronouns
