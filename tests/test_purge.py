"""purge-tombstone refuses every dangerous name and deletes nothing when it refuses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from hivecore.daemon import Daemon
from hivecore.errors import HiveError, InvalidName, Refused
from hivecore.verbs import bind
from tests.conftest import Parts
from tests.waiting import eventually


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
async def with_tombstone(parts: Parts) -> Parts:
    await parts.coordinator.spawn("old")
    await parts.coordinator.destroy("old")
    await parts.coordinator.spawn("live")
    # the live agent's shim opens its log on its own time: let it, before anyone snapshots the tree
    await eventually(lambda: (parts.config.paths.agent_run("live") / "agent.log").exists())
    return parts


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "/etc", "toolongname", "", "../old", "old/..", "Old", "a\x00b"]
)
async def test_bad_names_are_refused_and_nothing_is_deleted(with_tombstone: Parts, name: str) -> None:
    root = with_tombstone.config.state_dir
    before = snapshot(root)
    with pytest.raises(InvalidName, match="invalid agent name"):
        await with_tombstone.coordinator.purge_tombstone(name)
    assert snapshot(root) == before


async def test_manager_is_refused(with_tombstone: Parts) -> None:
    (with_tombstone.config.paths.agents / "hm1nd" / "state").mkdir(parents=True)
    before = snapshot(with_tombstone.config.state_dir)
    with pytest.raises(Refused, match="refusing to purge the manager"):
        await bind.call(
            "purge_tombstone", bind.Context(with_tombstone.coordinator, bind.OPERATOR_SOCK), {"name": "hm1nd"}
        )
    assert snapshot(with_tombstone.config.state_dir) == before


async def test_live_agent_is_refused(with_tombstone: Parts) -> None:
    before = snapshot(with_tombstone.config.state_dir)
    with pytest.raises(Refused, match='agent "live" still has a live container'):
        await with_tombstone.coordinator.purge_tombstone("live")
    assert snapshot(with_tombstone.config.state_dir) == before


async def test_planted_symlink_pointing_outside_is_refused(with_tombstone: Parts, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("do not delete")
    os.symlink(outside, with_tombstone.config.paths.agents / "evil")
    before = snapshot(with_tombstone.config.state_dir)
    with pytest.raises(InvalidName, match="resolves outside"):
        await with_tombstone.coordinator.purge_tombstone("evil")
    assert (outside / "keep.txt").read_text() == "do not delete"
    assert snapshot(with_tombstone.config.state_dir) == before


async def test_symlinked_applied_dir_refuses_the_whole_purge(with_tombstone: Parts, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.rmtree(with_tombstone.config.paths.applied_root / "old")  # spawn seeded a real applied repo
    os.symlink(outside, with_tombstone.config.paths.applied_root / "old")
    with pytest.raises(InvalidName, match="resolves outside"):
        await with_tombstone.coordinator.purge_tombstone("old")
    assert with_tombstone.config.paths.agent_dir("old").is_dir()  # nothing deleted, not even agents/old
    assert outside.is_dir()


async def test_unknown_tombstone_is_a_clear_error(with_tombstone: Parts) -> None:
    with pytest.raises(HiveError, match='no kept state for "nobody"'):
        await with_tombstone.coordinator.purge_tombstone("nobody")


async def test_purge_deletes_the_tombstone_and_emits_the_full_list(with_tombstone: Parts) -> None:
    p = with_tombstone
    await p.coordinator.spawn("other")
    await p.coordinator.destroy("other")
    assert [t.name for t in p.coordinator.tombstones()] == ["old", "other"]
    with p.bus.subscribe(kinds=["tombstones_changed"]) as sub:
        await p.coordinator.purge_tombstone("old")
        event = await sub.receive()
    assert [t.name for t in event.tombstones] == ["other"]  # type: ignore[attr-defined]
    assert not (p.config.paths.agents / "old").exists()
    assert p.config.paths.agent_dir("live").is_dir()


async def test_destroy_purge_never_fails_on_a_race_with_probes(hive: Daemon) -> None:
    """Issue 15: ``run/agents/<n>/`` had two owners (the runtime's files and the agent socket) and the
    run dir's removal did not hold the probes' lock, so ``destroy`` failed now and then (``Directory
    not empty``, ``FileNotFoundError: 'mcp.sock'``). Many spawn/destroy --purge cycles while runtime
    probes, rescans and the agent socket's bind/unbind run beside them: every one succeeds and leaves
    nothing behind (it failed within 2 cycles before the split)."""
    paths = hive.config.paths
    name = "racer"
    probes = 0

    async def probe_forever() -> None:
        nonlocal probes
        while True:
            await hive.runtime.list()
            await hive.views.rescan([name])
            probes += 1

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(probe_forever)
        for _ in range(10):
            await hive.coordinator.spawn(name)
            await eventually(lambda: hive.config.agent_socket_path(name).is_socket())
            await hive.coordinator.destroy(name, purge=True)
            assert not paths.agent_run(name).exists()
            assert not paths.agent_dir(name).exists()
            assert not paths.applied(name).exists()
            await eventually(lambda: not hive.config.agent_socket_dir(name).exists())
        nursery.cancel_scope.cancel()
    assert probes > 0
    assert list(paths.run_process.iterdir()) == []
