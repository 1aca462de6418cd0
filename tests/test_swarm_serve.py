"""Two real ``hive-c0re serve`` processes joined over a real ``nats-server -js`` (issue 20): b's agents
appear in a's ``hivectl swarm`` within a second, and b ``kill -9``ed shows unreachable within the
heartbeat TTL. Also: the flags are checked, and without ``--swarm`` the verb says so."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore.sockets.client import Unreachable
from tests.nats_server import NatsServer
from tests.procs import kill_everything_under
from tests.test_kill9 import ROOT, ask
from tests.waiting import eventually
from tests.worker import AGENT_UID_BASE

TTL = 3.0


async def swarm_serve(state_dir: Path, log: Path, nats: NatsServer, name: str) -> trio.Process:
    """Start ``hive-c0re serve`` joined to ``nats`` as ``name``; wait until host.sock answers."""
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--dashboard-port", "0", "--crash-watch-interval", "3600", "--no-ensure-manager"]
    cmd += ["--agent-uid-base", str(AGENT_UID_BASE)]
    cmd += ["--swarm", nats.url, "--hive-name", name, "--swarm-heartbeat-ttl", str(TTL)]
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.DEVNULL, stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )

    async def answers() -> bool:
        assert proc.poll() is None, f"serve exited early; see {log}"
        try:
            return bool((await ask(state_dir, {"cmd": "list"}, 5.0))["ok"])
        except (Unreachable, OSError, ValueError):
            return False

    await eventually(answers, 30, interval=0.05)
    return proc


def hivectl(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sock = str(state_dir / "run" / "host.sock")
    return subprocess.run(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", sock, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


async def swarm(state_dir: Path) -> dict[str, Any]:
    answer = await ask(state_dir, {"cmd": "swarm_status"})
    assert answer["ok"], answer
    status: dict[str, Any] = answer["swarm"]
    return status


def hive(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((h for h in status["hives"] if h["name"] == name), None)


async def test_b_agents_show_in_a_within_a_second_and_b_killed_turns_unreachable(
    nats_server: NatsServer, state_dir: Path, tmp_path: Path
) -> None:
    a_dir, b_dir = state_dir / "a", state_dir / "b"
    os.chmod(state_dir, 0o755)  # the confined nix evaluation (another uid) traverses to b's state dir
    a = await swarm_serve(a_dir, tmp_path / "a.log", nats_server, "alpha")
    b = await swarm_serve(b_dir, tmp_path / "b.log", nats_server, "beta")
    try:

        async def joined() -> bool:
            states = [(await swarm(d))["state"] for d in (a_dir, b_dir)]
            return states == ["connected", "connected"]

        await eventually(joined, 30, interval=0.05)
        spawned = await ask(b_dir, {"cmd": "spawn", "name": "coder"})
        assert spawned["ok"], spawned

        # from the moment b's own status shows the agent, a shows it within a second
        async def b_has_it() -> bool:
            rows = (await ask(b_dir, {"cmd": "agent_status"}))["agent_statuses"] or []
            return any(r["name"] == "coder" for r in rows)

        await eventually(b_has_it, 60, interval=0.02)
        seen_at = time.monotonic()

        async def a_sees_it() -> bool:
            beta = hive(await swarm(a_dir), "beta")
            return beta is not None and beta["reachable"] and [x["name"] for x in beta["agents"]] == ["coder"]

        await eventually(a_sees_it, 1.0, interval=0.02)
        assert time.monotonic() - seen_at < 1.0
        out = hivectl(a_dir, "swarm")
        assert out.returncode == 0, out.stderr
        assert "hive alpha on" in out.stdout
        assert "connected" in out.stdout
        assert any(line.split()[:1] == ["beta"] and "coder" in line for line in out.stdout.splitlines())
        raw = hivectl(a_dir, "--json", "swarm")
        assert json.loads(raw.stdout)["swarm"]["hive"] == "alpha"
        # kill -9 b: a shows it unreachable within the TTL (plus one heartbeat period of slack)
        b.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await b.wait()

        async def a_sees_b_gone() -> bool:
            beta = hive(await swarm(a_dir), "beta")
            return beta is not None and not beta["reachable"]

        await eventually(a_sees_b_gone, TTL + 5, interval=0.05)
        assert time.monotonic() - killed_at <= TTL + TTL / 3 + 1.0
        # mail for b while it is down waits in JetStream
        sent = await ask(a_dir, {"cmd": "op_send", "to": "coder@beta", "body": "while b was down"})
        assert sent["ok"], sent
        await eventually(lambda: outbox_empty(a_dir), 10, interval=0.05)
        # b comes back on its state dir (its identity key) and rejoins under its name
        b = await swarm_serve(b_dir, tmp_path / "b.log", nats_server, "beta")
        want = [("operator@alpha", "while b was down")]
        await eventually(lambda: inbox_rows(b_dir, "coder") == want, 20, interval=0.05)

        async def b_back() -> bool:
            beta = hive(await swarm(a_dir), "beta")
            return (await swarm(b_dir))["state"] == "connected" and beta is not None and beta["reachable"]

        await eventually(b_back, 30, interval=0.05)
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for d in (a_dir, b_dir):  # the state_dir fixture cleans only its own run dir
            kill_everything_under(d / "run" / "process")


async def outbox_empty(state_dir: Path) -> bool:
    depth: int = (await swarm(state_dir))["outbox"]
    return depth == 0


def inbox_rows(state_dir: Path, recipient: str) -> list[tuple[str, str]]:
    """(sender, body) of every message to ``recipient`` in a hive's broker (its sqlite, read-only)."""
    conn = sqlite3.connect(f"file:{state_dir / 'db' / 'hive.sqlite'}?mode=ro", uri=True)
    try:
        q = "SELECT sender, body FROM messages WHERE recipient=? ORDER BY id"
        return [(r[0], r[1]) for r in conn.execute(q, (recipient,))]
    finally:
        conn.close()


