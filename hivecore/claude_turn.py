"""One Claude Code turn, the pure parts: the prompt, the CLI's argv and environment, and the parsed
``--output-format stream-json`` stream (:class:`TurnResult`). The process itself is run by
:mod:`hivecore.harness`; operators: ``docs/agents.md``.

Stdlib and attrs only (the harness imports it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

SERVER_NAME = "hyperhive"
HIVE_TOOLS = f"mcp__{SERVER_NAME}__*"
"""Always allowed: the hive's own tools (``hive-mcp``)."""
SESSION_FILE = "hyperhive-session"
"""The agent's Claude session id (state dir), resumed by every turn."""
MODEL_FILE = "hyperhive-model"
"""The selected model (state dir); wins over ``hive.agent.model``."""
TURNS_FILE = "hyperhive-turns.jsonl"
"""One :class:`TurnResult` per line (state dir), newest last."""
MCP_CONFIG_FILE = "hyperhive-mcp.json"
DEFAULT_TURN_LIMIT = 30 * 60.0
CLAUDE_PREFIX = Path(__file__).resolve().parent.parent / ".venv" / "node"
"""Where ``.ci/setup.sh`` installs the pinned CLI (``<checkout>/.venv/node``)."""
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\[\]@/-]{0,127}")
_TOOL_RE = re.compile(r"[A-Za-z_][^\x00-\x1f\x7f]{0,255}")
MAX_ALLOWED_TOOLS = 64

Status = Literal["ok", "error", "mcp_unavailable", "timed_out", "crashed", "not_started"]


class TurnSetupError(Exception):
    """The agent's configuration does not describe a runnable turn (a bad model or tool name)."""


def valid_model(text: str) -> str:
    """A model name as ``--model`` takes it (``sonnet``, ``claude-sonnet-4-5``); never a flag."""
    text = text.strip()
    if not _MODEL_RE.fullmatch(text):
        raise TurnSetupError(f"not a model name: {text[:60]!r}")
    return text


def allowed_tools(raw: str | None) -> tuple[str, ...]:
    """``HIVE_ALLOWED_TOOLS`` (a JSON list of Claude Code permission rules such as ``Read`` or
    ``Bash(git diff:*)``) plus :data:`HIVE_TOOLS`, de-duplicated; :class:`TurnSetupError` otherwise."""
    tools: list[str] = []
    if raw:
        try:
            value = json.loads(raw)
        except ValueError:
            raise TurnSetupError("HIVE_ALLOWED_TOOLS must be a JSON list of strings") from None
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise TurnSetupError("HIVE_ALLOWED_TOOLS must be a JSON list of strings")
        if len(value) > MAX_ALLOWED_TOOLS:
            raise TurnSetupError(f"HIVE_ALLOWED_TOOLS lists more than {MAX_ALLOWED_TOOLS} rules")
        for t in value:
            if not _TOOL_RE.fullmatch(t):
                raise TurnSetupError(f"not a tool permission rule: {t[:60]!r}")
        tools.extend(value)
    tools.append(HIVE_TOOLS)
    return tuple(dict.fromkeys(tools))


def select_model(configured: str | None, state_dir: Path) -> str | None:
    """The state dir's ``hyperhive-model`` (the agent's selection) if set, else ``hive.agent.model``
    (``HIVE_AGENT_MODEL``), else ``None`` (the CLI's default)."""
    try:
        chosen = (state_dir / MODEL_FILE).read_text(encoding="utf-8", errors="replace")[:200].strip()
    except OSError:
        chosen = ""
    for candidate in (chosen, configured or ""):
        if candidate.strip():
            return valid_model(candidate)
    return None


def find_claude(env: Mapping[str, str]) -> str | None:
    """The CLI: ``HIVE_CLAUDE_BIN``, else the project prefix (``.venv/node``), else ``claude`` on PATH."""
    explicit = env.get("HIVE_CLAUDE_BIN")
    if explicit:
        return explicit
    local = CLAUDE_PREFIX / "node_modules" / ".bin" / "claude"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("claude", path=env.get("PATH", os.defpath))


def mcp_config(python: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The ``--mcp-config`` attaching ``hive-mcp`` (this interpreter) to the agent's socket."""
    server_env = {k: env[k] for k in ("HIVE_SOCKET", "PYTHONPATH", "PATH") if env.get(k)}
    return {
        "mcpServers": {
            SERVER_NAME: {
                "type": "stdio",
                "command": python,
                "args": ["-m", "hivecore.mcp"],
                "env": server_env,
            }
        }
    }


def argv(
    claude: str,
    prompt: str,
    *,
    mcp_config_path: Path,
    system_prompt: str,
    tools: Sequence[str],
    model: str | None,
    session: str | None,
) -> list[str]:
    """The CLI's argv for one non-interactive turn (the prompt is the last argument, after ``--``)."""
    out = [
        claude,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--mcp-config",
        str(mcp_config_path),
        "--strict-mcp-config",
        "--append-system-prompt",
        system_prompt,
        "--allowedTools",
        *tools,
    ]
    if model is not None:
        out += ["--model", model]
    if session is not None:
        out += ["--resume", session]
    return [*out, "--", prompt]


def cli_env(env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """The CLI's environment: the agent's, with a HOME (its state dir when it has none), the hive's
    tools loaded up front (no deferred tool search) and no self-update of the pinned CLI."""
    out = dict(env)
    out.setdefault("HOME", str(state_dir))
    out.setdefault("ENABLE_TOOL_SEARCH", "false")
    out.setdefault("DISABLE_AUTOUPDATER", "1")
    return out


# --- the prompt -------------------------------------------------------------------------------------


def _when(sent_at: object) -> str:
    if isinstance(sent_at, int | float) and 0 <= sent_at < 1 << 40:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sent_at))
    return "unknown time"


