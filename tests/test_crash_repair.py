"""What a crash leaves behind, repaired at the next start: real ``hive-c0re serve`` processes,
SIGKILLed mid-job (issue 16, items 1, 3 and 8).

* item 1: a kill -9 mid-build of an approved config change, plus a stale ``index.lock`` in the
  agent's applied repo (what a crash during a git command leaves): the next start rolls main back
  (for real), tags ``failed/<id>``, leaves no ``refs/hive/previous-main/<id>`` and no lock, and
  auto_update does not deploy the failed commit.
* item 3: an agent stopped on purpose stays stopped across rebuild, meta update, kill -9 and
  restart (the manager too); ``start`` of a running agent says "already running"; the replay of a
  build cut short while it had the agent stopped brings it back.
* item 4: spawn / destroy --purge cycles leave nothing behind; a purge that failed half-way is
  completed by a retry.
* item 8: a meta update killed mid-way resumes its recorded plan at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from hivecore.errors import HiveError
from hivecore.harness import Channel
from hivecore.repos import clean_env
from hivecore.services import lifecycle as lifecycle_mod
from hivecore.sockets.client import Unreachable, request
from tests.conftest import Parts
from tests.test_approvals import commit, sonnet
from tests.test_eval_confined import FOREVER
from tests.test_kill9 import ask, nix_processes, sigkill
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


async def serve(
    state_dir: Path, log: Path, *, auto_update: bool = False, ensure_manager: bool = False
) -> trio.Process:
    """A daemon (logs to ``log``) once host.sock answers; auto_update and ensure_manager only when
    asked (``ensure_manager`` implies ``auto_update``, as a real start has them)."""
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--dashboard-port", "0", "--crash-watch-interval", "3600"]
    if not ensure_manager:
        cmd.append("--no-ensure-manager")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if auto_update or ensure_manager:
        env.pop("HIVE_SKIP_AUTO_UPDATE", None)
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=out, env=env)
    sock = str(state_dir / "run" / "host.sock")

    async def answers() -> bool:
        assert proc.poll() is None, f"serve exited early; see {log}"
        try:
            answer = await trio.to_thread.run_sync(request, sock, b'{"cmd":"list"}\n', 5.0)
            return bool(json.loads(answer)["ok"])
        except (Unreachable, OSError, ValueError):
            return False

    await eventually(answers, 30, interval=0.05)
    return proc


async def manager_call(state_dir: Path, req: dict[str, Any]) -> dict[str, Any]:
    chan = await Channel.open(state_dir / "run" / "manager" / "mcp.sock")
    try:
        with trio.fail_after(30):
            return await chan.call(req)
    finally:
        await chan.aclose()


async def git_out(repo: Path, *args: str) -> str:
    result = await trio.run_process(
        ["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args],
        capture_stdout=True,
        capture_stderr=True,
        env=clean_env(),
        check=False,
    )
    return result.stdout.decode().strip()


def jobs(state_dir: Path, query: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(state_dir / "db" / "hive.sqlite", timeout=5)) as db:
        return db.execute(query, params).fetchall()


async def approval_row(state_dir: Path, aid: int) -> dict[str, Any]:
    answer = await ask(state_dir, {"cmd": "pending"})
    return next(a for a in answer["approvals"] if a["id"] == aid)


async def test_kill9_mid_build_with_a_stale_index_lock_rolls_back_for_real(state_dir: Path) -> None:
    log = state_dir.parent / f"{state_dir.name}.log"
    applied = state_dir / "applied" / "coder"
    proc = await serve(state_dir, log)
    try:
        assert (await ask(state_dir, {"cmd": "spawn", "name": "coder"}))["ok"]
        seed = await git_out(applied, "rev-parse", "refs/heads/main")
        hang = "{ ... }: builtins.seq (" + FOREVER + ") { }\n"
        sha = await commit(state_dir / "agents" / "coder" / "config", {"agent.nix": hang}, "hangs")
        asked = await manager_call(
            state_dir, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha}
        )
        assert asked["ok"], asked
        aid = asked["approval_id"]
        marker = f"{state_dir / 'meta'}#hiveAgents.coder"
        async with trio.open_nursery() as nursery:

            async def approve() -> None:
                with contextlib.suppress(Unreachable, OSError, ValueError):
                    await ask(state_dir, {"cmd": "approve", "id": aid}, timeout=120)

            nursery.start_soon(approve)
            await eventually(lambda: bool(nix_processes(marker)), 30)  # the build evaluates it
            assert await git_out(applied, "rev-parse", "refs/heads/main") == sha
            await sigkill(proc)
        # what a crash during a git command leaves: the index lock (and a ref lock)
        (applied / ".git" / "index.lock").write_bytes(b"")
        (applied / ".git" / "refs" / "heads" / "main.lock").write_text(sha + "\n")

        proc = await serve(state_dir, log, auto_update=True)

        async def settled() -> bool:
            return bool((await approval_row(state_dir, aid))["status"] != "pending")

        await eventually(settled, 30)

        def auto_update_over() -> bool:
            rebuilds = jobs(state_dir, "SELECT id FROM jobs WHERE kind='rebuild' AND source='auto_update'")
            return bool(rebuilds) or "auto_update: done" in log.read_text()

        await eventually(auto_update_over, 60)
        row = await approval_row(state_dir, aid)
        assert row["status"] == "failed"
        assert "restarted during the build" in row["note"]
        assert "NOT rolled back" not in row["note"]
        assert await git_out(applied, "rev-parse", "refs/heads/main") == seed  # rolled back for real
        assert (applied / "agent.nix").read_text() != hang  # and the work tree with it
        assert await git_out(applied, "rev-parse", f"refs/tags/failed/{aid}^{{commit}}") == sha
        assert "restarted during the build" in await git_out(
            applied, "for-each-ref", "--format=%(contents)", f"refs/tags/failed/{aid}"
        )
        assert await git_out(applied, "for-each-ref", "refs/hive") == ""
        assert not (applied / ".git" / "index.lock").exists()
        assert not (applied / ".git" / "refs" / "heads" / "main.lock").exists()
        # auto_update deployed nothing: the failed commit was rolled back, so coder is not stale
        assert jobs(state_dir, "SELECT id FROM jobs WHERE kind='rebuild' AND source='auto_update'") == []
        status = (await ask(state_dir, {"cmd": "agent_status"}))["agent_statuses"]
        coder = next(r for r in status if r["name"] == "coder")
        assert coder["running"], coder
        assert not coder["needs_update"], coder
        # and the agent takes a good change again
        good = await commit(state_dir / "agents" / "coder" / "config", {"agent.nix": sonnet()}, "fixed")
        again = await manager_call(
            state_dir, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": good}
        )
        assert (await ask(state_dir, {"cmd": "approve", "id": again["approval_id"]}, timeout=120))["ok"]
        assert await git_out(applied, "rev-parse", "refs/heads/main") == good
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


# --- item 3: intent survives rebuilds, meta updates, restarts and kill -9 ------------------------


async def statuses(state_dir: Path) -> dict[str, dict[str, Any]]:
    rows = (await ask(state_dir, {"cmd": "agent_status"}))["agent_statuses"]
    return {r["name"]: r for r in rows}


def kicks(state_dir: Path, name: str) -> int:
    query = "SELECT count(*) FROM messages WHERE recipient=? AND sender='system'"
    return int(jobs(state_dir, query, name)[0][0])


async def test_an_agent_stopped_on_purpose_stays_stopped(state_dir: Path) -> None:
    """stop, then rebuild, meta-update hyperhive (UPD4TE 4LL), kill -9 of the daemon, restart (with
    ensure_manager and auto_update): the stopped agents (the manager too) stay stopped; a running one
    is rebuilt and runs; ``start`` of a running agent says so and does not kick it."""
    log = state_dir.parent / f"{state_dir.name}.log"
    proc = await serve(state_dir, log, ensure_manager=True)
    try:

        async def manager_runs() -> bool:
            row = (await statuses(state_dir)).get("hm1nd")
            return row is not None and row["running"] and row.get("pending") is None

        await eventually(manager_runs, 60)
        for name in ("coder", "idle"):
            assert (await ask(state_dir, {"cmd": "spawn", "name": name}))["ok"]
        for name in ("idle", "hm1nd"):
            stopped = await ask(state_dir, {"cmd": "stop", "scope": {"agent_names": [name]}})
            assert stopped["ok"], stopped
        assert (await ask(state_dir, {"cmd": "rebuild", "name": "idle"}, timeout=120))["ok"]
        assert not (await statuses(state_dir))["idle"]["running"]
        updated = await ask(state_dir, {"cmd": "meta_update", "inputs": ["hyperhive"]}, timeout=300)
        assert updated["ok"], updated
        rows = await statuses(state_dir)
        assert rows["coder"]["running"]
        assert not rows["idle"]["running"]
        assert not rows["hm1nd"]["running"]
        # start of a running agent: said so, nothing done (no kick)
        before = kicks(state_dir, "coder")
        pid = rows["coder"].get("pid")
        started = await ask(state_dir, {"cmd": "start", "scope": {"agent_names": ["coder"]}})
        assert started == {"version": 1, "ok": True, "message": "coder already running"}
        assert kicks(state_dir, "coder") == before
        assert (await statuses(state_dir))["coder"].get("pid") == pid
        await sigkill(proc)
        # the next daemon brings the manager up unless it was stopped on purpose
        env_proc = await serve(state_dir, log, ensure_manager=True)
        proc = env_proc
        await eventually(lambda: "was stopped on purpose; leaving it stopped" in log.read_text(), 30)
        assert (await ask(state_dir, {"cmd": "rebuild", "name": "idle"}, timeout=120))["ok"]
        rows = await statuses(state_dir)
        assert not rows["idle"]["running"], rows["idle"]
        assert not rows["hm1nd"]["running"], rows["hm1nd"]
        assert rows["coder"]["running"]
        # an explicit start ends it
        assert (await ask(state_dir, {"cmd": "start", "scope": {"agent_names": ["idle"]}}))["ok"]
        assert (await statuses(state_dir))["idle"]["running"]
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


# --- item 8: a meta update interrupted by kill -9 finishes its plan at the next start -------------


async def test_kill9_mid_meta_update_rebuilds_the_agents_it_had_not_reached(state_dir: Path) -> None:
    log = state_dir.parent / f"{state_dir.name}.log"
    proc = await serve(state_dir, log)
    try:
        for name in ("a1", "b1", "c1"):
            assert (await ask(state_dir, {"cmd": "spawn", "name": name}))["ok"]
        async with trio.open_nursery() as nursery:

            async def update() -> None:
                with contextlib.suppress(Unreachable, OSError, ValueError):
                    await ask(state_dir, {"cmd": "meta_update", "inputs": ["hyperhive"]}, timeout=300)

            nursery.start_soon(update)
            query = "SELECT id FROM jobs WHERE kind='rebuild' AND agent='b1' AND state='running'"

            async def b1_rebuilding() -> bool:
                return bool(await trio.to_thread.run_sync(lambda: jobs(state_dir, query)))

            await eventually(b1_rebuilding, 60, interval=0.002)
            await sigkill(proc)
        (before,) = jobs(state_dir, "SELECT max(id) FROM jobs")[0]
        proc = await serve(state_dir, log)  # the lane replays before host.sock answers

        def replay_over() -> bool:
            rows = jobs(state_dir, "SELECT state FROM jobs WHERE kind='meta_update' AND id>?", before)
            return bool(rows) and rows[0][0] not in ("queued", "running")

        await eventually(replay_over, 120)
        rebuilt = jobs(
            state_dir, "SELECT agent, state FROM jobs WHERE kind='rebuild' AND id>? ORDER BY id", before
        )
        assert ("b1", "done") in rebuilt, rebuilt  # the interrupted one, redone
        assert ("c1", "done") in rebuilt, rebuilt  # the one it had not reached
        assert "a1" not in {a for a, _ in rebuilt}, rebuilt  # finished before the kill: not again
        assert [
            s for (s,) in jobs(state_dir, "SELECT state FROM jobs WHERE kind='meta_update' AND id>?", before)
        ] == ["done"]
        assert jobs(state_dir, "SELECT id FROM jobs WHERE state IN ('queued','running')") == []
        rows = await statuses(state_dir)
        assert all(rows[n]["running"] and not rows[n]["needs_update"] for n in ("a1", "b1", "c1")), rows
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


# --- item 4: destroy --purge never fails halfway; a retry completes one that did ------------------


def left_of(state_dir: Path, name: str) -> list[Path]:
    """Everything of agent ``name`` still on disk."""
    places = [
        state_dir / "agents" / name,
        state_dir / "applied" / name,
        state_dir / "run" / "agents" / name,
        state_dir / "run" / "process" / name,
    ]
    return [p for p in places if p.exists() or p.is_symlink()]


async def test_spawn_destroy_purge_cycles_leave_nothing_behind(state_dir: Path) -> None:
    log = state_dir.parent / f"{state_dir.name}.log"
    proc = await serve(state_dir, log)
    try:
        # 20 keep the suite under 2 min; HIVE_TEST_PURGE_CYCLES=50 is the loop
        for cycle in range(int(os.environ.get("HIVE_TEST_PURGE_CYCLES", "20"))):
            spawned = await ask(state_dir, {"cmd": "spawn", "name": "m1"}, timeout=120)
            assert spawned["ok"], (cycle, spawned)
            gone = await ask(state_dir, {"cmd": "destroy", "name": "m1", "purge": True}, timeout=120)
            assert gone["ok"], (cycle, gone)
            # the socket dir goes with the row (its owner, the agent sockets actor, removes it)
            try:
                await eventually(lambda: left_of(state_dir, "m1") == [], 30)
            except AssertionError:
                raise AssertionError(f"cycle {cycle}: still on disk: {left_of(state_dir, 'm1')}") from None
            listed = await ask(state_dir, {"cmd": "list"})
            assert "m1" not in listed["agents"], cycle
        assert "Errno" not in log.read_text()
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


async def test_a_purge_that_fails_half_way_is_completed_by_a_retry(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = parts.coordinator
    state_dir = parts.config.paths.root
    await c.spawn("m1")
    real = lifecycle_mod.remove_tree
    calls: list[Path] = []

    def fails_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:  # what the mcp.sock race was: a file vanishing, or any error mid-delete
            raise HiveError(f"could not delete {path / 'x'}: injected; purge again to finish")
        real(path)

    monkeypatch.setattr(lifecycle_mod, "remove_tree", fails_once)
    with pytest.raises(HiveError, match="purge again to finish"):
        await c.destroy("m1", purge=True)
    assert "m1" not in await parts.runtime.list()  # the container is gone; its state is kept
    await c.destroy("m1", purge=True)  # the operator's retry completes it
    # (the socket dir is the agent sockets actor's, which these parts do not run; the loop below
    # checks it under a real serve)
    assert [p for p in left_of(state_dir, "m1") if p.parent.parent.name != "run"] == []
    assert not (state_dir / "run" / "process" / "m1").exists()
    assert [t.name for t in await parts.daemon.views.refresh_tombstones()] == []


def test_the_socket_dir_goes_even_when_its_socket_vanishes_under_the_unbind(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 4: the server's own cleanup unlinked mcp.sock between the unbind's check and
    its unlink; the unlink's FileNotFoundError skipped the rmdir and run/agents/<n> outlived a
    purge (2 of 4 CI runs). The unbind now waits for the server task to end, and a socket already
    gone is no reason to keep the directory."""
    from actors.agent_sockets import AgentSockets
    from tests.conftest import make_config

    config = make_config(state_dir)
    directory = config.agent_socket_dir("m1")
    directory.mkdir(parents=True)
    (directory / "mcp.sock").write_text("")
    real_unlink = Path.unlink

    def raced(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self)  # the server's cleanup got there first
        if not missing_ok:
            raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "is_socket", lambda self: True)
    monkeypatch.setattr(Path, "unlink", raced)
    views = SimpleNamespace(observe=lambda observer: None)
    AgentSockets(config, views, lambda name: None)._remove_dir("m1")  # type: ignore[arg-type,return-value]
    assert not directory.exists()


