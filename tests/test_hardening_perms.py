"""The state dir is not world-readable: modes of a fresh layout, tightening an old one, the db file."""

from __future__ import annotations

import grp
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from hivecore import posix_acl
from hivecore.config import StatePaths
from hivecore.daemon import Daemon
from hivecore.store import connect
from tests.conftest import make_config


def mode(path: Path) -> int:
    """What the owner, the owning group and others may do: with a POSIX ACL the mode's group bits
    are the ACL's mask, so the group's are read from the ACL (agents' traverse grants are named
    entries; ``tests/test_agent_privileges.py`` checks those)."""
    bits = stat.S_IMODE(path.stat().st_mode)
    return (bits & ~0o070) | (posix_acl.effective_group_bits(path) << 3)


def layout_modes(p: StatePaths) -> dict[str, int]:
    return {
        str(d.relative_to(p.root)): mode(d)
        for d in (p.root, p.db.parent, p.agents, p.applied_root, p.run, p.run_agents, p.run_process)
    }


PRIVATE = {
    ".": 0o750,
    "db": 0o700,
    "agents": 0o700,
    "applied": 0o700,
    "run": 0o750,
    "run/agents": 0o700,
    "run/process": 0o700,
}


def test_a_fresh_layout_is_closed_to_others(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        paths = StatePaths(tmp_path / "state")
        paths.create_layout()
    finally:
        os.umask(old_umask)
    assert layout_modes(paths) == PRIVATE


def test_an_existing_wide_layout_is_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = StatePaths(tmp_path / "state")
    for d in (paths.db.parent, paths.agents / "coder" / "state", paths.applied_root):
        d.mkdir(parents=True)
    for d in (paths.run_agents, paths.run_process):
        d.mkdir(parents=True)
    for d in (
        paths.root,
        paths.db.parent,
        paths.agents,
        paths.applied_root,
        paths.run,
        paths.run_agents,
        paths.run_process,
    ):
        d.chmod(0o755)
    note = paths.agents / "coder" / "state" / "notes.md"
    note.write_text("private")
    with caplog.at_level(logging.WARNING, logger="hivecore.config"):
        paths.create_layout()
    assert layout_modes(paths) == PRIVATE
    assert len([r for r in caplog.records if "was 0o755; now" in r.getMessage()]) == 7
    assert note.read_text() == "private"  # contents untouched
    caplog.clear()
    paths.create_layout()  # already tight: nothing to say
    assert not caplog.records


def test_a_narrower_layout_is_not_widened(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.root.mkdir()
    paths.root.chmod(0o700)
    paths.create_layout()
    assert mode(paths.root) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another group needs root")
def test_the_admin_group_can_reach_a_socket_inside_the_state_dir(tmp_path: Path) -> None:
    gid = grp.getgrnam("daemon").gr_gid
    inside = make_config(tmp_path / "a", admin_group="daemon").paths
    inside.create_layout()
    assert (inside.root.stat().st_gid, inside.run.stat().st_gid) == (gid, gid)
    assert (mode(inside.root), mode(inside.run)) == (0o750, 0o750)
    assert mode(inside.db.parent) == mode(inside.agents) == 0o700
    outside = make_config(tmp_path / "b", admin_group="daemon", host_socket=tmp_path / "host.sock").paths
    outside.create_layout()
    assert outside.root.stat().st_gid != gid
    assert layout_modes(outside) == PRIVATE


def test_the_database_is_owner_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "db" / "hive.sqlite"
    old_umask = os.umask(0o022)
    try:
        connect(db).close()
    finally:
        os.umask(old_umask)
    assert mode(db) == 0o600
    assert mode(db.parent) == 0o700
    db.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="hivecore.store"):
        conn = connect(db)
    try:
        assert mode(db) == 0o600
        wal = db.with_name(db.name + "-wal")
        assert wal.exists()
        assert mode(wal) == 0o600
    finally:
        conn.close()
    assert "was open to group/others (0o644); tightened to 0o600" in caplog.text
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_serving_daemon_keeps_its_state_private(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    p = hive.config.paths
    assert layout_modes(p) == {**PRIVATE, ".": mode(p.root) & 0o750}
    assert mode(p.db) == 0o600
    # everything the process runtime writes sits below a directory only the daemon can open
    assert any(p.agent_run("coder").iterdir())
    assert p.agent_run("coder").parent == p.run_process
    assert mode(p.run_process) == 0o700
