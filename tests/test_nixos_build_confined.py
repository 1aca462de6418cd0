"""The nixos runtime never lets ``nixos-container`` evaluate agent config (gate, issue 14).

``nixos-container create|update --flake`` evaluates the flake itself, as root, with none of the
confinement the daemon gives its own evaluations. Now the daemon evaluates the container's system
(``nixosConfigurations.<n>.config.system.build.toplevel``) confined — restrict-eval, allowed-uris,
no import-from-derivation, the evaluator uid, memory and time limits — realises it itself, and
hands ``nixos-container`` only the store path. Real nix and a real meta flake; ``nixos-container``
and ``systemctl`` are the recording stub of ``tests/test_runtime_nixos.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from hivecore.agent_env import AgentEnv
from hivecore.config import StatePaths
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.repos import Repos
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.nixos import CONTAINER_AGENT_ENV_FILE, NixosRuntime
from hivecore.services.meta_build import MetaBuild
from tests.conftest import Parts, make_config, start_parts
from tests.test_eval_confined import REASON, SECRET, agent_nix_with, attacks, leaked_into_store, store_entries
from tests.test_eval_confined import secrets as secrets
from tests.test_meta import commit_file
from tests.test_runtime_nixos import Stub
from tests.test_runtime_nixos import stub as stub

HOST_NIX_CONFIG = "build-users-group =\nsubstituters ="
"""This machine has no ``nixbld`` group and no network: the daemon's host-side realise takes the
host's nix configuration from its environment (``NIX_CONFIG``), as nixos-container did."""