async def test_mail_to_name_at_hive_arrives_once_survives_a_nats_outage_and_bounces_unknown_names(
    nats_server: NatsServer, state_dir: Path, tmp_path: Path
) -> None:
    a_dir, b_dir = state_dir / "a", state_dir / "b"
    os.chmod(state_dir, 0o755)  # the confined nix evaluation (another uid) traverses to b's state dir
    a = await swarm_serve(a_dir, tmp_path / "a.log", nats_server, "alpha")
    b = await swarm_serve(b_dir, tmp_path / "b.log", nats_server, "beta")
    try:

        async def connected(*dirs: Path) -> bool:
            states = [(await swarm(d))["state"] for d in dirs]
            return states == ["connected"] * len(dirs)

        await eventually(lambda: connected(a_dir, b_dir), 30, interval=0.05)
        spawned = await ask(b_dir, {"cmd": "spawn", "name": "coder"})
        assert spawned["ok"], spawned
        sent = await ask(a_dir, {"cmd": "op_send", "to": "coder@beta", "body": "first"})
        assert sent["ok"], sent
        want = [("operator@alpha", "first")]
        await eventually(lambda: inbox_rows(b_dir, "coder") == want, 10, interval=0.05)
        # NATS goes away: the send is accepted into a's outbox and waits there
        await trio.to_thread.run_sync(nats_server.kill)
        sent = await ask(a_dir, {"cmd": "op_send", "to": "coder@beta", "body": "during the outage"})
        assert sent["ok"], sent
        assert (await swarm(a_dir))["outbox"] == 1
        assert inbox_rows(b_dir, "coder") == want
        await trio.to_thread.run_sync(nats_server.start)
        want.append(("operator@alpha", "during the outage"))
        await eventually(lambda: inbox_rows(b_dir, "coder") == want, 30, interval=0.1)
        await eventually(lambda: connected(a_dir, b_dir), 30, interval=0.1)
        assert (await swarm(a_dir))["outbox"] == 0
        # an unknown name on the far hive: a clear bounce to the sender, nothing in b's broker
        sent = await ask(a_dir, {"cmd": "op_send", "to": "ghost@beta", "body": "hello?"})
        assert sent["ok"], sent

        def bounced() -> bool:
            return any(
                s == "system@beta" and "undeliverable" in body and "ghost@beta" in body
                for s, body in inbox_rows(a_dir, "operator")
            )

        await eventually(bounced, 10, interval=0.05)
        assert inbox_rows(b_dir, "ghost") == []
        assert inbox_rows(b_dir, "coder") == want  # still exactly once each
        # a bad address is refused at once, naming it
        bad = await ask(a_dir, {"cmd": "op_send", "to": "coder@Beta", "body": "x"})
        assert not bad["ok"]
        assert "not name@hive" in bad["error"]
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for d in (a_dir, b_dir):
            kill_everything_under(d / "run" / "process")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--swarm", "nats://127.0.0.1:4222"], "--swarm needs --hive-name"),
        (["--hive-name", "alpha"], "need --swarm"),
        (["--swarm", "nats://127.0.0.1:4222", "--hive-name", "Alpha"], "invalid hive name"),
        (["--swarm", "http://127.0.0.1:4222", "--hive-name", "alpha"], "is not nats://HOST:PORT"),
        (["--swarm", "nats://u:pw@127.0.0.1:4222", "--hive-name", "alpha"], "no credentials in the URL"),
        (
            ["--swarm", "nats://127.0.0.1:4222", "--hive-name", "alpha", "--swarm-creds", "/nonexistent"],
            "no such file",
        ),
    ],
)
def test_bad_swarm_flags_are_refused_naming_the_flag(state_dir: Path, flags: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir), *flags]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