def test_remove_tree_tolerates_entries_vanishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mcp.sock race: an entry listed by rmtree is gone when it is unlinked."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mcp.sock").write_text("")
    real_unlink = os.unlink

    def vanishing_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(path, *args, **kwargs)
        if str(path).endswith("mcp.sock"):
            raise FileNotFoundError(2, "No such file or directory", "mcp.sock")

    monkeypatch.setattr(os, "unlink", vanishing_unlink)
    lifecycle_mod.remove_tree(tmp_path / "d")
    assert not (tmp_path / "d").exists()


async def test_kill9_while_a_build_has_the_agent_stopped_brings_it_back(state_dir: Path) -> None:
    """Item 3: the replay of an approved config change a kill -9 cut short between the build's stop
    and start rolls main back and brings the agent back up (it was running; nobody stopped it on
    purpose)."""
    log = state_dir.parent / f"{state_dir.name}.log"
    applied = state_dir / "applied" / "coder"
    marker = state_dir / "run" / "process" / "coder" / "stop-requested"
    proc = await serve(state_dir, log)
    try:
        assert (await ask(state_dir, {"cmd": "spawn", "name": "coder"}))["ok"]
        seed = await git_out(applied, "rev-parse", "refs/heads/main")
        sha = await commit(state_dir / "agents" / "coder" / "config", {"agent.nix": sonnet()}, "sonnet")
        asked = await manager_call(
            state_dir, {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha}
        )
        aid = asked["approval_id"]
        async with trio.open_nursery() as nursery:

            async def approve() -> None:
                with contextlib.suppress(Unreachable, OSError, ValueError):
                    await ask(state_dir, {"cmd": "approve", "id": aid}, timeout=120)

            nursery.start_soon(approve)
            # the build is stopping the agent: its stop request is written before any signal
            await eventually(lambda: marker.exists(), 60, interval=0.001)
            await sigkill(proc)
        assert not await git_out(applied, "rev-parse", "--verify", "--quiet", f"refs/tags/deployed/{aid}")

        pid = json.loads((state_dir / "run" / "process" / "coder" / "pid").read_text())["pid"]
        # the daemon died between writing the stop request and signalling: finish its stop by hand
        # (SIGTERM to the shim, as runtime.stop sends it), so the agent is down as the build left it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        def down() -> bool:  # the agent obeys the SIGTERM the build sent (a zombie counts as gone)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                return True
            return state == "Z"

        await eventually(down, 30)
        proc = await serve(state_dir, log)

        async def back_up() -> bool:
            row = (await statuses(state_dir)).get("coder")
            return bool(row and row["running"] and row.get("pending") is None)

        await eventually(back_up, 60)
        row = await approval_row(state_dir, aid)
        assert row["status"] == "failed", row
        assert await git_out(applied, "rev-parse", "refs/heads/main") == seed
        assert not (await statuses(state_dir))["coder"]["needs_update"]
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


