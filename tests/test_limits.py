"""``--agent-memory-max`` / ``--agent-cpu-quota``: what is accepted, what is refused and how it reads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hivecore.cli.daemon import build_parser, config_from_args
from hivecore.daemon import make_runtime
from hivecore.limits import InvalidLimit, validate_cpu_quota, validate_memory_max
from hivecore.runtime.nixos import NixosRuntime, render_resources

MEMORY_OK = ["4G", "512M", "1.5G", "1T", "2048K", "1073741824", "50%", "100%", "infinity"]
CPU_OK = ["200%", "50%", "12.5%", "0.25%", "1600%"]
STRICTER_THAN_SYSTEMD = {"4 G", ""}
"""Refused here, taken by systemd: it skips the blank, and an empty value resets to no limit (say
``infinity`` for that); so are e.g. ``1P`` and ``1E``, which no agent needs.
Every other refused value is refused by systemd too (checked below with systemd-analyze)."""


@pytest.mark.parametrize("value", MEMORY_OK)
def test_memory_max_accepted(value: str) -> None:
    assert validate_memory_max(value) == value


MEMORY_BAD = [
    ("4X", "is not a size"),
    ("4 G", "is not a size"),
    ("4g", "is not a size"),
    ("-1G", "is not a size"),
    ("", "is not a size"),
    ("4G\nCPUQuota=1%", "is not a size"),  # no injecting lines into the drop-in
    ("0", "must be above zero"),
    ("0.0G", "must be above zero"),
    ("0%", "above 0% and at most 100%"),
    ("150%", "above 0% and at most 100%"),
    ("Infinity", "is not a size"),
]


@pytest.mark.parametrize(("value", "message"), MEMORY_BAD)
def test_memory_max_refused(value: str, message: str) -> None:
    with pytest.raises(InvalidLimit, match=message):
        validate_memory_max(value)


@pytest.mark.parametrize("value", CPU_OK)
def test_cpu_quota_accepted(value: str) -> None:
    assert validate_cpu_quota(value) == value


CPU_BAD = [
    ("-1%", "is not a percentage"),
    ("200", "is not a percentage"),
    ("2", "is not a percentage"),
    ("0.125%", "is not a percentage"),
    ("%", "is not a percentage"),
    ("200%%", "is not a percentage"),
    ("", "is not a percentage"),
    ("0%", "must be above 0%"),
    ("0.00%", "must be above 0%"),
]


@pytest.mark.parametrize(("value", "message"), CPU_BAD)
def test_cpu_quota_refused(value: str, message: str) -> None:
    with pytest.raises(InvalidLimit, match=message):
        validate_cpu_quota(value)


def test_serve_flags_defaults_and_wiring(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path), "--runtime", "nixos"])
    config = config_from_args(args)
    assert (config.agent_memory_max, config.agent_cpu_quota) == ("4G", "200%")
    args = build_parser().parse_args(
        [
            "serve",
            "--state-dir",
            str(tmp_path / "s"),
            "--runtime",
            "nixos",
            "--runtime-dir",
            str(tmp_path / "r"),
            "--agent-memory-max",
            "512M",
            "--agent-cpu-quota",
            "50%",
        ]
    )
    config = config_from_args(args)
    assert (config.agent_memory_max, config.agent_cpu_quota) == ("512M", "50%")
    runtime = make_runtime(config)
    assert isinstance(runtime, NixosRuntime)
    assert "MemoryMax=512M\nCPUQuota=50%\n" in runtime._resources
    assert runtime._runtime_dir == tmp_path / "r"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--agent-memory-max", "4X", "argument --agent-memory-max: memory limit '4X' is not a size"),
        ("--agent-cpu-quota", "-1%", "argument --agent-cpu-quota: CPU quota '-1%' is not a percentage"),
        ("--agent-cpu-quota", "0%", "argument --agent-cpu-quota: CPU quota '0%' must be above 0%"),
    ],
)
def test_serve_refuses_junk_limits(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", f"{flag}={value}"])  # `=`: "-1%" is not read as an option
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    """The help text has a literal % (argparse %-formats help strings)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 200%: two CPUs' worth)" in out
    assert "'infinity' (default 4G)" in out


def systemd_complaints(tmp_path: Path, memory_max: str, cpu_quota: str) -> str:
    """What ``systemd-analyze verify`` says about a unit with our drop-in (empty: it took both values)."""
    unit = tmp_path / "units" / "probe.service"
    (tmp_path / "units" / "probe.service.d").mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "units" / "probe.service.d" / "hive-resources.conf").write_text(
        render_resources(memory_max, cpu_quota)
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    return result.stdout + result.stderr


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


@needs_systemd
@pytest.mark.parametrize(("memory_max", "cpu_quota"), list(zip(MEMORY_OK, CPU_OK * 2, strict=False)))
def test_systemd_takes_what_we_accept(tmp_path: Path, memory_max: str, cpu_quota: str) -> None:
    assert systemd_complaints(tmp_path, memory_max, cpu_quota) == ""


@needs_systemd
@pytest.mark.parametrize(
    "value", [v for v, _ in MEMORY_BAD if v not in STRICTER_THAN_SYSTEMD and "\n" not in v]
)
def test_systemd_refuses_the_memory_limits_we_refuse(tmp_path: Path, value: str) -> None:
    assert "emory limit" in systemd_complaints(tmp_path, value, "200%")


@needs_systemd
@pytest.mark.parametrize("value", [v for v, _ in CPU_BAD if v not in STRICTER_THAN_SYSTEMD])
def test_systemd_refuses_the_cpu_quotas_we_refuse(tmp_path: Path, value: str) -> None:
    assert "Invalid CPU quota" in systemd_complaints(tmp_path, "4G", value)
