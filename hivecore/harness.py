"""``python -m hivecore.harness``: the minimal agent the process runtime runs by default.

It reads ``HIVE_LABEL`` and ``HIVE_STATE_DIR``, writes ``env.json`` (its ``HIVE_*`` environment) and
``system-prompt.md`` (rendered from ``hivecore/templates/prompts/{agent,manager}.md`` with ``{label}``,
``{operator_pronouns}`` and ``{state_dir}``) into the state dir, then rewrites ``heartbeat`` (unix time) every
``HIVE_HEARTBEAT_SECONDS`` (default 5) until SIGTERM or SIGINT, on which it exits 0.

With ``HIVE_SOCKET`` set it also serves its inbox: one connection to the socket, ``recv`` long-polls
(up to 32 messages a turn), each message appended as one JSON line to ``inbox.log`` in the state dir
(a redelivered one carries ``"possibly_handled": true``: an earlier run received it and never acked
it), the turn command run if there is one (``--turn-command CMD`` or ``HIVE_TURN_COMMAND``, a shell
command given the turn's messages as JSON lines on stdin; its exit status is logged), then
``ack_turn``. If the daemon goes away it reconnects with backoff (0.2 s doubling to 5 s); a turn
finished but not yet acked is acked first on the new connection, so it is not delivered again.

With ``HIVE_AGENT_ENV_FILE`` set (the nixos runtime sets it) and that file present, its ``KEY=VALUE``
lines (the operator's environment for this agent) are loaded into the environment at start
(:func:`with_agent_env_file`); a file that is a link, not a regular file, or readable by others is
refused and the harness does not start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from hivecore import claude_turn as ct
from hivecore import credentials
from hivecore.agent_env import load_env_file
from hivecore.claude_turn import DEFAULT_TURN_LIMIT, TurnResult
from hivecore.errors import HiveError
from hivecore.proc import child_setup as proc_child_setup
from hivecore.runtime.shim import write_json_atomic
from hivecore.sockets.client import Hints, Unreachable, connect

log = logging.getLogger("hivecore.harness")

ENV_FILE = "env.json"
HEARTBEAT_FILE = "heartbeat"
DEFAULT_HEARTBEAT_SECONDS = 5.0
INBOX_FILE = "inbox.log"
PROMPT_FILE = "system-prompt.md"
MANAGER_NAME = "hm1nd"
RECV_WAIT = 60.0
RECV_MAX = 32
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
MAX_ANSWER = 8 * 1024 * 1024
"""32 messages of up to 64 KiB (helper events may exceed the 4 KiB socket cap), JSON-escaped."""
Backend = Literal["claude", "inbox"]
BACKENDS: tuple[Backend, ...] = ("claude", "inbox")
RETRY_START = 2.0
RETRY_MAX = 120.0
"""A failed turn is retried (redelivered) after 2 s, doubling to 2 minutes."""
LOGIN_POLL = 2.0
"""While a turn waits for a login: how often the credentials are looked for (and a ``whoami`` keeps
the connection, which holds the batch, alive)."""
MAX_STREAM_LINE = 64 * 1024 * 1024
SOCKET_HINTS = Hints(
    start="the daemon is not running or has not bound this agent's socket yet",
    choose="check HIVE_SOCKET",
    group=None,
)


class SettingsError(Exception):
    """The environment does not describe a runnable agent."""


@attrs.frozen(kw_only=True)
class HarnessSettings:
    label: str
    state_dir: Path
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    hive_env: Mapping[str, str] = attrs.field(factory=dict)
    socket: Path | None = None
    """``HIVE_SOCKET``: the agent's socket; None: no inbox (heartbeat only)."""
    turn_command: str | None = None
    recv_wait: float = RECV_WAIT
    backend: Backend = "claude"
    """``HIVE_AGENT_BACKEND``: ``claude`` runs a Claude Code turn per batch; ``inbox`` only records."""
    turn_limit: float = DEFAULT_TURN_LIMIT
    """``HIVE_TURN_LIMIT`` (seconds): a longer turn is killed and not acked."""
    env: Mapping[str, str] = attrs.field(factory=dict)
    """The whole environment (the CLI's, less what :func:`claude_turn.cli_env` adds)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HarnessSettings:
        label = env.get("HIVE_LABEL", "")
        state_dir = env.get("HIVE_STATE_DIR", "")
        if not label or not state_dir:
            raise SettingsError("HIVE_LABEL and HIVE_STATE_DIR must be set")
        raw = env.get("HIVE_HEARTBEAT_SECONDS", str(DEFAULT_HEARTBEAT_SECONDS))
        try:
            heartbeat = float(raw)
        except ValueError:
            raise SettingsError(f"HIVE_HEARTBEAT_SECONDS is not a number: {raw!r}") from None
        if not heartbeat > 0:
            raise SettingsError(f"HIVE_HEARTBEAT_SECONDS must be positive, not {raw!r}")
        hive_env = {k: v for k, v in env.items() if k.startswith("HIVE_")}
        sock = env.get("HIVE_SOCKET") or None
        backend = env.get("HIVE_AGENT_BACKEND") or "claude"
        if backend not in BACKENDS:
            raise SettingsError(f"HIVE_AGENT_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
        raw = env.get("HIVE_TURN_LIMIT") or str(DEFAULT_TURN_LIMIT)
        try:
            turn_limit = float(raw)
        except ValueError:
            raise SettingsError(f"HIVE_TURN_LIMIT is not a number of seconds: {raw!r}") from None
        if not 0 < turn_limit < 7 * 86400:
            raise SettingsError(f"HIVE_TURN_LIMIT must be positive (seconds), not {raw!r}")
        return cls(
            label=label,
            state_dir=Path(state_dir),
            heartbeat_seconds=heartbeat,
            hive_env=hive_env,
            socket=Path(sock) if sock else None,
            turn_command=env.get("HIVE_TURN_COMMAND") or None,
            backend=backend,
            turn_limit=turn_limit,
            env=dict(env),
        )


def with_agent_env_file(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the operator's environment over it: the ``KEY=VALUE`` file ``HIVE_AGENT_ENV_FILE``
    names (the nixos runtime binds it at ``/run/hive-env/env``), when set and present. The file must be
    a regular file (not a link), root's or ours, mode 0600 (:func:`hivecore.agent_env.load_env_file`);
    else :class:`SettingsError`, naming keys, never values. Its keys are never ``HIVE_*``."""
    path = env.get("HIVE_AGENT_ENV_FILE")
    if not path or not os.path.lexists(path):
        return dict(env)
    try:
        values = load_env_file(Path(path))
    except HiveError as exc:
        raise SettingsError(str(exc)) from None
    return {**env, **values}


