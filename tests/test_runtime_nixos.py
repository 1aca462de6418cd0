"""NixosRuntime against a recording stub.

``nixos-container``, ``systemctl`` and ``machinectl`` cannot run on this machine (no NixOS, no systemd
as PID 1), so each test puts a stub shell script under those names first on PATH. The stub appends its
argv to a log (one line per call) and answers from small files in the stub dir: ``containers`` (the
``list`` output; ``create`` appends to it and writes a ``.conf`` like nixos-container's), ``up`` (the
containers ``status`` reports as up), ``failed`` (units ``systemctl is-failed`` reports as failed) and
``fail-<verb>`` (makes that verb exit 1 with a message on stderr). The tests assert on the recorded
command lines, and on the files the runtime writes: the container ``.conf`` (``conf_dir``, a temporary
stand-in for ``/etc/nixos-containers``) and the resources drop-in (``unit_dir``, a temporary stand-in for
``/run/systemd/system``); neither real directory is ever touched.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from hivecore.agent_env import AgentEnv
from hivecore.config import StatePaths
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.limits import DEFAULT_CPU_QUOTA, DEFAULT_MEMORY_MAX
from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.runtime.nixos import NixosRuntime, container_binds, logical_name, render_conf, sanitize_conf

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
    units: Path
    state: Path
    run: Path

    @property
    def profiles(self) -> Path:
        return self.dir.parent / "profiles"

    def profile(self, container: str) -> str:
        return os.path.realpath(self.profiles / container / "system")

    def dropin(self, container: str) -> Path:
        return self.units / f"container@{container}.service.d" / "hive-resources.conf"

    def flags(self, name: str) -> str:
        """The EXTRA_NSPAWN_FLAGS a sub-agent's .conf must hold."""
        return (
            f"--bind={self.state}/agents/{name}/state:/agents/{name}/state "
            f"--bind={self.state}/agents/{name}/claude:/root/.claude "
            f"--bind={self.run}/agents/{name}:/run/hive "
            f"--bind-ro={self.state}/applied/{name}:/agents/{name}/applied.git "
            f"--bind-ro={self.state}/agent-env.d/{name}:/run/hive-env"
        )

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
    s = Stub(
        dir=tmp_path / "stub",
        conf=tmp_path / "conf",
        meta=tmp_path / "meta",
        units=tmp_path / "units",
        state=tmp_path / "state",
        run=tmp_path / "run-dir",
    )
    s.dir.mkdir()
    s.conf.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("STUB_DIR", str(s.dir))
    monkeypatch.setenv("STUB_CONF", str(s.conf))
    return s


def make_runtime(
    stub: Stub, *, memory_max: str = DEFAULT_MEMORY_MAX, cpu_quota: str = DEFAULT_CPU_QUOTA
) -> NixosRuntime:
    return NixosRuntime(
        StatePaths(stub.state),
        meta_dir=stub.meta,
        runtime_dir=stub.run,
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=stub.profiles,
        memory_max=memory_max,
        cpu_quota=cpu_quota,
    )


def _a_store_path() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "hive-system-stand-in")
        path.write_text("a stand-in for a built container system\n")
        out = subprocess.run(["nix-store", "--add", str(path)], capture_output=True, check=True, timeout=60)
    return out.stdout.decode().strip()


SYSTEM = _a_store_path()
"""A real, valid store path standing for a built container system: ``nix-env --set`` (real) accepts
it. The daemon builds the real one confined (``tests/test_nixos_build_confined.py``)."""
MISSING_SYSTEM = "/nix/store/00000000000000000000000000000000-hive-system-alpha"


def spec(name: str, system: str = SYSTEM) -> AgentSpec:
    return AgentSpec(name=name, command=(), system_path=system)


@pytest.fixture
def runtime(stub: Stub) -> NixosRuntime:
    return make_runtime(stub)


RESOURCES_4G = (
    "# written by hive-c0re (--agent-memory-max, --agent-cpu-quota); rewritten on every start and\n"
    "# rebuild, removed on destroy\n"
    "[Service]\n"
    "MemoryMax=4G\n"
    "CPUQuota=200%\n"
)


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


