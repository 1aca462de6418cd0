"""Locking the meta flake is confined (gate, issue 14): it runs as the evaluator uid.

``nix flake lock`` of the meta flake fetches every input and reads the base flake's ``flake.nix``.
Before, it ran as root: whatever an input named, nix could read. Now it runs as the evaluator uid
on a copy in a directory that uid owns, and the daemon reads the resulting ``flake.lock`` back as
data. Real nix, real git, as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from hivecore.errors import HiveError
from hivecore.meta import MetaRepo
from tests.conftest import Parts, make_config, start_parts
from tests.test_eval_confined import SECRET, leaked_into_store, store_entries
from tests.test_eval_confined import secrets as secrets
from tests.test_meta import commit_file


@pytest.fixture
async def parts(state_dir: Path) -> AsyncIterator[Parts]:
    async with trio.open_nursery() as nursery:
        yield await start_parts(make_config(state_dir), nursery)
        nursery.cancel_scope.cancel()


def hostile_flakes(s: dict[str, str]) -> dict[str, str]:
    """A ``flake.nix`` the manager could get into an agent's applied repo, naming root-only data."""
    tail = "outputs = _: { }; }\n"
    return {
        "git input": f'{{ inputs.s = {{ url = "git+file://{s["repo"]}"; flake = false; }}; ' + tail,
        "path input": f'{{ inputs.s = {{ url = "path:{s["repo"]}"; flake = false; }}; ' + tail,
        "flake input": f'{{ inputs.s.url = "git+file://{s["repo"]}"; ' + tail,
    }


def eval_store_holds_the_secret(state: Path) -> bool:
    store = state / "eval-store" / "nix" / "store"
    if not store.is_dir():
        return False
    for entry in store.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()][:50]
        if any(SECRET.encode() in f.read_bytes()[: 1 << 16] for f in files if not f.is_symlink()):
            return True
    return False


@pytest.mark.parametrize("variant", ["git input", "path input", "flake input"])
async def test_a_hostile_applied_flake_nix_is_never_read_by_the_lock(
    parts: Parts,
    secrets: dict[str, str],
    variant: str,
) -> None:
    """The applied repo is ``flake = false``: its ``flake.nix`` is data, its inputs never fetched."""
    await parts.coordinator.spawn("a")
    await commit_file(parts.config.paths.applied("a"), "flake.nix", hostile_flakes(secrets)[variant])
    before = store_entries()
    await parts.daemon.meta.lock_update_for_rebuild("a")
    lock_text = await trio.Path(parts.config.paths.meta / "flake.lock").read_text()
    assert secrets["repo"] not in lock_text
    assert set(json.loads(lock_text)["nodes"]) == {"root", "hyperhive", "agent-a"}
    assert leaked_into_store(before) == []
    assert not await trio.to_thread.run_sync(eval_store_holds_the_secret, parts.config.paths.root)


@pytest.fixture
def root_only_flake() -> Iterator[Path]:
    """A base flake in a root-only directory (like ``/root/flake``), committed."""
    top = Path(tempfile.mkdtemp(prefix="hclock"))
    os.chmod(top, 0o700)
    flake = top / "base"
    flake.mkdir()
    (flake / "flake.nix").write_text(f'{{ outputs = _: {{ lib.secret = "{SECRET}"; }}; }}\n')
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(flake))
    for args in (("init", "-q", "-b", "main"), ("add", "flake.nix"), ("commit", "-qm", "s")):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    try:
        yield flake
    finally:
        shutil.rmtree(top, ignore_errors=True)


async def test_the_lock_runs_as_the_evaluator_uid(state_dir: Path, root_only_flake: Path) -> None:
    """Proof of the uid: an input root can read and the evaluator cannot fails to lock (Permission
    denied), and nothing of it reaches either store; the meta repo keeps no partial lock."""
    paths = make_config(state_dir).paths
    paths.create_layout()
    repo = MetaRepo(paths, hyperhive_flake=f"git+file://{root_only_flake}")
    before = store_entries()
    with pytest.raises(HiveError, match=r"(?i)permission denied") as caught:
        await repo.sync([])
    assert SECRET not in str(caught.value)
    assert not (paths.meta / "flake.lock").exists()
    assert leaked_into_store(before) == []
    assert not await trio.to_thread.run_sync(eval_store_holds_the_secret, paths.root)
    assert [p.name for p in paths.root.iterdir() if p.name.startswith(".meta-lock-")] == []
