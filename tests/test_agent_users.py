"""Agents' uids: one per name, stable, recorded, never handed to another name (issue 14, finding 6)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from hivecore import agent_users, posix_acl
from hivecore.config import Config, StatePaths
from hivecore.limits import AGENT_ID_COUNT, DEFAULT_AGENT_UID_BASE, InvalidLimit, validate_agent_uid_base
from hivecore.names import MANAGER_NAME
from hivecore.proc import Credentials

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents change uid only under a root daemon")


def test_each_name_gets_its_own_stable_uid_and_the_shared_group(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    base = DEFAULT_AGENT_UID_BASE
    alpha = agent_users.credentials(paths, "alpha")
    manager = agent_users.credentials(paths, MANAGER_NAME)
    assert alpha == Credentials(uid=base + 1, gid=base + 1, groups=(base,))
    assert manager == Credentials(uid=base + 2, gid=base + 2, groups=(base,))
    assert agent_users.credentials(paths, "alpha") == alpha
    # the record outlives the process: a new daemon on the same state dir gives the same answers
    assert json.loads(paths.agent_uids.read_text())["uids"] == {"alpha": base + 1, MANAGER_NAME: base + 2}
    assert stat.S_IMODE(paths.agent_uids.stat().st_mode) == 0o600


def test_a_uid_is_never_handed_to_another_name(tmp_path: Path) -> None:
    """Records are never dropped: a purged agent's uid (which may still own files) stays its own."""
    paths = StatePaths(tmp_path)
    first = agent_users.allocate(paths, "gone")
    second = agent_users.allocate(paths, "next")
    assert second != first
    assert agent_users.allocate(paths, "gone") == first


def test_ids_the_host_knows_are_skipped(tmp_path: Path) -> None:
    """A base placed on existing users (nobody = 65534) skips them instead of sharing their uid."""
    paths = StatePaths(tmp_path, agent_uid_base=65533)
    assert agent_users.allocate(paths, "alpha") == 65535


def test_concurrent_allocations_never_collide(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    names = [f"a{i}" for i in range(40)]
    got: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda n=n: got.setdefault(n, agent_users.allocate(paths, n))) for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got.values())) == len(names)
    assert agent_users.recorded(paths) == got


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"uids": {"a": "x"}}', b'{"uids": 3}'])
def test_a_damaged_record_is_refused_not_replaced(tmp_path: Path, content: bytes) -> None:
    paths = StatePaths(tmp_path)
    paths.agent_uids.write_bytes(content)
    with pytest.raises(agent_users.NoAgentIds, match="damaged"):
        agent_users.credentials(paths, "alpha")
    assert paths.agent_uids.read_bytes() == content


def test_an_exhausted_range_is_a_clear_error(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    base = DEFAULT_AGENT_UID_BASE
    table = {f"n{i}": base + 1 + i for i in range(AGENT_ID_COUNT - 1)}
    paths.agent_uids.write_text(json.dumps({"version": 1, "uids": table}))
    with pytest.raises(agent_users.NoAgentIds, match="no free agent uid"):
        agent_users.allocate(paths, "alpha")


def test_a_non_root_daemon_runs_agents_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert agent_users.credentials(StatePaths(tmp_path), "alpha") is None


@pytest.mark.parametrize("base", [0, 999, 2**31, -5, True])
def test_the_uid_base_is_validated(tmp_path: Path, base: int) -> None:
    with pytest.raises(InvalidLimit):
        validate_agent_uid_base(base)
    with pytest.raises(InvalidLimit):
        Config(state_dir=tmp_path, agent_uid_base=base)


def test_config_hands_its_base_to_the_paths(tmp_path: Path) -> None:
    assert Config(state_dir=tmp_path, agent_uid_base=70000).paths.agent_uid_base == 70000


# --- POSIX ACLs -----------------------------------------------------------------------------------


def test_acl_roundtrip_and_mask() -> None:
    entries = posix_acl.from_mode(0o750)
    granted = posix_acl.with_entry(entries, posix_acl.USER, 1234, posix_acl.X)
    assert posix_acl.decode(posix_acl.encode(granted)) == tuple(sorted(granted, key=lambda e: (e.tag, e.id)))
    mask = next(e for e in granted if e.tag == posix_acl.MASK)
    assert mask.perm == 0o5  # the group's r-x and the user's x


def test_a_traverse_grant_opens_the_dir_to_that_uid_only(state_dir: Path) -> None:
    """(``state_dir``: under /tmp, which every uid traverses; pytest's tmp_path is root's only)."""
    import subprocess

    tmp_path = state_dir
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "f").write_text("x")
    os.chmod(tmp_path, 0o755)
    os.chmod(top, 0o700)
    uid = DEFAULT_AGENT_UID_BASE + 7

    def can_read(who: int) -> bool:
        probe = subprocess.run(
            ["cat", str(top / "sub" / "f")], user=who, group=who, extra_groups=[], check=False
        )
        return probe.returncode == 0

    assert not can_read(uid)
    assert posix_acl.grant(top, posix_acl.USER, uid)
    assert not posix_acl.grant(top, posix_acl.USER, uid)  # idempotent
    assert can_read(uid)
    assert not can_read(uid + 1)
    assert posix_acl.effective_group_bits(top) == 0
    # narrowing a wider dir keeps the grant and takes the group's bits off
    wide = tmp_path / "wide"
    (wide / "sub").mkdir(parents=True)
    (wide / "sub" / "f").write_text("x")
    os.chmod(wide, 0o750)
    posix_acl.grant(wide, posix_acl.USER, uid)
    assert posix_acl.effective_group_bits(wide) == 0o5
    assert posix_acl.narrow(wide, 0o700) == 0o750
    assert posix_acl.narrow(wide, 0o700) is None
    assert posix_acl.effective_group_bits(wide) == 0
    top = wide
    assert can_read(uid)


def test_the_evaluator_uid_is_never_an_agents(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    top = agent_users.evaluator_uid(paths)
    assert top == DEFAULT_AGENT_UID_BASE + AGENT_ID_COUNT - 1
    table = {f"n{i}": uid for i, uid in enumerate(range(DEFAULT_AGENT_UID_BASE + 1, top - 1))}
    paths.agent_uids.write_text(json.dumps({"version": 1, "uids": table}))
    assert agent_users.allocate(paths, "last") == top - 1
    with pytest.raises(agent_users.NoAgentIds, match="no free agent uid"):
        agent_users.allocate(paths, "alpha")


def test_the_layout_check_at_each_start_keeps_the_grants(tmp_path: Path) -> None:
    """create_layout narrows wider dirs at every daemon start: a chmod would have set the ACL mask
    and taken every agent's traverse off (a re-adopted agent lost its socket; the evaluator, meta/)."""
    paths = StatePaths(tmp_path / "state")
    paths.create_layout()
    for d in (paths.agents, paths.applied_root, paths.meta):
        assert posix_acl.grant(d, posix_acl.USER, DEFAULT_AGENT_UID_BASE + 5, posix_acl.R | posix_acl.X)
    os.chmod(paths.db.parent, 0o755)  # something to narrow, beside the granted dirs
    paths.create_layout()
    for d in (paths.agents, paths.applied_root, paths.meta):
        assert not posix_acl.grant(d, posix_acl.USER, DEFAULT_AGENT_UID_BASE + 5, posix_acl.R | posix_acl.X)
        assert posix_acl.effective_mode(d) == 0o700
    assert posix_acl.effective_mode(paths.db.parent) == 0o700