async def test_create_new_container_binds_and_resources(runtime: NixosRuntime, stub: Stub) -> None:
    (stub.state / "applied" / "alpha").mkdir(parents=True)  # seeded by spawn before create
    await runtime.create(spec("alpha"))
    assert stub.calls() == [
        "nixos-container list",
        f"nixos-container create h-alpha --system-path {SYSTEM}",
        "systemctl daemon-reload",
    ]
    # the stub's nixos-container wrote a private-network .conf with a stray bind: hygiene + our binds
    assert (stub.conf / "h-alpha.conf").read_text() == (
        "PRIVATE_NETWORK=0\nHOST_ADDRESS=\nLOCAL_ADDRESS=\nHOST_BRIDGE=\n"
        f'EXTRA_NSPAWN_FLAGS="{stub.flags("alpha")}"\nAUTO_START=0\n'
    )
    assert stub.dropin("h-alpha").read_text() == RESOURCES_4G
    assert stat.S_IMODE(stub.dropin("h-alpha").stat().st_mode) == 0o644
    # the read-write bind sources exist (nspawn refuses a missing one): creds private, socket dir 0751
    assert stat.S_IMODE((stub.state / "agents" / "alpha" / "claude").stat().st_mode) == 0o700
    assert (stub.state / "agents" / "alpha" / "state").is_dir()
    assert stat.S_IMODE((stub.run / "agents" / "alpha").stat().st_mode) == 0o751


async def test_manager_is_unprefixed_and_binds_the_hive(runtime: NixosRuntime, stub: Stub) -> None:
    await runtime.create(spec("hm1nd"))
    await runtime.start("hm1nd")
    assert stub.calls()[1:] == [
        f"nixos-container create hm1nd --system-path {SYSTEM}",
        "systemctl daemon-reload",
        "nixos-container start hm1nd",  # drop-in unchanged since create: no second reload
    ]
    flags = (
        f"--bind={stub.state}/agents:/agents "
        f"--bind={stub.state}/agents/hm1nd/claude:/root/.claude "
        f"--bind={stub.run}/manager:/run/hive "
        f"--bind-ro={stub.state}/applied:/applied "
        f"--bind-ro={stub.meta.parent}/state/meta:/meta "
        f"--bind-ro={stub.state}/agent-env.d/hm1nd:/run/hive-env"
    )
    conf = (stub.conf / "hm1nd.conf").read_text()
    assert f'EXTRA_NSPAWN_FLAGS="{flags}"\n' in conf
    assert "PRIVATE_NETWORK=0\n" in conf
    assert stub.dropin("hm1nd").read_text() == RESOURCES_4G
    assert stat.S_IMODE((stub.run / "manager").stat().st_mode) == 0o751


async def test_create_existing_sets_the_profile(runtime: NixosRuntime, stub: Stub) -> None:
    """An existing container is updated: its system profile points at the built system (set with
    nix-env, as ``nixos-container update`` does after its own build), never a flake; a ``FLAKE=``
    line a previous create left is dropped (a bare ``nixos-container update`` would evaluate it)."""
    stub.set("containers", "h-alpha")
    conf = stub.conf / "h-alpha.conf"
    conf.write_text("HOST_ADDRESS6=fc00::1\nLOCAL_ADDRESS6=fc00::2\nFLAKE=/var/lib/hyperhive/meta#alpha\n")
    conf.chmod(0o640)
    await runtime.create(spec("alpha"))
    assert stub.calls() == [
        "nixos-container list",
        "nixos-container status h-alpha",  # down: nothing to reload
        "systemctl daemon-reload",
    ]
    assert stub.profile("h-alpha") == SYSTEM
    assert conf.read_text() == (
        f'HOST_ADDRESS6=\nLOCAL_ADDRESS6=\nPRIVATE_NETWORK=0\nEXTRA_NSPAWN_FLAGS="{stub.flags("alpha")}"\n'
    )
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640