async def test_a_lock_appearing_mid_build_still_tags_rolls_back_and_blocks_rebuilds(parts: Parts) -> None:
    """Item 1 at run time: git's ``index.lock`` (a git that died mid-command) appears while the
    build runs. main goes back by ``update-ref`` anyway, ``failed/<id>`` is tagged, the note says
    only the work tree is out of sync, and no rebuild runs until it can be re-synced."""
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    seed = await git_out(applied, "rev-parse", "refs/heads/main")
    sha = await commit(proposed, {"agent.nix": sonnet()}, "sonnet")
    approval = await c.request_apply_commit("coder", sha)
    lock = applied / ".git" / "index.lock"

    async def breaks(name: str) -> None:
        lock.write_bytes(b"")
        raise HiveError("the build broke")

    parts.daemon.lifecycle.build = breaks
    with pytest.raises(HiveError, match="the build broke"):
        await c.approve(approval.id)
    parts.daemon.lifecycle.build = None
    assert await git_out(applied, "rev-parse", "refs/heads/main") == seed  # main is back
    assert await git_out(applied, "rev-parse", f"refs/tags/failed/{approval.id}^{{commit}}") == sha
    [row] = [a for a in await c.approvals() if a.id == approval.id]
    assert row.status == "failed"
    assert row.note is not None
    assert "the build broke" in row.note
    assert "was rolled back" in row.note
    assert "work tree could not be re-synced" in row.note
    assert "NOT rolled back" not in row.note
    assert await git_out(applied, "for-each-ref", "refs/hive") != ""  # the marker stays
    with pytest.raises(HiveError, match="coder was not built"):
        await c.rebuild("coder")  # the work tree still holds the failed config: never built
    lock.unlink()
    await c.rebuild("coder")  # settles: the work tree re-synced, the marker dropped, then built
    assert await git_out(applied, "for-each-ref", "refs/hive") == ""
    assert (applied / "agent.nix").read_text() != sonnet()
    assert not parts.views.rows()["coder"].needs_update