def render_prompt(label: str, operator_pronouns: str, state_dir: str) -> str:
    """The system prompt for ``label`` (the manager gets ``manager.md``); ``state_dir`` is the
    agent's own state dir (its ``HIVE_STATE_DIR``: the prompt names no path the runtime lacks)."""
    name = "manager.md" if label == MANAGER_NAME else "agent.md"
    template = importlib.resources.files("hivecore").joinpath("templates", "prompts", name).read_text("utf-8")
    return (
        template.replace("{label}", label)
        .replace("{operator_pronouns}", operator_pronouns)
        .replace("{state_dir}", state_dir)
    )


def write_prompt(settings: HarnessSettings) -> None:
    pronouns = settings.hive_env.get("HIVE_OPERATOR_PRONOUNS") or "she/her"
    tmp = settings.state_dir / f".{PROMPT_FILE}.tmp"
    tmp.write_text(render_prompt(settings.label, pronouns, str(settings.state_dir)), encoding="utf-8")
    os.replace(tmp, settings.state_dir / PROMPT_FILE)


def record(state_dir: Path, messages: list[dict[str, Any]]) -> None:
    """Append each message as one JSON line to ``inbox.log`` (redelivered: ``possibly_handled``)."""
    lines = []
    for m in messages:
        entry = dict(m)
        if entry.get("redelivered"):
            entry["possibly_handled"] = True
        lines.append(json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n")
    with (state_dir / INBOX_FILE).open("a", encoding="utf-8") as f:
        f.write("".join(lines))


class SocketGone(Exception):
    """The daemon closed the connection or answered something unreadable."""


class Channel:
    """One open connection to the agent socket: a JSON request line out, one answer line back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    @classmethod
    async def open(cls, path: Path) -> Channel:
        sock = await trio.to_thread.run_sync(connect, str(path), 5.0, SOCKET_HINTS, abandon_on_cancel=True)
        sock.setblocking(False)
        return cls(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.stream.send_all(json.dumps(request).encode() + b"\n")
        while (i := self._buf.find(b"\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                raise SocketGone("the daemon closed the connection")
            self._buf += data
            if len(self._buf) > MAX_ANSWER:
                raise SocketGone("answer line too long")
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise SocketGone(f"unreadable answer: {exc}") from None
        if not isinstance(answer, dict):
            raise SocketGone("answer is not a JSON object")
        return answer

    async def aclose(self) -> None:
        await self.stream.aclose()


async def run_turn(settings: HarnessSettings, messages: list[dict[str, Any]]) -> None:
    """Run the turn command with the messages on stdin (JSON lines); failures are logged."""
    if settings.turn_command is None:
        return
    stdin = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages).encode()
    try:
        result = await trio.run_process(["/bin/sh", "-c", settings.turn_command], stdin=stdin, check=False)
    except OSError as exc:
        log.error("turn command could not run: %s", exc)
        return
    if result.returncode != 0:
        log.warning("turn command exited %d", result.returncode)


class TurnFailed(Exception):
    """The turn did not finish (crash, time limit, hive tools missing): its batch is not acked."""


async def serve_inbox(
    settings: HarnessSettings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Long-poll the socket forever: record, run the turn, ack; reconnect with backoff.

    A failed Claude turn closes the connection (so the broker hands the batch out again, marked
    ``redelivered``) and is retried after :data:`RETRY_START` seconds, doubling to :data:`RETRY_MAX`.
    """
    assert settings.socket is not None
    task_status.started()
    backoff = BACKOFF_START
    retry = RETRY_START
    unacked = False
    while True:
        try:
            chan = await Channel.open(settings.socket)
        except Unreachable as exc:
            log.info("inbox: %s; retrying in %.1f s", exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        delay = backoff
        try:
            if unacked:
                await _ack(chan)
                unacked = False
            log.info("inbox: connected to %s", settings.socket)
            backoff = BACKOFF_START
            while True:
                answer = await chan.call({"cmd": "recv", "wait_seconds": settings.recv_wait, "max": RECV_MAX})
                if not answer.get("ok"):
                    raise SocketGone(f"recv refused: {answer.get('error')}")
                messages = answer.get("messages") or []
                if not messages:
                    continue
                await trio.to_thread.run_sync(record, settings.state_dir, messages)
                if settings.backend == "claude":
                    await claude_backend(settings, chan, messages)
                    retry = RETRY_START
                else:
                    await run_turn(settings, messages)
                unacked = True
                await _ack(chan)
                unacked = False
        except TurnFailed as exc:
            log.warning("turn not acked (%s); its messages come back in %.0f s", exc, retry)
            delay, retry = retry, min(retry * 2, RETRY_MAX)
        except (SocketGone, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("inbox: connection lost (%s); reconnecting in %.1f s", exc, backoff)
            delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
        finally:
            with trio.CancelScope(shield=True):
                await chan.aclose()
        await trio.sleep(delay)


# --- the Claude backend -------------------------------------------------------------------------------


def login_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """The credentials the CLI gets beyond ``env`` (:mod:`hivecore.credentials`): ``{}`` when ``env``
    has a key or token or the Claude config dir (``CLAUDE_CONFIG_DIR``) holds Claude's own
    credentials; the variables of its ``hive-login.json`` (``hivectl login``); ``None``: not logged in
    (exactly when the daemon shows ``needs_login``)."""
    if credentials.has_credentials_env(env):
        return {}
    config = env.get("CLAUDE_CONFIG_DIR")
    if not config or not credentials.has_login(env, Path(config)):
        return None
    return credentials.login_env(Path(config))


async def claude_backend(settings: HarnessSettings, chan: Channel, messages: list[dict[str, Any]]) -> None:
    """One Claude turn for ``messages``: returns once it succeeded (the caller acks), else raises
    :class:`TurnFailed`. Waits (keeping the batch) while the agent has no credentials."""
    waiting = False
    while (extra := await trio.to_thread.run_sync(login_env, settings.env)) is None:
        if not waiting:
            log.warning("not logged in: the turn waits for credentials (hivectl login %s)", settings.label)
            waiting = True
        await trio.sleep(LOGIN_POLL)
        # the connection holds the batch: notice a daemon restart at once (then the batch comes back
        # on the next connection, with whatever arrived meanwhile), and keep it from idling out
        answer = await chan.call({"cmd": "whoami"})
        if not answer.get("ok"):
            raise SocketGone(f"whoami refused: {answer.get('error')}")
    result = await run_claude_turn(settings, messages, extra)
    await trio.to_thread.run_sync(save_result, settings.state_dir, result)
    await report_turn(chan, result)
    if result.permission_denials:
        tools = ", ".join(sorted(set(result.permission_denials)))
        body = (
            f"[{settings.label}: permission denied] my turn tried {tools}, which my configuration does not "
            "allow (hive.agent.allowedTools in my agent.nix)."
        )
        body = body.encode()[:4000].decode(errors="ignore")  # the socket takes at most 4096 bytes
        answer = await chan.call({"cmd": "send", "to": "operator", "body": body})
        if not answer.get("ok"):
            log.warning("could not tell the operator about denied tools: %s", answer.get("error"))
    if result.status != "ok":
        raise TurnFailed(f"{result.status}: {result.error}")


async def report_turn(chan: Channel, result: TurnResult) -> None:
    """Tell the daemon what the turn took (``report_turn``: the operator's usage and last-turn age);
    a refusal (the rate limit, a number out of bounds) is logged, the turn goes on."""
    answer = await chan.call(
        {
            "cmd": "report_turn",
            "duration_seconds": max(0.0, result.duration_s),
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "cache_read_tokens": result.cache_read_input_tokens,
            "cache_creation_tokens": result.cache_creation_input_tokens,
            "cost_usd": max(0.0, result.total_cost_usd),
            "tool_calls": result.tool_calls,
            "status": result.status,
        }
    )
    if not answer.get("ok"):
        log.warning("the daemon did not record this turn's usage: %s", answer.get("error"))


def save_result(state_dir: Path, result: TurnResult) -> None:
    """Keep ``result``'s session for the next turn's ``--resume``, then append ``result`` to the
    turns file: in that order, so whoever sees the turn recorded finds its session kept."""
    if result.session_id and result.status != "mcp_unavailable":
        tmp = state_dir / f".{ct.SESSION_FILE}.tmp"
        tmp.write_text(result.session_id + "\n", encoding="utf-8")
        os.replace(tmp, state_dir / ct.SESSION_FILE)
    with (state_dir / ct.TURNS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(result.as_json(), separators=(",", ":")) + "\n")


def read_session(state_dir: Path) -> str | None:
    try:
        text = (state_dir / ct.SESSION_FILE).read_text(encoding="utf-8")[:200].strip()
    except OSError:
        return None
    return text if text and all(c.isalnum() or c == "-" for c in text) else None


def _not_started(started: float, error: str) -> TurnResult:
    return TurnResult(status="not_started", started_at=started, duration_s=0.0, error=error)


async def run_claude_turn(
    settings: HarnessSettings, messages: list[dict[str, Any]], extra_env: Mapping[str, str]
) -> TurnResult:
    """Run the CLI for one turn and parse its stream; the process group is killed at the turn limit,
    when the init line shows the hive tools missing, or when this task is cancelled."""
    started = time.time()
    env = ct.cli_env({**settings.env, **extra_env}, settings.state_dir)
    claude = ct.find_claude(env)
    if claude is None:
        return _not_started(started, "no claude CLI (set HIVE_CLAUDE_BIN, or run .ci/setup.sh)")
    try:
        tools = ct.allowed_tools(env.get("HIVE_ALLOWED_TOOLS"))
        model = ct.select_model(env.get("HIVE_AGENT_MODEL"), settings.state_dir)
    except ct.TurnSetupError as exc:
        return _not_started(started, str(exc))
    config_path = settings.state_dir / ct.MCP_CONFIG_FILE
    write_json_atomic(config_path, ct.mcp_config(sys.executable, env))
    pronouns = settings.hive_env.get("HIVE_OPERATOR_PRONOUNS") or "she/her"
    session = read_session(settings.state_dir)
    command = ct.argv(
        claude,
        ct.render_prompt(messages),
        mcp_config_path=config_path,
        system_prompt=render_prompt(settings.label, pronouns, str(settings.state_dir)),
        tools=tools,
        model=model,
        session=session,
    )
    state = ct.StreamState()
    t0 = time.monotonic()
    try:
        proc = await trio.lowlevel.open_process(
            command,
            cwd=settings.state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
            # the CLI dies with this harness, even by SIGKILL (``hivectl kill``): an orphaned turn
            # would go on calling the hive's tools as this agent
            preexec_fn=proc_child_setup(),
        )
    except OSError as exc:
        return _not_started(started, f"cannot run {claude}: {exc.strerror or exc}")
    log.info("turn: %d message(s), claude pid %d", len(messages), proc.pid)
    status: ct.Status | None = None
    try:
        with trio.move_on_after(settings.turn_limit) as limit:
            assert proc.stdout is not None
            buf = bytearray()
            while data := await proc.stdout.receive_some(1 << 16):
                buf += data
                while (i := buf.find(b"\n")) >= 0:
                    if state.feed(bytes(buf[:i])) == "init" and not state.hive_connected:
                        status = "mcp_unavailable"
                        break
                    del buf[: i + 1]
                if status is not None:
                    break
                if len(buf) > MAX_STREAM_LINE:
                    buf.clear()
            if status is None:
                await proc.wait()
        if limit.cancelled_caught:
            status = "timed_out"
    finally:
        with trio.CancelScope(shield=True):
            _kill_group(proc.pid)
            await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()
    result = state.outcome(started, time.monotonic() - t0, proc.returncode)
    if status == "timed_out":
        error = f"killed at the turn limit ({settings.turn_limit:g} s)"
        result = attrs.evolve(result, status=status, error=error)
    elif status == "mcp_unavailable":
        result = attrs.evolve(
            result, status=status, error=f"the hive tools were not connected (hyperhive: {state.mcp_status})"
        )
    elif result.status == "error" and session is not None and not state.init_seen:
        # a --resume of a session the CLI no longer has (its config dir was wiped): the retry
        # starts a fresh one
        log.warning("session %s not resumed (%s); the next turn starts a new one", session, result.error)
        (settings.state_dir / ct.SESSION_FILE).unlink(missing_ok=True)
        result = attrs.evolve(result, session_id=None)
    log.info(
        "turn %s in %.1f s: %d tool call(s), %d/%d tokens, $%.6f",
        result.status,
        result.duration_s,
        result.tool_calls,
        result.input_tokens,
        result.output_tokens,
        result.total_cost_usd,
    )
    return result


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _ack(chan: Channel) -> None:
    answer = await chan.call({"cmd": "ack_turn"})
    if not answer.get("ok"):
        raise SocketGone(f"ack_turn refused: {answer.get('error')}")


def beat(state_dir: Path) -> None:
    """Write the current unix time to the heartbeat file (atomically)."""
    tmp = state_dir / f".{HEARTBEAT_FILE}.tmp"
    tmp.write_text(f"{time.time():.3f}\n", encoding="utf-8")
    os.replace(tmp, state_dir / HEARTBEAT_FILE)


async def run_harness(
    settings: HarnessSettings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Write ``env.json``, then heartbeat forever; ``task_status.started()`` after the first beat.

    Runs until cancelled; the state dir is left as it is (the last heartbeat shows when it stopped).
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings.state_dir / ENV_FILE, dict(settings.hive_env))
    write_prompt(settings)
    beat(settings.state_dir)
    log.info("agent %s up; state in %s", settings.label, settings.state_dir)
    async with trio.open_nursery() as nursery:
        if settings.socket is not None:
            await nursery.start(serve_inbox, settings)
        task_status.started()
        while True:
            await trio.sleep(settings.heartbeat_seconds)
            beat(settings.state_dir)


async def _main(settings: HarnessSettings) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_harness, settings)
            async for signum in signals:
                log.info("agent %s: %s, exiting", settings.label, signal.Signals(signum).name)
                nursery.cancel_scope.cancel(reason="signal")
                break


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m hivecore.harness", description=__doc__)
    parser.add_argument(
        "--turn-command", default=None, help="shell command run per turn, messages on stdin as JSON lines"
    )
    args = parser.parse_args(argv)
    try:
        env = with_agent_env_file(os.environ)
        os.environ.update(env)  # the turn command and the CLI inherit it
        settings = HarnessSettings.from_env(env)
    except SettingsError as e:
        log.error("cannot start: %s", e)
        return 2
    if args.turn_command:
        settings = attrs.evolve(settings, turn_command=args.turn_command)
    trio.run(_main, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