def render_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The turn's prompt: each message with its id, sender and time; a redelivered one is marked as
    possibly handled already (an earlier turn got it and never finished)."""
    parts = [f"{len(messages)} new message{'s' if len(messages) != 1 else ''} in your hive inbox:"]
    for m in messages:
        head = f"--- message {m.get('id')} from {m.get('sender')} at {_when(m.get('sent_at'))}"
        if m.get("in_reply_to") is not None:
            head += f", in reply to {m.get('in_reply_to')}"
        if m.get("redelivered"):
            head += " [REDELIVERED: possibly handled already; check your notes before acting again]"
        parts.append(f"{head} ---\n{m.get('body', '')}")
    parts.append(
        "--- end of messages ---\nAnswer with the mcp__hyperhive__* tools (send replies with "
        "mcp__hyperhive__send); your text output here is not delivered to anyone."
    )
    return "\n\n".join(parts)


# --- the stream -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TurnResult:
    """What one turn did, as the CLI reported it. ``status``: ``ok`` (acked), ``error`` (the CLI
    reported an error or exited non-zero), ``mcp_unavailable`` (the hive tools were not connected at
    start: killed and retried), ``timed_out`` (killed at the turn limit), ``crashed`` (no result
    line), ``not_started`` (no CLI or a bad configuration)."""

    status: Status
    started_at: float
    """Unix time."""
    duration_s: float
    session_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    total_cost_usd: float = 0.0
    tool_calls: int = 0
    tools_used: tuple[str, ...] = ()
    num_turns: int = 0
    permission_denials: tuple[str, ...] = ()
    """Tool names the CLI refused (not in the allowed list)."""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class StreamState:
    """Folds the stream-json lines of one CLI run (see :meth:`feed`)."""

    session_id: str | None = None
    mcp_status: str | None = None
    """The hyperhive server's status on the init line (``connected`` is the only good one)."""
    hive_tools: int = 0
    init_seen: bool = False
    """The CLI started a conversation (a ``--resume`` of a session it lacks fails before this)."""
    tools_used: list[str] = attrs.field(factory=list)
    result: dict[str, Any] | None = None

    def feed(self, line: bytes) -> str | None:
        """Take one line; ``"init"`` when it was the init line, else ``None``."""
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            self.init_seen = True
            if isinstance(event.get("session_id"), str):
                self.session_id = event["session_id"]
            servers = event.get("mcp_servers") or []
            ours = [s for s in servers if isinstance(s, dict) and s.get("name") == SERVER_NAME]
            self.mcp_status = str(ours[0].get("status")) if ours else "absent"
            prefix = f"mcp__{SERVER_NAME}__"
            tools = event.get("tools") or []
            self.hive_tools = sum(1 for t in tools if isinstance(t, str) and t.startswith(prefix))
            return "init"
        if kind == "assistant":
            content = (event.get("message") or {}).get("content") or []
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    self.tools_used.append(str(block.get("name", "")))
        elif kind == "result":
            self.result = event
            if isinstance(event.get("session_id"), str):
                self.session_id = event["session_id"]
        return None

    @property
    def hive_connected(self) -> bool:
        return self.mcp_status == "connected" and self.hive_tools > 0

    def outcome(self, started_at: float, duration_s: float, returncode: int | None) -> TurnResult:
        """The turn's result once the CLI exited (``returncode``)."""
        r = self.result or {}
        usage: dict[str, Any] = r["usage"] if isinstance(r.get("usage"), dict) else {}
        denials = tuple(
            str(d.get("tool_name", "?")) for d in r.get("permission_denials") or [] if isinstance(d, dict)
        )
        if self.result is None:
            status: Status = "crashed"
            error = f"the CLI exited {returncode} without a result"
        elif r.get("is_error") or r.get("subtype") != "success" or returncode != 0:
            status = "error"
            errors = r.get("errors") if isinstance(r.get("errors"), list) else []
            error = str(r.get("result") or (errors[0] if errors else None) or r.get("subtype"))[:500]
        else:
            status, error = "ok", None
        return TurnResult(
            status=status,
            started_at=started_at,
            duration_s=round(duration_s, 3),
            session_id=self.session_id,
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cache_creation_input_tokens=_int(usage.get("cache_creation_input_tokens")),
            cache_read_input_tokens=_int(usage.get("cache_read_input_tokens")),
            total_cost_usd=_float(r.get("total_cost_usd")),
            tool_calls=len(self.tools_used),
            tools_used=tuple(dict.fromkeys(self.tools_used)),
            num_turns=_int(r.get("num_turns")),
            permission_denials=denials,
            error=error,
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _float(value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else 0.0  # type: ignore[arg-type]  # checked just above