async def test_update_reconciles_conf_and_resources(stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    """A rebuild rewrites what drifted (hand-edited .conf, other limits) and reloads systemd only when
    the drop-in changed."""
    conf = stub.conf / "h-alpha.conf"
    conf.write_text(
        '# kept\nPRIVATE_NETWORK=1\nEXTRA_NSPAWN_FLAGS="--bind=/etc:/etc"\nEXTRA_NSPAWN_FLAGS=x\n'
    )
    await make_runtime(stub).update(spec("alpha"))
    await make_runtime(stub).update(spec("alpha"))
    await make_runtime(stub, memory_max="512M", cpu_quota="50%").update(spec("alpha"))
    update = "nixos-container status h-alpha"
    assert stub.calls() == [update, "systemctl daemon-reload", update, update, "systemctl daemon-reload"]
    assert stub.profile("h-alpha") == SYSTEM
    assert conf.read_text() == f'# kept\nPRIVATE_NETWORK=0\nEXTRA_NSPAWN_FLAGS="{stub.flags("alpha")}"\n'
    assert stub.dropin("h-alpha").read_text() == RESOURCES_4G.replace("4G", "512M").replace("200%", "50%")
    # the applied repo was never seeded here: logged (nspawn would refuse to start), not created
    assert "applied/alpha (bound at /agents/alpha/applied.git) is missing" in caplog.text
    assert not (stub.state / "applied" / "alpha").exists()


async def test_start_restores_lost_host_state(runtime: NixosRuntime, stub: Stub) -> None:
    """After a reboot /run is empty (no drop-in, no socket dir): start puts them back first."""
    stub.set("containers", "h-alpha")
    (stub.conf / "h-alpha.conf").write_text("PRIVATE_NETWORK=0\n")
    await runtime.start("alpha")
    await runtime.start("alpha")
    assert stub.calls() == [
        "systemctl daemon-reload",
        "nixos-container start h-alpha",
        "nixos-container start h-alpha",
    ]
    assert stub.dropin("h-alpha").read_text() == RESOURCES_4G
    assert (stub.run / "agents" / "alpha").is_dir()
    assert stub.flags("alpha") in (stub.conf / "h-alpha.conf").read_text()


async def test_failed_update_does_not_reconcile(runtime: NixosRuntime, stub: Stub) -> None:
    with pytest.raises(RuntimeFailure, match=r"`nix-env -p .*h-alpha/system --set .*` failed"):
        await runtime.update(spec("alpha", MISSING_SYSTEM))
    assert not stub.dropin("h-alpha").exists()
    assert stub.calls() == []


async def test_unsafe_bind_path_is_refused_before_anything_runs(stub: Stub, tmp_path: Path) -> None:
    """EXTRA_NSPAWN_FLAGS is expanded unquoted by the container's start script: a space would split a
    bind in two, so such a state dir is refused with a clear message, and nothing is written."""
    rt = NixosRuntime(
        StatePaths(tmp_path / "my state"), meta_dir=stub.meta, conf_dir=stub.conf, unit_dir=stub.units
    )
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: rt.start("alpha"),
        lambda: rt.create(spec("alpha")),
        lambda: rt.update(spec("alpha")),
    ]
    for attempt in attempts:
        with pytest.raises(RuntimeFailure, match=r"cannot bind .*my state.* only letters, digits"):
            await attempt()
    assert stub.calls() == []  # refused before nixos-container built anything
    assert not (tmp_path / "my state").exists()
    assert not stub.units.exists()


def test_invalid_limits_are_refused_by_the_runtime(stub: Stub) -> None:
    with pytest.raises(HiveError, match="memory limit '4X' is not a size"):
        make_runtime(stub, memory_max="4X")
    with pytest.raises(HiveError, match="CPU quota '-1%' is not a percentage"):
        make_runtime(stub, cpu_quota="-1%")


