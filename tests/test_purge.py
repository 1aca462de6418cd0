"""purge-tombstone refuses every dangerous name and deletes nothing when it refuses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hivecore.errors import HiveError, InvalidName, Refused
from tests.conftest import Parts


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
async def with_tombstone(parts: Parts) -> Parts:
    await parts.coordinator.spawn("old")
    await parts.coordinator.destroy("old")
    await parts.coordinator.spawn("live")
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
        await with_tombstone.coordinator.purge_tombstone("hm1nd")
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
