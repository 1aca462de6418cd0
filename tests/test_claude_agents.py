"""Real Claude agents end to end: the real daemon, the real harness running the real ``claude`` CLI,
``hive-mcp`` attached through ``--mcp-config``; the only stand-in is the model (tests/model_api.py,
on loopback). Skipped when the CLI is not installed (``.ci/setup.sh`` installs it)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import claude_turn as ct
from hivecore.daemon import Daemon
from hivecore.harness import HarnessSettings, run_harness
from hivecore.names import MANAGER_NAME
from tests.conftest import Parts, call, make_config, write_test_token
from tests.model_api import ModelApi, Rule
from tests.test_mcp import parts_with_sockets as parts_with_sockets
from tests.waiting import eventually

CLAUDE = ct.find_claude({"PATH": ""})
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="the claude CLI is not installed (.ci/setup.sh)")

TURN_LIMIT = 40.0
ASK = "please ask the manager for a scout"
RELAYED = "coder asks: spawn a scout"
HANG = "this turn hangs"


@pytest.fixture
def model() -> Iterator[ModelApi]:
    rules = [
        Rule(ASK, "mcp__hyperhive__send", {"to": "manager", "body": RELAYED}),
        Rule(RELAYED, "mcp__hyperhive__request_spawn", {"name": "scout", "description": "asked by coder"}),
        Rule(HANG, hang=True, times=1),
    ]
    with ModelApi(rules) as api:
        yield api


@pytest.fixture
async def claude_hive(state_dir: Path, model: ModelApi) -> AsyncIterator[Daemon]:
    """A running daemon whose agents reach the stand-in model (the operator's agent env file)."""
    from hivecore.daemon import main
    from web.app import daemon_app

    # the operator points every agent at the model (hive-c0re serve --agent-env-file)
    env_file = state_dir / "agent.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in model.env().items()))
    env_file.chmod(0o600)
    config = make_config(state_dir, agent_env_file=env_file, turn_limit=TURN_LIMIT)
    write_test_token(state_dir)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        try:
            yield daemon
        finally:
            for _log in sorted((state_dir / "run" / "process").glob("*/agent.log")):
                pass
            nursery.cancel_scope.cancel()


def turns(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    path = daemon.config.paths.agent_state(name) / ct.TURNS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def prompts(model: ModelApi) -> list[str]:
    """The newest user text of every request the model got."""
    out = []
    with model.lock:
        for body in model.requests:
            users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
            content = users[-1]["content"] if users else ""
            parts = content if isinstance(content, list) else [{"text": content}]
            out.append("\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict)))
    return out


async def idle(daemon: Daemon, name: str) -> None:
    """``name`` has taken at least one turn and finished it (its start kick)."""

    def done() -> bool:
        return any(t["status"] == "ok" for t in turns(daemon, name))

    await eventually(done, timeout=120, what=f"{name} turn")


async def test_operator_to_agent_to_manager_to_a_pending_approval(
    claude_hive: Daemon, model: ModelApi
) -> None:
    d = claude_hive
    await d.coordinator.spawn(MANAGER_NAME, source="internal")
    await d.coordinator.spawn("coder")

    await d.coordinator.op_send("coder", ASK)

    async def pending() -> list[Any]:
        return [a for a in await d.coordinator.pending() if a.status == "pending"]

    await eventually(pending, timeout=180, what="the manager's spawn request")
    [approval] = await pending()
    assert (approval.agent, approval.kind, approval.requester) == ("scout", "spawn", "manager")
    assert approval.description == "asked by coder"

    # the coder's turn: one tool call, a send; the prompt named the operator as sender
    def sent() -> list[dict[str, Any]]:
        return [t for t in turns(d, "coder") if "mcp__hyperhive__send" in t["tools_used"]]

    await eventually(sent, timeout=60, what="coder's turn to finish")
    coder = sent()
    assert [t["status"] for t in coder] == ["ok"]
    assert coder[0]["tool_calls"] == 1
    assert coder[0]["input_tokens"] > 0
    assert coder[0]["total_cost_usd"] > 0
    asked = next(p for p in prompts(model) if ASK in p)
    assert "from operator at" in asked

    # the manager's message from coder, and its tool
    def spawned() -> list[dict[str, Any]]:
        return [t for t in turns(d, MANAGER_NAME) if "mcp__hyperhive__request_spawn" in t["tools_used"]]

    await eventually(spawned, timeout=60, what="the manager's turn to finish")
    manager = spawned()
    assert [t["status"] for t in manager] == ["ok"]
    relayed = next(p for p in prompts(model) if RELAYED in p and "from coder" in p)
    assert "REDELIVERED" not in relayed
    # every model request offered the hive's tools; none offered turn plumbing
    with model.lock:
        offered = [{t.get("name") for t in r.get("tools") or []} for r in model.requests]
    assert all("mcp__hyperhive__send" in names for names in offered)
    assert not any({"mcp__hyperhive__recv", "mcp__hyperhive__ack_turn"} & names for names in offered)
    # the model is agent.nix's (the seeded template's hive.agent.model, through the meta flake)
    with model.lock:
        models = {str(r.get("model")) for r in model.requests}
    assert models
    assert all("haiku" in m for m in models), models
    # the session is kept for the next turn
    session = (d.config.paths.agent_state("coder") / ct.SESSION_FILE).read_text().strip()
    assert session == coder[0]["session_id"]


async def test_a_turn_killed_midway_is_redelivered_and_its_session_resumed(
    claude_hive: Daemon, model: ModelApi
) -> None:
    d = claude_hive
    await d.coordinator.spawn("coder")
    await d.coordinator.op_send("coder", "hello")
    await idle(d, "coder")
    session = (d.config.paths.agent_state("coder") / ct.SESSION_FILE).read_text().strip()

    await d.coordinator.op_send("coder", HANG)
    await eventually(lambda: any(t["status"] == "timed_out" for t in turns(d, "coder")), timeout=180)
    await eventually(lambda: sum(HANG in p for p in prompts(model)) >= 2, timeout=120, what="the retry")
    await eventually(lambda: turns(d, "coder")[-1]["status"] == "ok", timeout=120, what="the retried turn")

    statuses = [t["status"] for t in turns(d, "coder")]
    assert statuses[-2:] == ["timed_out", "ok"]
    first, again = [p for p in prompts(model) if HANG in p]
    assert "REDELIVERED" not in first
    assert "REDELIVERED" in again
    # the same conversation, resumed: the killed turn's prompt is in the retry's history
    killed, retried = turns(d, "coder")[-2:]
    assert killed["session_id"] == retried["session_id"] == session
    with model.lock:
        history = json.dumps(model.requests[-1]["messages"])
    assert history.count(HANG) >= 2
    # the message was acked by the retried turn (the ack follows the turn's record): nothing is left
    sql = "SELECT acked_at FROM messages WHERE recipient='coder' AND body=?"

    async def acked() -> bool:
        rows = await d.store.call(lambda c: c.execute(sql, (HANG,)).fetchall())
        return [r[0] is not None for r in rows] == [True]

    await eventually(acked, timeout=30, what="the retried turn's ack")


async def test_a_denied_tool_reaches_the_operator(parts_with_sockets: Parts, tmp_path: Path) -> None:
    """The model uses a tool the agent may not (Bash): the CLI refuses it, the turn still ends well
    (acked), and the operator gets a message from the agent saying which tool was denied."""
    d = parts_with_sockets.daemon
    state = d.config.paths.agent_state("coder")
    pwned = tmp_path / "pwned"
    with ModelApi([Rule("run id", "Bash", {"command": f"touch {pwned}"})]) as api:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HIVE_LABEL": "coder",
            "HIVE_STATE_DIR": str(state),
            "HIVE_SOCKET": str(d.config.agent_socket_path("coder")),
            "HIVE_HEARTBEAT_SECONDS": "3600",
            "HIVE_ALLOWED_TOOLS": '["Read"]',
            **api.env(),
        }
        settings = HarnessSettings.from_env(env)
        async with trio.open_nursery() as nursery:
            await nursery.start(run_harness, settings)
            sent = await call(d.config.manager_socket_path, {"cmd": "send", "to": "coder", "body": "run id"})
            assert sent["ok"], sent
            await eventually(lambda: turns_of(state), timeout=120, what="coder's turn")
            await eventually(lambda: acked(d, "coder"), timeout=30, what="the turn's ack")
            nursery.cancel_scope.cancel()
        offered = api.tool_names(0)
    [turn] = turns_of(state)
    assert (turn["status"], turn["permission_denials"], turn["tools_used"]) == ("ok", ["Bash"], ["Bash"])
    assert "Read" in offered
    assert not pwned.exists()
    sql = "SELECT sender, body FROM messages WHERE recipient='operator'"
    [(sender, body)] = await d.store.call(lambda c: c.execute(sql).fetchall())
    assert sender == "coder"
    assert body.startswith("[coder: permission denied] my turn tried Bash")
    inbox = [json.loads(line) for line in (state / "inbox.log").read_text().splitlines()]
    assert [m["body"] for m in inbox if m["sender"] == "manager"] == ["run id"]


async def acked(d: Daemon, recipient: str) -> bool:
    """Every message to ``recipient`` is acked (the notice to the operator is sent before the ack)."""
    sql = "SELECT acked_at FROM messages WHERE recipient=?"
    rows = await d.store.call(lambda c: c.execute(sql, (recipient,)).fetchall())
    return bool(rows) and all(r[0] is not None for r in rows)


def turns_of(state: Path) -> list[dict[str, Any]]:
    path = state / ct.TURNS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _processes_in(directory: Path) -> dict[int, str]:
    """pid -> command line of every process whose working directory is ``directory``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != directory:
                continue
            cmdline = (entry / "cmdline").read_bytes()
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


async def test_a_killed_agent_leaves_no_turn_running(claude_hive: Daemon, model: ModelApi) -> None:
    """``hivectl kill`` SIGKILLs the agent's group; the CLI (its own session, so the turn limit can
    kill its group) and its hive-mcp must die with the harness, not go on calling tools as it."""
    d = claude_hive
    await d.coordinator.spawn("coder")
    await d.coordinator.op_send("coder", "hello")
    await idle(d, "coder")
    state = d.config.paths.agent_state("coder").resolve()

    await d.coordinator.op_send("coder", HANG)
    await eventually(lambda: any(HANG in p for p in prompts(model)), timeout=120, what="the hanging turn")
    cli = {pid: cmd for pid, cmd in _processes_in(state).items() if " -p " in cmd}
    assert cli, f"no claude -p process in {state}: {_processes_in(state)}"

    await d.coordinator.kill("coder")
    gone = "every process of the killed agent gone"
    await eventually(lambda: not _processes_in(state), timeout=30, what=gone)
