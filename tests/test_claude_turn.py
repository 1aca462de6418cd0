"""The Claude turn's pure parts (hivecore/claude_turn.py), the harness's settings for it, the
hive.agent settings the meta flake turns into its environment, and one real CLI run whose hive tools
never connect (not acked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hivecore import claude_turn as ct
from hivecore.harness import HarnessSettings, SettingsError, login_env, run_claude_turn
from hivecore.meta import turn_env
from tests.model_api import ModelApi

MESSAGES = [
    {"id": 7, "sender": "operator", "body": "hi", "sent_at": 0, "redelivered": False},
    {"id": 9, "sender": "coder", "body": "again", "sent_at": 60, "redelivered": True, "in_reply_to": 3},
]


def test_prompt_names_sender_time_and_redelivery() -> None:
    prompt = ct.render_prompt(MESSAGES)
    assert prompt.startswith("2 new messages")
    assert "--- message 7 from operator at 1970-01-01 00:00:00 UTC ---\nhi" in prompt
    assert "message 9 from coder at 1970-01-01 00:01:00 UTC, in reply to 3 [REDELIVERED" in prompt
    assert prompt.count("REDELIVERED") == 1


def test_argv_is_non_interactive_and_the_prompt_is_last(tmp_path: Path) -> None:
    argv = ct.argv(
        "claude",
        "-p --dangerously-skip-permissions",
        mcp_config_path=tmp_path / "m.json",
        system_prompt="You are coder",
        tools=("Read", ct.HIVE_TOOLS),
        model="sonnet",
        session="abc-123",
    )
    assert argv[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert argv[-2:] == ["--", "-p --dangerously-skip-permissions"]
    assert argv[argv.index("--resume") + 1] == "abc-123"
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert "--dangerously-skip-permissions" not in argv[:-1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (ct.HIVE_TOOLS,)),
        ('["Read", "Bash(git diff:*)"]', ("Read", "Bash(git diff:*)", ct.HIVE_TOOLS)),
        (f'["{ct.HIVE_TOOLS}"]', (ct.HIVE_TOOLS,)),
    ],
)
def test_allowed_tools_always_include_the_hive(raw: str | None, expected: tuple[str, ...]) -> None:
    assert ct.allowed_tools(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["Read", '{"a": 1}', '["--dangerously-skip-permissions"]', '["a\\nb"]', json.dumps(["R"] * 65), "[1]"],
)
def test_bad_allowed_tools_are_refused(raw: str) -> None:
    with pytest.raises(ct.TurnSetupError):
        ct.allowed_tools(raw)


def test_model_selection(tmp_path: Path) -> None:
    assert ct.select_model(None, tmp_path) is None
    assert ct.select_model("haiku", tmp_path) == "haiku"
    (tmp_path / ct.MODEL_FILE).write_text("sonnet\n")
    assert ct.select_model("haiku", tmp_path) == "sonnet"
    (tmp_path / ct.MODEL_FILE).write_text("--print\n")
    with pytest.raises(ct.TurnSetupError):
        ct.select_model("haiku", tmp_path)


def test_meta_settings_become_turn_env() -> None:
    assert turn_env({"model": "opus", "allowedTools": ["Read"]}) == {
        "HIVE_AGENT_MODEL": "opus",
        "HIVE_ALLOWED_TOOLS": '["Read"]',
    }
    assert turn_env(None) == {}
    with pytest.raises(TypeError):
        turn_env({"model": 3})
    with pytest.raises(ct.TurnSetupError):
        turn_env({"model": "-x"})
    with pytest.raises(ct.TurnSetupError):
        turn_env({"allowedTools": "Read"})


def init_line(status: str, tools: list[str]) -> bytes:
    servers = [{"name": "hyperhive", "status": status}]
    return json.dumps(
        {"type": "system", "subtype": "init", "session_id": "s1", "mcp_servers": servers, "tools": tools}
    ).encode()


def test_stream_parsing() -> None:
    state = ct.StreamState()
    assert state.feed(b"not json") is None
    assert state.feed(init_line("connected", ["Read", "mcp__hyperhive__send"])) == "init"
    assert state.hive_connected
    assistant = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "name": "mcp__hyperhive__send"}]},
    }
    state.feed(json.dumps(assistant).encode())
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "session_id": "s1",
        "num_turns": 2,
        "total_cost_usd": 0.5,
        "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 4},
        "permission_denials": [{"tool_name": "Bash", "tool_use_id": "x", "tool_input": {}}],
    }
    state.feed(json.dumps(result).encode())
    out = state.outcome(100.0, 1.5, 0)
    assert (out.status, out.session_id, out.tool_calls, out.tools_used) == (
        "ok",
        "s1",
        1,
        ("mcp__hyperhive__send",),
    )
    assert (out.input_tokens, out.output_tokens, out.cache_read_input_tokens, out.total_cost_usd) == (
        10,
        3,
        4,
        0.5,
    )
    assert out.permission_denials == ("Bash",)
    assert ct.StreamState().outcome(0, 0, -9).status == "crashed"
    for status, tools in (("pending", ["mcp__hyperhive__send"]), ("failed", []), ("connected", ["Read"])):
        s = ct.StreamState()
        s.feed(init_line(status, tools))
        assert not s.hive_connected


def test_settings_backend_and_turn_limit(tmp_path: Path) -> None:
    env = {"HIVE_LABEL": "alpha", "HIVE_STATE_DIR": str(tmp_path)}
    s = HarnessSettings.from_env(env)
    assert (s.backend, s.turn_limit) == ("claude", 1800.0)
    s = HarnessSettings.from_env({**env, "HIVE_AGENT_BACKEND": "inbox", "HIVE_TURN_LIMIT": "90"})
    assert (s.backend, s.turn_limit) == ("inbox", 90.0)
    for bad in ({"HIVE_AGENT_BACKEND": "gpt"}, {"HIVE_TURN_LIMIT": "soon"}, {"HIVE_TURN_LIMIT": "0"}):
        with pytest.raises(SettingsError):
            HarnessSettings.from_env({**env, **bad})


def test_login_env(tmp_path: Path) -> None:
    assert login_env({}) is None
    assert login_env({"ANTHROPIC_API_KEY": "k"}) == {}
    assert login_env({"CLAUDE_CONFIG_DIR": str(tmp_path)}) is None
    (tmp_path / "hive-login.json").write_text('{"env": {"CLAUDE_CODE_OAUTH_TOKEN": "t", "PATH": "/evil"}}')
    assert login_env({"CLAUDE_CONFIG_DIR": str(tmp_path)}) == {"CLAUDE_CODE_OAUTH_TOKEN": "t"}
    # only a regular file counts (a link planted in place of hivectl login's file is no login)
    (tmp_path / "hive-login.json").unlink()
    (tmp_path / "elsewhere.json").write_text('{"env": {"ANTHROPIC_API_KEY": "k"}}')
    (tmp_path / "hive-login.json").symlink_to(tmp_path / "elsewhere.json")
    assert login_env({"CLAUDE_CONFIG_DIR": str(tmp_path)}) is None
    (tmp_path / ".credentials.json").write_text("{}")
    assert login_env({"CLAUDE_CONFIG_DIR": str(tmp_path)}) == {}


@pytest.mark.skipif(ct.find_claude({"PATH": ""}) is None, reason="the claude CLI is not installed")
async def test_a_turn_without_the_hive_tools_is_not_ok(tmp_path: Path) -> None:
    """hive-mcp starts but its socket answers nothing: no tools, so the turn is killed at its init line."""
    state = tmp_path / "state"
    state.mkdir()
    with ModelApi() as api:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HIVE_LABEL": "alpha",
            "HIVE_STATE_DIR": str(state),
            "HIVE_SOCKET": str(tmp_path / "missing.sock"),
            **api.env(),
        }
        settings = HarnessSettings.from_env(env)
        result = await run_claude_turn(settings, MESSAGES, {})
    assert result.status == "mcp_unavailable"
    assert "hyperhive" in (result.error or "")
    assert not (state / ct.SESSION_FILE).exists()


def turn_env_for(state: Path, api: ModelApi, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HIVE_LABEL": "alpha",
        "HIVE_STATE_DIR": str(state),
        "HIVE_SOCKET": str(state / "missing.sock"),
        **api.env(),
        **extra,
    }


async def test_cli_faults_are_not_ok(tmp_path: Path) -> None:
    """A CLI that dies without a result, is missing, or a model file naming a flag: never acked."""
    state = tmp_path / "state"
    state.mkdir()
    with ModelApi() as api:
        for bin_, status in (("/bin/false", "crashed"), (str(tmp_path / "no-claude"), "not_started")):
            settings = HarnessSettings.from_env(turn_env_for(state, api, HIVE_CLAUDE_BIN=bin_))
            assert (await run_claude_turn(settings, MESSAGES, {})).status == status
        (state / ct.MODEL_FILE).write_text("--dangerously-skip-permissions\n")
        settings = HarnessSettings.from_env(turn_env_for(state, api))
        result = await run_claude_turn(settings, MESSAGES, {})
        assert (result.status, result.error) == (
            "not_started",
            "not a model name: '--dangerously-skip-permissions'",
        )
        assert api.requests == []


@pytest.mark.skipif(ct.find_claude({"PATH": ""}) is None, reason="the claude CLI is not installed")
async def test_a_session_the_cli_lacks_is_dropped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / ct.SESSION_FILE).write_text("123e4567-e89b-12d3-a456-426614174000\n")
    with ModelApi() as api:
        settings = HarnessSettings.from_env(turn_env_for(state, api))
        result = await run_claude_turn(settings, MESSAGES, {})
    assert result.status == "error"
    assert "No conversation found" in (result.error or "")
    assert result.session_id is None
    assert not (state / ct.SESSION_FILE).exists()  # the retry starts a new conversation
