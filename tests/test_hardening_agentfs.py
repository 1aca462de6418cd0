"""Agent-writable directories: the root daemon never follows, blocks on or over-reads what agents plant.

The "agent" plants symlinks to a root-only secret (mode 0600 in a directory of its own) and FIFOs;
the daemon's readers (status, pause marker, claude login, tombstones) and the pause-marker writer must
neither reveal nor create anything outside the agent's directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hivecore import agentfs
from hivecore.config import StatePaths
from hivecore.container_view import PAUSE_MARKER, STATUS_FILE, read_facts, set_pause_marker
from hivecore.daemon import Daemon
from hivecore.errors import InvalidName, Refused
from hivecore.names import validate_name
from hivecore.tombstones import build_tombstone_views
from tests.test_hardening_web import request

SECRET = b"root-only secret\n"


@pytest.fixture
def paths(state_dir: Path) -> StatePaths:
    p = StatePaths(state_dir)
    p.create_layout()
    (p.agents / "coder" / "state").mkdir(parents=True)
    (p.agents / "coder" / "claude").mkdir()
    return p


@pytest.fixture
def secret_dir() -> Iterator[Path]:
    """A root-only directory elsewhere holding a root-only file: what planted links point at."""
    d = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    (d / "secret").write_bytes(SECRET)
    (d / "secret").chmod(0o600)
    (d / "creds").mkdir()
    (d / "creds" / "token.json").write_text("{}")
    d.chmod(0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def state(paths: StatePaths) -> Path:
    return paths.agents / "coder" / "state"


# --- read_facts ------------------------------------------------------------------------------------


def test_a_status_symlink_to_a_root_only_file_is_not_read(paths: StatePaths, secret_dir: Path) -> None:
    (state(paths) / STATUS_FILE).symlink_to(secret_dir / "secret")
    facts = read_facts(paths, "coder")
    assert facts.status_text is None
    assert facts.status_set_at is None


def test_a_symlinked_state_dir_is_not_followed(paths: StatePaths, secret_dir: Path) -> None:
    (secret_dir / STATUS_FILE).write_bytes(SECRET)
    (secret_dir / PAUSE_MARKER).touch()
    shutil.rmtree(state(paths))
    state(paths).symlink_to(secret_dir)
    facts = read_facts(paths, "coder")
    assert facts.status_text is None
    assert facts.paused is False


def test_a_pause_marker_counts_only_as_a_regular_file(paths: StatePaths, secret_dir: Path) -> None:
    marker = state(paths) / PAUSE_MARKER
    marker.symlink_to(secret_dir / "secret")
    assert read_facts(paths, "coder").paused is False
    marker.unlink()
    marker.mkdir()
    assert read_facts(paths, "coder").paused is False
    marker.rmdir()
    marker.touch()
    assert read_facts(paths, "coder").paused is True


async def test_a_status_fifo_does_not_block_the_daemon(paths: StatePaths) -> None:
    fifo = state(paths) / STATUS_FILE
    os.mkfifo(fifo)
    try:
        with trio.fail_after(5):
            facts = await trio.to_thread.run_sync(read_facts, paths, "coder", abandon_on_cancel=True)
        assert facts.status_text is None
    finally:
        # a reader stuck in open() (the defect) is released by a writer showing up
        with contextlib.suppress(OSError):  # ENXIO: no reader, as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_huge_status_file_is_read_up_to_the_cap(paths: StatePaths) -> None:
    (state(paths) / STATUS_FILE).write_bytes(b"x" * 5000 + b"\n" + b"y" * 10_000_000)
    facts = read_facts(paths, "coder")
    assert facts.status_text == "x" * 4096


def test_claude_login_needs_a_regular_file_inside_the_real_directory(
    paths: StatePaths, secret_dir: Path
) -> None:
    claude = paths.agents / "coder" / "claude"
    (claude / "token.json").symlink_to(secret_dir / "secret")
    (claude / "linked").symlink_to(secret_dir / "creds")
    assert read_facts(paths, "coder").logged_in is False
    claude.rename(paths.agents / "coder" / "claude.old")
    claude.symlink_to(secret_dir / "creds")
    assert read_facts(paths, "coder").logged_in is False
    claude.unlink()
    (paths.agents / "coder" / "claude.old").rename(claude)
    (claude / "deep" / "er").mkdir(parents=True)
    (claude / "deep" / "er" / "creds.json").write_text("{}")
    (claude / "settings.json").write_text("{}")  # what claude writes without a login
    assert read_facts(paths, "coder").logged_in is False  # only a credentials file counts
    (claude / ".credentials.json").symlink_to(secret_dir / "secret")
    (claude / "hive-login.json").symlink_to(secret_dir / "creds")
    assert read_facts(paths, "coder").logged_in is False
    (claude / "hive-login.json").unlink()
    (claude / "hive-login.json").write_text("{}")
    assert read_facts(paths, "coder").logged_in is True


async def test_api_state_never_shows_a_planted_status_link(hive: Daemon, secret_dir: Path) -> None:
    await hive.coordinator.spawn("coder")
    status = hive.config.paths.agent_state("coder") / STATUS_FILE
    status.unlink(missing_ok=True)
    status.symlink_to(secret_dir / "secret")
    await hive.views.rescan(["coder"])
    _, _, body = await request(hive, b"GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert SECRET.strip() not in body
    [row] = json.loads(body)["containers"]
    assert row.get("status_text") is None


# --- set_pause_marker ------------------------------------------------------------------------------


def test_pausing_and_resuming_is_idempotent(paths: StatePaths) -> None:
    marker = state(paths) / PAUSE_MARKER
    for _ in range(2):
        set_pause_marker(paths, "coder", True)
        assert stat.S_ISREG(marker.lstat().st_mode)
        assert read_facts(paths, "coder").paused
    for _ in range(2):
        set_pause_marker(paths, "coder", False)
        assert not marker.exists()
        assert not read_facts(paths, "coder").paused


def test_pausing_creates_a_missing_state_dir(paths: StatePaths) -> None:
    shutil.rmtree(state(paths))
    set_pause_marker(paths, "coder", True)
    assert read_facts(paths, "coder").paused


@pytest.mark.parametrize("target", ["secret", "created-by-root"])
def test_a_marker_symlink_is_replaced_never_followed(
    paths: StatePaths, secret_dir: Path, target: str
) -> None:
    marker = state(paths) / PAUSE_MARKER
    marker.symlink_to(secret_dir / target)
    set_pause_marker(paths, "coder", True)
    assert stat.S_ISREG(marker.lstat().st_mode)
    assert marker.read_bytes() == b""
    assert not (secret_dir / "created-by-root").exists()
    assert (secret_dir / "secret").read_bytes() == SECRET
    assert stat.S_IMODE((secret_dir / "secret").stat().st_mode) == 0o600
    marker.unlink()
    marker.symlink_to(secret_dir / "secret")
    set_pause_marker(paths, "coder", False)  # unlinks the link, not what it points at
    assert not marker.is_symlink()
    assert (secret_dir / "secret").read_bytes() == SECRET


def test_a_marker_fifo_is_replaced(paths: StatePaths) -> None:
    marker = state(paths) / PAUSE_MARKER
    os.mkfifo(marker)
    set_pause_marker(paths, "coder", True)
    assert stat.S_ISREG(marker.lstat().st_mode)


def test_a_marker_directory_is_refused_and_left_alone(paths: StatePaths) -> None:
    marker = state(paths) / PAUSE_MARKER
    marker.mkdir()
    (marker / "keep").touch()
    with pytest.raises(Refused, match="holds a directory named hyperhive-paused"):
        set_pause_marker(paths, "coder", True)
    set_pause_marker(paths, "coder", False)  # not a marker: nothing to remove
    assert (marker / "keep").exists()


def test_a_symlinked_state_dir_is_refused(paths: StatePaths, secret_dir: Path) -> None:
    shutil.rmtree(state(paths))
    state(paths).symlink_to(secret_dir)
    for paused in (True, False):
        with pytest.raises(Refused, match="symlink or not a directory; not following it"):
            set_pause_marker(paths, "coder", paused)
    assert not (secret_dir / PAUSE_MARKER).exists()
    assert sorted(p.name for p in secret_dir.iterdir()) == ["creds", "secret"]


def test_a_symlinked_agent_dir_is_refused(paths: StatePaths, secret_dir: Path) -> None:
    (secret_dir / "state").mkdir()
    shutil.rmtree(paths.agents / "coder")
    (paths.agents / "coder").symlink_to(secret_dir)
    with pytest.raises(Refused, match="not following it"):
        set_pause_marker(paths, "coder", True)
    assert not (secret_dir / "state" / PAUSE_MARKER).exists()
    with pytest.raises(Refused, match="does not exist"):
        set_pause_marker(paths, "ghost", True)
    with pytest.raises(InvalidName):
        set_pause_marker(paths, "../x", True)


# --- tombstones ------------------------------------------------------------------------------------


def test_tombstones_do_not_follow_links(paths: StatePaths, secret_dir: Path) -> None:
    claude = paths.agents / "coder" / "claude"
    claude.rmdir()
    claude.symlink_to(secret_dir / "creds")
    (state(paths) / "big").symlink_to(secret_dir / "secret")
    (state(paths) / "note").write_bytes(b"12345")
    [view] = build_tombstone_views(paths, live=())
    assert view.name == "coder"
    assert view.claude_creds_kept is False
    expected = sum(
        p.lstat().st_size for p in (paths.agents / "coder").rglob("*") if not p.is_dir() or p.is_symlink()
    )
    assert view.state_bytes == expected
    claude.unlink()
    claude.mkdir()
    (claude / "token.json").write_text("{}")
    [view] = build_tombstone_views(paths, live=())
    assert view.claude_creds_kept is True


# --- agentfs ---------------------------------------------------------------------------------------


def test_agentfs_primitives(tmp_path: Path, secret_dir: Path) -> None:
    (tmp_path / "link").symlink_to(secret_dir / "secret")
    (tmp_path / "dangling").symlink_to(secret_dir / "made")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"abcdef")
    os.mkfifo(tmp_path / "fifo")
    with agentfs.opened_dir(tmp_path) as d:
        with pytest.raises(OSError, match="symbolic links") as looped:
            agentfs.read_capped(d, "link")
        assert looped.value.errno == errno.ELOOP
        with pytest.raises(agentfs.NotRegularFile):
            agentfs.read_capped(d, "fifo")
        with pytest.raises(FileExistsError):
            agentfs.create_file(d, "dangling")
        assert not (secret_dir / "made").exists()
        with pytest.raises(ValueError, match="single path component"):
            agentfs.read_capped(d, "../x")
        assert agentfs.regular_file_exists(d, "link") is False
        assert agentfs.entry_mode(d, "absent") is None
        assert agentfs.remove_entry(d, "absent") is False
    with agentfs.opened_dir(tmp_path, "sub") as sub:
        capped = agentfs.read_capped(sub, "f", limit=4)
        assert (capped.data, capped.truncated) == (b"abcd", True)
        whole = agentfs.read_capped(sub, "f", limit=6)
        assert (whole.data, whole.truncated) == (b"abcdef", False)
    with pytest.raises(OSError, match=r"symbolic links|Not a directory") as not_dir:
        agentfs.open_dir(tmp_path, "link")
    assert not_dir.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_agentfs_walks_are_capped_and_hold_one_fd(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / "t" / f"d{i:02}").mkdir(parents=True)
    (tmp_path / "t" / "d49" / "found").touch()
    (tmp_path / "t" / "loop").symlink_to(tmp_path / "t")
    assert agentfs.has_regular_file(tmp_path, "t") is True
    assert agentfs.has_regular_file(tmp_path, "t", max_entries=10) is False
    assert agentfs.has_regular_file(tmp_path, "missing") is False
    full = agentfs.tree_size_and_mtime(tmp_path, "t")
    assert full.complete
    capped = agentfs.tree_size_and_mtime(tmp_path, "t", max_entries=10)
    assert not capped.complete


def test_names_starting_with_the_container_prefix_are_refused() -> None:
    for bad in ("h-a1", "h-", "h-coder"):
        with pytest.raises(InvalidName, match=r"must not start with 'h-' \(the container would be 'h-h-"):
            validate_name(bad)
    for good in ("h", "ha1", "hm1nd", "coder-h-1"):
        assert validate_name(good) == good
