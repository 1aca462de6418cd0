"""NixosRuntime against a recording stub.

``nixos-container``, ``systemctl`` and ``machinectl`` cannot run on this machine (no NixOS, no systemd
as PID 1), so each test puts a stub shell script under those names first on PATH. The stub appends its
argv to a log (one line per call) and answers from small files in the stub dir: ``containers`` (the
``list`` output; ``create`` appends to it and writes a ``.conf`` like nixos-container's), ``up`` (the
containers ``status`` reports as up), ``failed`` (units ``systemctl is-failed`` reports as failed) and
``fail-<verb>`` (makes that verb exit 1 with a message on stderr). The tests assert on the recorded
command lines.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs
import pytest

from hivecore.config import StatePaths
from hivecore.errors import RuntimeFailure
from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.runtime.nixos import NixosRuntime, logical_name, sanitize_conf

STUB = r"""#!/bin/sh
tool=$(basename "$0")
echo "$tool $*" >> "$STUB_DIR/calls"
if [ -e "$STUB_DIR/fail-$1" ]; then
    echo "$tool: $1 exploded" >&2
    exit 1
fi
case "$tool $1" in
    "nixos-container list") cat "$STUB_DIR/containers" 2>/dev/null ;;
    "nixos-container status")
        if grep -qx "$2" "$STUB_DIR/up" 2>/dev/null; then echo up; else echo down; fi ;;
    "nixos-container create")
        echo "$2" >> "$STUB_DIR/containers"
        conf="$STUB_CONF/$2.conf"
        printf 'PRIVATE_NETWORK=1\nHOST_ADDRESS=10.231.136.1\nLOCAL_ADDRESS=10.231.136.2\n' > "$conf"
        printf 'HOST_BRIDGE=br0\nEXTRA_NSPAWN_FLAGS="--bind=/x:/y"\nAUTO_START=0\n' >> "$conf" ;;
    "systemctl is-failed")
        if grep -qx "$2" "$STUB_DIR/failed" 2>/dev/null; then echo failed; exit 0; fi
        echo inactive; exit 1 ;;
