"""Honest signals (issue 16): a build in progress is not staleness, a failed deploy's rollback is
seen at once, and the meta repo's log says "failed" for a failed deploy.

Real git, nix, agent processes and sqlite (the ``parts`` fixture); scans are forced all through a
config change, as crash_watch's exit watcher and its ticks would make them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from actors.views import RowsApplied
from hivecore.daemon import Daemon
from hivecore.errors import HiveError
from tests.conftest import Parts
from tests.test_approvals import BROKEN_NIX, commit, main_of, repos, sonnet
from tests.test_meta import git


@contextmanager
def watching(parts: Parts, name: str) -> Iterator[list[tuple[bool, str | None]]]:
    """Every row of ``name`` the views apply meanwhile, as ``(needs_update, pending)``."""
    seen: list[tuple[bool, str | None]] = []

    def observe(applied: RowsApplied) -> None:
        old_new = applied.changes.get(name)
        if old_new is not None and old_new[1] is not None:
            seen.append((old_new[1].needs_update, old_new[1].pending))

    parts.views.observe(observe)
    yield seen


async def rescanning(parts: Parts, name: str, done: trio.Event) -> None:
    while not done.is_set():
        parts.views.request_rescan([name])
        await trio.sleep(0.01)


async def approve_while_scanning(parts: Parts, approval_id: int) -> None:
    done = trio.Event()
    error: HiveError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rescanning, parts, "coder", done)
        try:
            await parts.coordinator.approve(approval_id)
        except HiveError as exc:
            error = exc
        finally:
            done.set()
    if error is not None:
        raise error


async def test_a_config_change_never_shows_needs_update(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = repos(parts, "coder")
    seed = await main_of(applied)

    good = await commit(proposed, {"agent.nix": sonnet()}, "sonnet")
    approval = await c.request_apply_commit("coder", good)
    with watching(parts, "coder") as seen:
        await approve_while_scanning(parts, approval.id)
    assert any(pending == "rebuilding" for _, pending in seen), seen  # the scans saw the build
    assert not any(stale for stale, _ in seen), seen
    assert not parts.views.rows()["coder"].needs_update

    bad = await commit(proposed, {"agent.nix": BROKEN_NIX}, "broken")
    failing = await c.request_apply_commit("coder", bad)
    with watching(parts, "coder") as seen, pytest.raises(HiveError, match="does not evaluate"):
        await approve_while_scanning(parts, failing.id)
    assert await main_of(applied) == good != seed
    assert not any(stale for stale, _ in seen), seen  # not during the build, not after the rollback
    assert not parts.views.rows()["coder"].needs_update  # at once, not at the next 10 s tick
    # the meta repo's log says which deploy failed (the lock commit back is not a plain update)
    log = (await git(parts.config.paths.meta, "log", "--format=%s")).splitlines()
    assert any(line.startswith("failed deploy of coder") for line in log), log


async def test_hivectl_prints_a_build_error_with_its_line_breaks(hive: Daemon) -> None:
    from tests.conftest import call
    from tests.test_hivectl import err, hivectl

    sock = hive.config.host_socket_path
    assert (await hivectl("spawn", "coder", sock=sock)).returncode == 0
    bad = await commit(hive.config.paths.agent_config("coder"), {"agent.nix": BROKEN_NIX}, "broken")
    asked = await call(
        hive.config.manager_socket_path, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": bad}
    )
    result = await hivectl("approve", str(asked["approval_id"]), sock=sock)
    assert result.returncode == 1
    lines = err(result).splitlines()
    assert lines[0].startswith("hivectl: approval"), lines
    assert any(line.lstrip().startswith("error: syntax error") for line in lines), lines
    [caret] = [line for line in lines if line.rstrip().endswith("^")]  # nix's pointer, on its line
    assert caret.lstrip().startswith("|"), lines
    assert "\\x0a" not in err(result)