async def test_start_stop_kill(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("up", "h-alpha")
    await runtime.start("alpha")
    await runtime.stop("alpha")
    await runtime.stop("alpha", graceful=False)
    await runtime.stop("beta", graceful=False)  # down: nothing to terminate
    assert stub.calls() == [
        "systemctl daemon-reload",  # the first start wrote the drop-in
        "nixos-container start h-alpha",
        "nixos-container stop h-alpha",
        "nixos-container status h-alpha",
        "machinectl terminate h-alpha",
        "nixos-container status h-beta",
    ]


async def test_destroy(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "h-alpha")
    stub.dropin("h-alpha").parent.mkdir(parents=True)
    stub.dropin("h-alpha").write_text(RESOURCES_4G)
    (stub.dropin("h-alpha").parent / "operator.conf").write_text("[Service]\n")  # not ours: kept
    await runtime.destroy("alpha")
    await runtime.destroy("ghost")  # does not exist: no-op
    assert stub.calls() == [
        "nixos-container list",
        "nixos-container destroy h-alpha",
        "systemctl daemon-reload",
        "nixos-container list",
    ]
    assert sorted(p.name for p in stub.dropin("h-alpha").parent.iterdir()) == ["operator.conf"]
    stub.dropin("h-ghost").parent.mkdir(parents=True)
    stub.dropin("h-ghost").write_text(RESOURCES_4G)
    await runtime.destroy("ghost")  # the drop-in left by an earlier, interrupted destroy goes too
    assert stub.calls()[4:] == ["nixos-container list", "systemctl daemon-reload"]
    assert not stub.dropin("h-ghost").parent.exists()


async def test_failure_carries_stderr(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("fail-start")
    with pytest.raises(
        RuntimeFailure, match=r"`nixos-container start h-alpha` failed \(exit 1\): .*start exploded"
    ):
        await runtime.start("alpha")
    stub.set("fail-create")
    with pytest.raises(RuntimeFailure, match="create exploded"):
        await runtime.create(spec("alpha"))


async def test_failing_probe_raises_runtime_failure(runtime: NixosRuntime, stub: Stub) -> None:
    stub.set("containers", "h-alpha", "h-beta")
    stub.set("fail-status")
    with pytest.raises(RuntimeFailure, match="status exploded"):  # not an ExceptionGroup
        await runtime.list()


async def test_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rt = NixosRuntime(StatePaths(tmp_path), meta_dir=tmp_path, conf_dir=tmp_path, unit_dir=tmp_path)
    with pytest.raises(RuntimeFailure, match="cannot run nixos-container"):
        await rt.list()


def test_sanitize_conf() -> None:
    text = "# generated\nHOST_ADDRESS=1.2.3.4\nPRIVATE_NETWORK=1\nPRIVATE_NETWORK=1\nFLAGS=a=b\n"
    clean = sanitize_conf(text)
    assert clean == "# generated\nHOST_ADDRESS=\nPRIVATE_NETWORK=0\nFLAGS=a=b\n"
    assert sanitize_conf(clean) == clean
    assert sanitize_conf("") == "PRIVATE_NETWORK=0\n"


def test_render_conf() -> None:
    assert render_conf("", "--bind=/a:/b") == 'PRIVATE_NETWORK=0\nEXTRA_NSPAWN_FLAGS="--bind=/a:/b"\n'
    text = 'A=1\nEXTRA_NSPAWN_FLAGS="--x"\nB=2\n EXTRA_NSPAWN_FLAGS = y\n'
    assert render_conf(text, "--bind=/a:/b") == (
        'A=1\nEXTRA_NSPAWN_FLAGS="--bind=/a:/b"\nB=2\nPRIVATE_NETWORK=0\n'
    )


def test_container_binds_refuse_bad_names(tmp_path: Path) -> None:
    with pytest.raises(HiveError):
        container_binds("../x", StatePaths(tmp_path), tmp_path / "run")


def test_logical_name() -> None:
    assert logical_name("hm1nd") == "hm1nd"
    assert logical_name("h-alpha") == "alpha"
    assert logical_name("hive-forge") is None
    assert logical_name("h-") is None
    assert logical_name("h-../x") is None


# --- bind sources are never followed through a link (issue 14, finding 11) ----------------------------

LINKED_SOURCES = [
    # (agent, the entry the manager swaps for a link, relative to the state dir / runtime dir)
    ("alpha", "state", "agents/alpha/claude"),
    ("alpha", "state", "agents/alpha/state"),
    ("alpha", "state", "agents/alpha"),  # the agent's whole dir: the manager owns /agents
    ("alpha", "run", "agents/alpha"),  # the socket dir
    ("alpha", "run", "agents"),
    ("alpha", "state", "applied/alpha"),  # read-only, but a link would still expose its target
    ("hm1nd", "state", "agents/hm1nd/claude"),
    ("hm1nd", "state", "agents/hm1nd"),
    ("hm1nd", "run", "manager"),
    ("hm1nd", "state", "meta"),
    ("alpha", "state", "agent-env.d/alpha"),  # the daemon's own, refused all the same
]


@pytest.mark.parametrize(
    ("name", "base", "entry"), LINKED_SOURCES, ids=[f"{n}:{e}" for n, _, e in LINKED_SOURCES]
)
async def test_a_linked_bind_source_is_refused(
    runtime: NixosRuntime, stub: Stub, tmp_path: Path, name: str, base: str, entry: str
) -> None:
    container = "hm1nd" if name == "hm1nd" else f"h-{name}"
    stub.set("containers", container)
    (stub.state / "applied" / name).mkdir(parents=True)
    (stub.state / "meta").mkdir(parents=True)
    await runtime.start(name)  # a clean start creates the owned sources
    assert stub.calls()[-1] == f"nixos-container start {container}"
    # the manager replaces one entry with a link to a host directory it wants inside a container
    secret = tmp_path / "host-secret"
    secret.mkdir()
    (secret / "shadow").write_text("root:x")
    victim = (stub.state if base == "state" else stub.run) / entry
    victim.rename(victim.with_name(victim.name + ".moved"))
    victim.symlink_to(secret)
    before = len(stub.calls())
    with pytest.raises(RuntimeFailure, match=r"refusing to bind .* is a symlink"):
        await runtime.start(name)
    assert not any(c.startswith("nixos-container start") for c in stub.calls()[before:])
    assert sorted(p.name for p in secret.iterdir()) == ["shadow"]  # nothing created through the link
    # the same for a file planted where a directory belongs
    victim.unlink()
    victim.write_text("not a dir")
    with pytest.raises(RuntimeFailure, match="not a directory"):
        await runtime.start(name)
    assert not any(c.startswith("nixos-container start") for c in stub.calls()[before:])


# --- the operator's environment reaches a container (issue 17, item 5) ------------------------------

SECRET = "sk-ant-secret-0123456789"


async def test_start_writes_the_operator_env_bound_read_only(
    stub: Stub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--agent-env-file`` and ``hivectl env`` values: a 0600 file in a 0700 daemon dir, bound
    read-only at /run/hive-env, rewritten at every start, removed on destroy; never in the .conf,
    the calls (argv) or a log."""
    caplog.set_level("DEBUG")
    global_file = tmp_path / "agent.env"
    global_file.write_text("ANTHROPIC_BASE_URL=http://127.0.0.1:9/\nSHARED=global\n")
    global_file.chmod(0o600)
    env = AgentEnv(stub.state, global_file)
    stub.state.mkdir(parents=True, exist_ok=True)
    env.update("alpha", {"ANTHROPIC_API_KEY": SECRET, "SHARED": "own"}, [])
    runtime = NixosRuntime(
        StatePaths(stub.state),
        meta_dir=stub.meta,
        runtime_dir=stub.run,
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=stub.profiles,
        env_source=env.env_for,
    )
    (stub.state / "applied" / "alpha").mkdir(parents=True)
    await runtime.create(spec("alpha"))
    await runtime.start("alpha")
    assert stub.calls()[-1] == "nixos-container start h-alpha"
    conf = (stub.conf / "h-alpha.conf").read_text()
    assert f"--bind-ro={stub.state}/agent-env.d/alpha:/run/hive-env" in conf
    file = stub.state / "agent-env.d" / "alpha" / "env"
    assert file.read_text() == (
        f"ANTHROPIC_API_KEY={SECRET}\nANTHROPIC_BASE_URL=http://127.0.0.1:9/\nSHARED=own\n"
    )
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(file.parent.parent.stat().st_mode) == 0o700
    # a `hivectl env` change takes effect on the next start
    env.update("alpha", {}, ["ANTHROPIC_API_KEY"])
    await runtime.start("alpha")
    assert file.read_text() == "ANTHROPIC_BASE_URL=http://127.0.0.1:9/\nSHARED=own\n"
    assert sorted(p.name for p in file.parent.iterdir()) == ["env"]  # no temp file left
    # no value anywhere else: the .conf, the drop-in, any argv (no nix command runs on start, so
    # nothing reaches the store), the log; the built system is the stand-in untouched
    system = await trio.Path(SYSTEM).read_text()
    seen = [conf, stub.dropin("h-alpha").read_text(), *stub.calls(), caplog.text, system]
    assert not [text for text in seen if SECRET in text or "127.0.0.1:9" in text]
    await runtime.destroy("alpha")
    assert not file.parent.exists()


async def test_an_unusable_env_file_stops_the_start(stub: Stub, tmp_path: Path) -> None:
    """A global env file that became readable by others: the start is refused, the value unsaid."""
    global_file = tmp_path / "agent.env"
    global_file.write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
    global_file.chmod(0o644)
    runtime = NixosRuntime(
        StatePaths(stub.state),
        meta_dir=stub.meta,
        runtime_dir=stub.run,
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=stub.profiles,
        env_source=AgentEnv(stub.state, global_file).env_for,
    )
    stub.set("containers", "h-alpha")
    (stub.conf / "h-alpha.conf").write_text("PRIVATE_NETWORK=0\n")
    with pytest.raises(RuntimeFailure, match="chmod 600") as caught:
        await runtime.start("alpha")
    assert SECRET not in str(caught.value)
    assert "nixos-container start h-alpha" not in stub.calls()
    assert not (stub.state / "agent-env.d" / "alpha" / "env").exists()