esac
exit 0
"""


@attrs.frozen
class Stub:
    dir: Path
    conf: Path
    meta: Path

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def set(self, name: str, *lines: str) -> None:
        (self.dir / name).write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stub:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nixos-container", "systemctl", "machinectl"):
        script = bin_dir / tool
        script.write_text(STUB)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    s = Stub(dir=tmp_path / "stub", conf=tmp_path / "conf", meta=tmp_path / "meta")
    s.dir.mkdir()
    s.conf.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("STUB_DIR", str(s.dir))
    monkeypatch.setenv("STUB_CONF", str(s.conf))
    return s


@pytest.fixture
def runtime(stub: Stub, tmp_path: Path) -> NixosRuntime:
    return NixosRuntime(StatePaths(tmp_path / "state"), meta_dir=stub.meta, conf_dir=stub.conf)


async def test_list_maps_containers_and_ignores_foreign_ones(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set(
        "containers", "hm1nd", "h-alpha", "h-beta", "h-gamma", "hive-forge", "hive-gateway", "h-Bad_Name"
    )
    stub.set("up", "hm1nd", "h-alpha")
    stub.set("failed", "container@h-beta.service")
    assert await runtime.list() == {
        "alpha": AgentRuntimeState(name="alpha", running=True),
        "beta": AgentRuntimeState(name="beta", running=False, failed=True),
        "gamma": AgentRuntimeState(name="gamma", running=False),
        "hm1nd": AgentRuntimeState(name="hm1nd", running=True),
    }
    calls = stub.calls()
    assert calls[0] == "nixos-container list"
    assert sorted(calls[1:]) == sorted(
        [
            *(f"nixos-container status {c}" for c in ("hm1nd", "h-alpha", "h-beta", "h-gamma")),
            *(
                f"systemctl is-failed container@{c}.service"
                for c in ("hm1nd", "h-alpha", "h-beta", "h-gamma")
            ),
        ]
    )


async def test_list_names_probes_only_those(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "hm1nd", "h-alpha", "h-beta", "hive-forge")
    stub.set("up", "h-alpha", "h-beta")
    assert await runtime.list(["alpha", "ghost", "hive-forge"]) == {
        "alpha": AgentRuntimeState(name="alpha", running=True),
    }
    assert stub.calls() == [
        "nixos-container list",
        "nixos-container status h-alpha",
        "systemctl is-failed container@h-alpha.service",
    ]
    assert await runtime.list([]) == {}
    assert stub.calls()[3:] == ["nixos-container list"]


async def test_wait_exit_is_not_supported(runtime: NixosRuntime, stub: Stub) -> None:
    assert not runtime.can_wait_exit
    with pytest.raises(NotImplementedError):
        await runtime.wait_exit("alpha")
    assert stub.calls() == []


async def test_create_new_container_and_sanitize_conf(runtime: NixosRuntime, stub: Stub) -> None:
    await runtime.create(AgentSpec(name="alpha", command=()))
    assert stub.calls() == [
        "nixos-container list",
        f"nixos-container create h-alpha --flake {stub.meta}#alpha",
    ]
    assert (stub.conf / "h-alpha.conf").read_text() == (
        "PRIVATE_NETWORK=0\nHOST_ADDRESS=\nLOCAL_ADDRESS=\nHOST_BRIDGE=\n"
        'EXTRA_NSPAWN_FLAGS="--bind=/x:/y"\nAUTO_START=0\n'
    )


async def test_manager_is_unprefixed(runtime: NixosRuntime, stub: Stub) -> None:
    await runtime.create(AgentSpec(name="hm1nd", command=()))
    await runtime.start("hm1nd")
    assert stub.calls()[1:] == [
        f"nixos-container create hm1nd --flake {stub.meta}#hm1nd",
        "nixos-container start hm1nd",
    ]
    assert "PRIVATE_NETWORK=0" in (stub.conf / "hm1nd.conf").read_text()


async def test_create_existing_updates_with_flake_ref(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "h-alpha")
    conf = stub.conf / "h-alpha.conf"
    conf.write_text("HOST_ADDRESS6=fc00::1\nLOCAL_ADDRESS6=fc00::2\n")
    conf.chmod(0o640)
    await runtime.create(AgentSpec(name="alpha", command=(), flake_ref="/elsewhere#alpha"))
    assert stub.calls() == ["nixos-container list", "nixos-container update h-alpha --flake /elsewhere#alpha"]
    assert conf.read_text() == "HOST_ADDRESS6=\nLOCAL_ADDRESS6=\nPRIVATE_NETWORK=0\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640


async def test_start_stop_kill(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("up", "h-alpha")
    await runtime.start("alpha")
    await runtime.stop("alpha")
    await runtime.stop("alpha", graceful=False)
    await runtime.stop("beta", graceful=False)  # down: nothing to terminate
    assert stub.calls() == [
        "nixos-container start h-alpha",
        "nixos-container stop h-alpha",
        "nixos-container status h-alpha",
        "machinectl terminate h-alpha",
        "nixos-container status h-beta",
    ]


async def test_destroy(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "h-alpha")
    await runtime.destroy("alpha")
    await runtime.destroy("ghost")  # does not exist: no-op
    assert stub.calls() == [
        "nixos-container list",
        "nixos-container destroy h-alpha",
        "nixos-container list",
    ]


async def test_failure_carries_stderr(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("fail-start")
    with pytest.raises(
        RuntimeFailure, match=r"`nixos-container start h-alpha` failed \(exit 1\): .*start exploded"
    ):
        await runtime.start("alpha")
    stub.set("fail-update")
    with pytest.raises(RuntimeFailure, match="update exploded"):
        await runtime.update(AgentSpec(name="alpha", command=()))


async def test_failing_probe_raises_runtime_failure(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "h-alpha", "h-beta")
    stub.set("fail-status")
    with pytest.raises(RuntimeFailure, match="status exploded"):  # not an ExceptionGroup
        await runtime.list()


async def test_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rt = NixosRuntime(StatePaths(tmp_path), meta_dir=tmp_path)
    with pytest.raises(RuntimeFailure, match="cannot run nixos-container"):
        await rt.list()


def test_sanitize_conf() -> None:
    text = "# generated\nHOST_ADDRESS=1.2.3.4\nPRIVATE_NETWORK=1\nPRIVATE_NETWORK=1\nFLAGS=a=b\n"
    clean = sanitize_conf(text)
    assert clean == "# generated\nHOST_ADDRESS=\nPRIVATE_NETWORK=0\nFLAGS=a=b\n"
    assert sanitize_conf(clean) == clean
    assert sanitize_conf("") == "PRIVATE_NETWORK=0\n"


def test_logical_name() -> None:
    assert logical_name("hm1nd") == "hm1nd"
    assert logical_name("h-alpha") == "alpha"
    assert logical_name("hive-forge") is None
    assert logical_name("h-") is None
    assert logical_name("h-../x") is None