@pytest.fixture
async def parts(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Parts]:
    monkeypatch.setenv("NIX_CONFIG", HOST_NIX_CONFIG)
    async with trio.open_nursery() as nursery:
        yield await start_parts(make_config(state_dir), nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
def nixos(parts: Parts, stub: Stub, tmp_path: Path) -> tuple[MetaBuild, NixosRuntime]:
    paths = parts.config.paths
    runtime = NixosRuntime(
        paths,
        meta_dir=paths.meta,
        runtime_dir=tmp_path / "nixos-run",
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=tmp_path / "profiles",
    )
    return MetaBuild(parts.config, runtime, Repos(paths), parts.daemon.meta), runtime


def no_flake_reaches_nixos_container(calls: list[str]) -> None:
    for call in calls:
        assert "--flake" not in call, call
        assert "--config" not in call, call
        assert "#" not in call, call


async def test_create_and_update_hand_nixos_container_only_a_store_path(
    parts: Parts, nixos: tuple[MetaBuild, NixosRuntime], stub: Stub, tmp_path: Path
) -> None:
    build, runtime = nixos
    await parts.coordinator.spawn("a")  # the applied repo and the meta flake, as a spawn makes them
    await commit_file(parts.config.paths.applied("a"), "agent.nix", agent_nix_with('"marker-1"'))
    await parts.daemon.meta.lock_update_for_rebuild("a")
    await build.create("a")
    calls = stub.calls()
    no_flake_reaches_nixos_container(calls)
    created = [c for c in calls if c.startswith("nixos-container create")]
    assert len(created) == 1
    _, _, container, flag, system = created[0].split(" ")
    assert (container, flag) == ("h-a", "--system-path")
    assert system.startswith("/nix/store/")
    assert system.endswith("-hive-system-a")
    manifest = await trio.Path(system, "manifest.nix").read_text()  # the evaluated agent, built by the daemon
    assert "marker-1" in manifest

    # update: the per-container profile is set to the new system (nix-env, real), never a flake
    stub.set("containers", "h-a")
    stub.set("up", "h-a")
    await commit_file(parts.config.paths.applied("a"), "agent.nix", agent_nix_with('"marker-2"'))
    await parts.daemon.meta.lock_update_for_rebuild("a")
    spec = await build._evaluate(parts.daemon.meta, "a")
    await runtime.update(spec)
    assert spec.system_path is not None
    assert spec.system_path != system
    profile = tmp_path / "profiles" / "h-a" / "system"
    assert await trio.to_thread.run_sync(os.path.realpath, profile) == spec.system_path
    assert "marker-2" in await trio.Path(profile, "manifest.nix").read_text()
    calls = stub.calls()
    no_flake_reaches_nixos_container(calls)
    assert calls[-2:] == ["nixos-container status h-a", "systemctl reload container@h-a.service"]


async def test_a_spec_without_a_built_system_is_refused(stub: Stub, tmp_path: Path) -> None:
    """Whatever reaches the runtime, nixos-container never gets anything but a store path."""
    runtime = NixosRuntime(
        StatePaths(tmp_path / "state"),
        meta_dir=tmp_path / "meta",
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=tmp_path / "profiles",
    )
    for path in (None, "/etc", "/nix/store/../../etc", f"{tmp_path}/meta#a", "/nix/store/x --flake y"):
        for action in (runtime.create, runtime.update):
            with pytest.raises(RuntimeFailure, match="no built system"):
                await action(AgentSpec(name="a", command=("x",), system_path=path))
    assert stub.calls() == []


ATTACKS = ["fetchGit file://", "fetchTree path", "getFlake", "import-from-derivation", "fetchurl file://"]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_the_container_system_is_evaluated_confined(
    parts: Parts,
    nixos: tuple[MetaBuild, NixosRuntime],
    stub: Stub,
    secrets: dict[str, str],
    attack: str,
) -> None:
    """An approved agent.nix reaching for host data fails the daemon's confined evaluation of the
    container system; nothing reaches nixos-container, the store or the error text. ("fetchTree
    path" and "getFlake" pass nix 2.8's restrict-eval: only the evaluator uid stops them.)"""
    build, _ = nixos
    await parts.coordinator.spawn("a")
    await commit_file(parts.config.paths.applied("a"), "agent.nix", agent_nix_with(attacks(secrets)[attack]))
    await parts.daemon.meta.lock_update_for_rebuild("a")
    before = store_entries()
    with pytest.raises(HiveError, match=REASON[attack]) as caught:
        await build.create("a")
    assert "system of a does not build" in str(caught.value) or "does not evaluate" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert [c for c in stub.calls() if c.startswith("nixos-container create")] == []
    no_flake_reaches_nixos_container(stub.calls())
    assert leaked_into_store(before) == []


async def test_the_operator_env_reaches_the_container_never_the_store(
    parts: Parts, stub: Stub, tmp_path: Path
) -> None:
    """Issue 17, item 5: a ``hivectl env`` value reaches the container through its bound 0600 file;
    the built system names only that file's path (``HIVE_AGENT_ENV_FILE``), never the value."""
    config = attrs.evolve(parts.config, runtime="nixos")
    paths = config.paths
    agent_env = AgentEnv(paths.root)
    runtime = NixosRuntime(
        paths,
        meta_dir=paths.meta,
        runtime_dir=tmp_path / "nixos-run",
        conf_dir=stub.conf,
        unit_dir=stub.units,
        profile_dir=tmp_path / "profiles",
        env_source=agent_env.env_for,
    )
    build = MetaBuild(config, runtime, Repos(paths), parts.daemon.meta)
    await parts.coordinator.spawn("a")
    await trio.to_thread.run_sync(agent_env.update, "a", {"ANTHROPIC_API_KEY": SECRET}, [])
    before = store_entries()
    await build.create("a")
    stub.set("containers", "h-a")
    await runtime.start("a")
    assert stub.calls()[-1] == "nixos-container start h-a"
    system = next(c for c in stub.calls() if c.startswith("nixos-container create")).split(" ")[-1]
    manifest = await trio.Path(system, "manifest.nix").read_text()
    assert CONTAINER_AGENT_ENV_FILE == "/run/hive-env/env"
    assert "HIVE_AGENT_ENV_FILE" in manifest
    assert CONTAINER_AGENT_ENV_FILE in manifest
    assert SECRET not in manifest
    assert leaked_into_store(before) == []
    assert SECRET not in (stub.conf / "h-a.conf").read_text()
    env_file = paths.root / "agent-env.d" / "a" / "env"
    assert await trio.Path(env_file).read_text() == f"ANTHROPIC_API_KEY={SECRET}\n"
