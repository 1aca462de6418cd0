"""kill -9 of a real ``hive-c0re serve`` mid-verb, then a restart: the job journal's replay must
leave every agent in a state an operator would call consistent.

For spawn, restart, destroy and purge, at several (seeded) random points: send the verb over
host.sock, SIGKILL the daemon after a random delay, start a new daemon on the same state dir, and
check that each agent is running, stopped-and-failed, or gone with its tombstone; that no transient
is stuck; that no job is left running in the journal; and that no agent process is orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore.sockets.client import Unreachable, request
from tests.waiting import eventually
from tests.worker import AGENT_UID_BASE

ROOT = Path(__file__).resolve().parent.parent


async def serve(state_dir: Path, log: Path) -> trio.Process:
    """Start a daemon (logs to ``log``) and wait until host.sock answers."""
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--dashboard-port", "0", "--crash-watch-interval", "3600", "--no-ensure-manager"]
    cmd += ["--agent-uid-base", str(AGENT_UID_BASE)]
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.DEVNULL, stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    sock = str(state_dir / "run" / "host.sock")

    async def answers() -> bool:
        assert proc.poll() is None, "serve exited early; see its log"
        try:
            answer = await trio.to_thread.run_sync(request, sock, b'{"cmd":"list"}\n', 5.0)
            return bool(json.loads(answer)["ok"])
        except (Unreachable, OSError, ValueError):
            return False

    await eventually(answers, 30, interval=0.05)
    return proc


async def ask(state_dir: Path, req: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    line = json.dumps(req).encode() + b"\n"
    sock = str(state_dir / "run" / "host.sock")
    answer: dict[str, Any] = json.loads(await trio.to_thread.run_sync(request, sock, line, timeout))
    return answer


def processes_under(run_process: Path) -> dict[str, set[int]]:
    """Live (non-zombie) processes whose command line names an agent's run dir, by agent."""
    out: dict[str, set[int]] = {}
    marker = str(run_process) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            name = cmdline.split(marker, 1)[1].split("\0", 1)[0].split("/", 1)[0]
            out.setdefault(name, set()).add(int(entry.name))
    return out


async def wait_journaled(state_dir: Path, kind: str) -> None:
    """Wait (bounded, real time) until the daemon has journaled the job: it is under way."""

    def journaled() -> bool:
        with contextlib.closing(sqlite3.connect(state_dir / "db" / "hive.sqlite", timeout=5)) as db:
            query = "SELECT count(*) FROM jobs WHERE kind=? AND state IN ('queued','running')"
            return bool(db.execute(query, (kind,)).fetchone()[0])

    # another process writes it; poll fast, the kill must land while the job is still unfinished
    await eventually(lambda: trio.to_thread.run_sync(journaled), 30, interval=0.002)


async def sigkill(proc: trio.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    with trio.fail_after(10):
        await proc.wait()


CASES = [("spawn", 0.0), ("spawn", 0.1), ("restart", 0.0), ("restart", 0.3), ("destroy", 0.0)]
CASES += [("destroy", 0.2), ("purge", 0.0), ("purge", 0.02)]


@pytest.mark.parametrize(("verb", "base_delay"), CASES)
async def test_sigkill_mid_verb_then_restart_is_consistent(
    state_dir: Path, verb: str, base_delay: float
) -> None:
    rng = random.Random(f"{verb}{base_delay}")
    log = state_dir.parent / f"{state_dir.name}.log"
    proc = await serve(state_dir, log)
    try:
        if verb != "spawn":
            assert (await ask(state_dir, {"cmd": "spawn", "name": "coder"}))["ok"]
        if verb == "purge":
            assert (await ask(state_dir, {"cmd": "destroy", "name": "coder"}))["ok"]
        req = {
            "spawn": {"cmd": "spawn", "name": "coder"},
            "restart": {"cmd": "restart", "name": "coder"},
            "destroy": {"cmd": "destroy", "name": "coder"},
            "purge": {"cmd": "purge_tombstone", "name": "coder"},
        }[verb]
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                with contextlib.suppress(Unreachable, OSError, ValueError):
                    await ask(state_dir, req)  # the daemon may die under us: exactly the point

            nursery.start_soon(send)
            await wait_journaled(state_dir, verb)
            await trio.sleep(rng.uniform(0, base_delay))  # a random point inside the job
            await sigkill(proc)
        proc = await serve(state_dir, log)  # the new daemon replays what was interrupted

        statuses = (await ask(state_dir, {"cmd": "agent_status"}))["agent_statuses"]
        rows = {r["name"]: r for r in statuses}
        tombstones = {p.name for p in (state_dir / "agents").iterdir()} - set(rows)
        assert all(r.get("pending") is None for r in rows.values()), rows  # no stuck transient
        with sqlite3.connect(state_dir / "db" / "hive.sqlite") as db:
            unfinished = db.execute(
                "SELECT id, kind FROM jobs WHERE state IN ('queued','running')"
            ).fetchall()
        assert unfinished == []
        for row in rows.values():  # running, or stopped and marked failed
            assert row["running"] or row.get("failed"), row
        # gone agents keep their tombstone unless purged; nothing half-purged is left listed
        if "coder" not in rows and verb != "purge":
            assert "coder" in tombstones
        # no orphans: only running agents have processes, at most one shim group each
        procs = processes_under(state_dir / "run" / "process")
        assert set(procs) <= {n for n, r in rows.items() if r["running"]}, (procs, rows)
        # and the agent is manageable again
        if "coder" in rows:
            assert (await ask(state_dir, {"cmd": "stop", "scope": {"agent_names": ["coder"]}}))["ok"]
        elif "coder" in tombstones:
            assert (await ask(state_dir, {"cmd": "purge_tombstone", "name": "coder"}))["ok"]
        else:
            assert (await ask(state_dir, {"cmd": "spawn", "name": "coder"}))["ok"]
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        log.unlink(missing_ok=True)


def nix_processes(marker: str) -> list[int]:
    """Live nix processes whose command line names ``marker`` (the state dir's meta flake)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if argv and argv[0].endswith(b"nix") and any(marker.encode() in a for a in argv) and state != "Z":
            found.append(int(entry.name))
    return found


async def test_sigkill_of_the_daemon_during_a_long_eval_leaves_no_nix_process(state_dir: Path) -> None:
    """Issue 14, finding 5: the evaluation of an endless agent.nix dies with the daemon."""
    from tests.test_eval_confined import FOREVER
    from tests.test_meta import commit_file

    log = state_dir.parent / f"{state_dir.name}.log"
    proc = await serve(state_dir, log)
    marker = f"{state_dir / 'meta'}#hiveAgents.coder"
    try:
        assert (await ask(state_dir, {"cmd": "spawn", "name": "coder"}))["ok"]
        await commit_file(
            state_dir / "applied" / "coder", "agent.nix", "{ ... }: builtins.seq (" + FOREVER + ") { }\n"
        )
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                with contextlib.suppress(Unreachable, OSError, ValueError):
                    await ask(state_dir, {"cmd": "rebuild", "name": "coder"}, timeout=120)

            nursery.start_soon(send)
            await eventually(lambda: bool(nix_processes(marker)), 30)  # the endless eval runs
            await sigkill(proc)
        await eventually(lambda: not nix_processes(marker), 10)
    finally:
        if proc.returncode is None:
            await sigkill(proc)
        for pid in nix_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.unlink(missing_ok=True)
