"""Issue 17 items 4 and 5 on a real daemon: the agents' backend environment (``--agent-env-file``,
``hivectl env``) and their Claude login (``hivectl login``/``logout``, the dashboard's row), with real
processes, sockets, files and HTTP. No value of a secret may reach a log, ``/api/state``, an event
(what SSE sends) or an answer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from hivecore import agent_users
from hivecore.agent_env import AgentEnv, EnvError, load_env_file, parse_env_text
from hivecore.credentials import LOGIN_FILE, has_login, login_env
from hivecore.daemon import Daemon
from hivecore.wire.events import event_to_dict
from hivecore.wire.helper import helper_from_body
from tests.conftest import AUTH, make_config, write_test_token
from tests.test_hivectl import _env, err, hivectl, out
from tests.waiting import eventually
from tests.web_client import event_stream, http

SECRET = "sk-ant-api03-TOPSECRET-value-0123456789"
OAUTH = "sk-ant-oat01-ALSOSECRET-9876543210"
BASE_URL = "http://127.0.0.1:9/gateway"


def env_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
async def hive_env(state_dir: Path, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A running daemon with an agent env file giving every agent a gateway URL and a token."""
    from hivecore.daemon import main
    from web.app import daemon_app

    file = env_file(
        tmp_path / "agents.env", f"# gateway\nANTHROPIC_BASE_URL={BASE_URL}\nSHARED_TOKEN={SECRET}\n"
    )
    write_test_token(state_dir)
    config = make_config(state_dir, agent_env_file=file)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


def agent_environ(daemon: Daemon, name: str) -> dict[str, str]:
    """The environment of agent ``name``'s process (the shim's child), read from /proc."""
    shim = daemon.views.rows()[name]  # running
    assert shim.running
    state = daemon.runtime.list_nowait([name])[name]  # type: ignore[attr-defined]
    children = Path(f"/proc/{state.pid}/task/{state.pid}/children").read_text().split()
    if not children:
        return {}  # the shim has not started the agent yet
    raw = Path(f"/proc/{children[0]}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def everything_written(daemon: Daemon) -> bytes:
    """Every file under the state dir (specs, logs, the db) as one blob, except the two places a
    secret is meant to be: the daemon's per-agent env file and an agent's login file."""
    blob = []
    for path in daemon.config.paths.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name not in ("agent-env.json", LOGIN_FILE):
            with contextlib.suppress(OSError):
                blob.append(path.read_bytes())
    return b"\n".join(blob)


# --- the env file's checks ------------------------------------------------------------------------


def test_env_file_is_refused_unless_private_regular_and_well_formed(tmp_path: Path) -> None:
    good = env_file(tmp_path / "good", "A=1\n\n# note\nB = x=y\r\nEMPTY=\n")
    assert load_env_file(good) == {"A": "1", "B": " x=y", "EMPTY": ""}
    wide = env_file(tmp_path / "wide", f"K={SECRET}\n", 0o640)
    with pytest.raises(EnvError, match=r"mode 0640 lets others read it; it holds secrets: chmod 600"):
        load_env_file(wide)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(EnvError, match="symlink"):
        load_env_file(link)
    with pytest.raises(EnvError, match="cannot open it"):
        load_env_file(tmp_path / "missing")
    other = env_file(tmp_path / "other", "A=1\n")
    os.chown(other, 4242, 4242)
    with pytest.raises(EnvError, match="owned by uid 4242"):
        load_env_file(other)
    cases = {
        f"NOEQUALS{SECRET}\n": "line 1: not KEY=VALUE",
        f"1BAD={SECRET}\n": "line 1: not an environment variable name",
        f"HIVE_SOCKET={SECRET}\n": "line 1: HIVE_SOCKET is set by hive-c0re itself",
        f"A=1\nPATH={SECRET}\n": "line 2: PATH is set by hive-c0re itself",
        f"K={SECRET}\x00x\n": "line 1: the value of K holds a NUL",
        f"K={SECRET}\rx\n": "line 1: the value of K holds a NUL, CR or newline",
    }
    for text, expected in cases.items():
        with pytest.raises(EnvError) as info:
            parse_env_text(text, "f")
        assert expected in str(info.value)
        assert SECRET not in str(info.value)  # an error names the key, never the value


async def test_serve_refuses_an_unusable_env_file_with_one_clear_line(tmp_path: Path) -> None:
    wide = env_file(tmp_path / "agents.env", f"ANTHROPIC_API_KEY={SECRET}\n", 0o644)
    argv = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(tmp_path / "s")]
    with trio.fail_after(60):
        result = await trio.run_process(
            [*argv, "--agent-env-file", str(wide)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_env(),
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"hive-c0re: agent env file {wide}: mode 0644 lets others read it; it holds secrets: chmod 600 {wide}"
    ]
    assert not (tmp_path / "s").exists()  # refused before anything was created


# --- env on a real daemon -------------------------------------------------------------------------


async def test_env_reaches_the_agent_process_and_no_log_state_or_event(
    hive_env: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hive = hive_env
    sock = hive.config.host_socket_path
    events: list[bytes] = []

    async def record_events(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with hive.bus.subscribe() as sub:
            task_status.started()
            while True:
                events.append(json.dumps(event_to_dict(await sub.receive())).encode())

    sse_frames: list[bytes] = []

    async def read_sse(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with event_stream(hive, "/api/dashboard/stream", AUTH) as sse:
            await sse.wait_connected()
            task_status.started()
            while True:
                sse_frames.append((await sse.next()).data.encode())

    async with trio.open_nursery() as nursery:
        await nursery.start(record_events)
        await nursery.start(read_sse)
        assert (await hivectl("spawn", "a", sock=sock)).returncode == 0
        await eventually(lambda: "ANTHROPIC_BASE_URL" in agent_environ(hive, "a"), what="agent env")
        environ = agent_environ(hive, "a")
        assert environ["ANTHROPIC_BASE_URL"] == BASE_URL
        assert environ["SHARED_TOKEN"] == SECRET
        assert environ["CLAUDE_CONFIG_DIR"] == str(hive.config.paths.agent_claude("a"))
        assert environ["HIVE_LABEL"] == "a"  # identity untouched
        assert hive.views.rows()["a"].needs_login  # a token named otherwise is no login

        # per-agent values: from stdin (never argv, where ps shows them), overriding the file
        result = await trio.run_process(
            [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), "env", "a",
             "ANTHROPIC_BASE_URL=http://127.0.0.1:9/own", "--stdin"],
            stdin=f"ANTHROPIC_API_KEY={OAUTH}\n".encode(),
            capture_stdout=True, capture_stderr=True, check=False, env=_env(),
        )  # fmt: skip
        assert result.returncode == 0, err(result)
        assert out(result).split() == [
            "KEY", "FROM", "ANTHROPIC_API_KEY", "agent", "ANTHROPIC_BASE_URL", "agent", "SHARED_TOKEN", "file"
        ]  # fmt: skip
        assert not hive.views.rows()["a"].needs_login  # the key logs it in at once
        stored = hive.config.paths.root / "agent-env.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert (await hivectl("restart", "a", sock=sock)).returncode == 0
        await eventually(
            lambda: agent_environ(hive, "a").get("ANTHROPIC_API_KEY") == OAUTH, what="restart env"
        )
        assert agent_environ(hive, "a")["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9/own"

        listed = await hivectl("env", "a", sock=sock)
        assert SECRET not in out(listed)
        assert OAUTH not in out(listed)
        bad = await hivectl("env", "a", f"HIVE_LABEL={SECRET}", sock=sock)
        assert bad.returncode == 1
        assert "HIVE_LABEL is set by hive-c0re itself" in err(bad)
        assert SECRET not in err(bad)
        bad = await hivectl("env", "a", "K=a\nb", sock=sock)
        assert "the value of K holds a NUL, CR or newline" in err(bad)
        assert (await hivectl("env", "a", "--unset", "ANTHROPIC_API_KEY", sock=sock)).returncode == 0
        assert hive.views.rows()["a"].needs_login

        status, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
        assert status == 200
        status_line = out(await hivectl("--json", "status", sock=sock))
        await eventually(lambda: len(sse_frames) >= len(events), what="the stream caught up")
        nursery.cancel_scope.cancel()
    for blob, where in (
        (body, "/api/state"),
        (status_line.encode(), "agent_status"),
        (b"\n".join(events), "events"),
        (b"\n".join(sse_frames), "SSE"),
        (caplog.text.encode(), "logs"),
        (everything_written(hive), "state dir"),
    ):
        assert SECRET.encode() not in blob, where
        assert OAUTH.encode() not in blob, where


# --- login -----------------------------------------------------------------------------------------


async def login_events(hive: Daemon) -> list[tuple[str, str]]:
    from hivecore import store as st

    rows = await hive.store.call(lambda c: st.undelivered_for(c, "manager"))
    pairs = [(e.EVENT, getattr(e, "agent", "")) for e in (helper_from_body(b) for _, _, b in rows)]
    return [p for p in pairs if p[0] in ("logged_in", "needs_login")]


async def test_login_and_logout_by_hivectl_and_dashboard(
    hive: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sock = hive.config.host_socket_path
    for name in ("a", "b"):
        assert (await hivectl("spawn", name, sock=sock)).returncode == 0
    await hive.crash_watch.tick()  # a new agent needs a login: the manager hears it once
    assert await login_events(hive) == [("needs_login", "a"), ("needs_login", "b")]
    assert hive.views.rows()["a"].needs_login
    assert hive.views.rows()["b"].needs_login
    status = out(await hivectl("status", "a", sock=sock)).splitlines()[1].split()
    assert status[3] == "login"

    result = await trio.run_process(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), "login", "a"],
        stdin=f"  {SECRET}\n".encode(), capture_stdout=True, capture_stderr=True, check=False, env=_env(),
    )  # fmt: skip
    assert (result.returncode, out(result)) == (0, "a is logged in (login file)\n"), err(result)
    claude = hive.config.paths.agent_claude("a")
    file = claude / LOGIN_FILE
    st_ = file.lstat()
    assert stat.S_IMODE(st_.st_mode) == 0o600
    who = agent_users.credentials(hive.config.paths, "a")
    if who is not None:  # root daemon: the agent's uid reads it, and no other agent's can
        assert (st_.st_uid, st_.st_gid) == (who.uid, who.gid)
        assert stat.S_IMODE(claude.stat().st_mode) == 0o700
        assert claude.stat().st_uid == who.uid
    assert login_env(claude) == {"ANTHROPIC_API_KEY": SECRET}
    assert has_login({}, claude)
    assert not has_login({}, hive.config.paths.agent_claude("b"))
    assert not hive.views.rows()["a"].needs_login
    assert hive.views.rows()["b"].needs_login
    await hive.crash_watch.tick()
    assert (await login_events(hive))[2:] == [("logged_in", "a")]

    # the dashboard row: a setup-token token into b, then a logout of a
    status_code, _, body = await http(hive, "POST", "/agent-login/b", {"secret": OAUTH}, headers=AUTH)
    assert (status_code, json.loads(body)) == (200, {"ok": True, "message": "b logged in"})
    assert login_env(hive.config.paths.agent_claude("b")) == {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    status_code, _, body = await http(hive, "POST", "/agent-logout/a", headers=AUTH)
    assert (status_code, json.loads(body)) == (200, {"ok": True, "message": "a logged out"})
    assert not file.exists()
    assert hive.views.rows()["a"].needs_login
    await hive.crash_watch.tick()
    assert (await login_events(hive))[2:] == [("logged_in", "a"), ("logged_in", "b"), ("needs_login", "a")]
    result = await hivectl("logout", "b", sock=sock)
    assert out(result) == "b is logged out (needs login)\n"

    # one clear answer for each bad input; the value never in it
    for argv_stdin, expected in (
        (("login", "a", ""), "no key or token given"),
        (("login", "a", "two words\n"), "holds whitespace or control characters"),
        (("login", "nobody", SECRET), 'agent "nobody" is not managed by this hive'),
        (("login", "../x", SECRET), "name"),
    ):
        *argv, stdin = argv_stdin
        result = await trio.run_process(
            [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), *argv],
            stdin=stdin.encode(), capture_stdout=True, capture_stderr=True, check=False, env=_env(),
        )  # fmt: skip
        assert result.returncode == 1
        assert expected in err(result), err(result)
        assert "TOPSECRET" not in err(result) + out(result)
    status_code, _, body = await http(hive, "POST", "/agent-login/a", {"secret": ""}, headers=AUTH)
    assert status_code == 400
    assert b"missing field 'secret'" in body
    status_code, _, body = await http(hive, "POST", "/agent-login/a", {"secret": "a\tb"}, headers=AUTH)
    assert status_code == 400
    assert b"a\\tb" not in body
    assert "TOPSECRET" not in caplog.text
    assert "ALSOSECRET" not in caplog.text
    assert b"TOPSECRET" not in everything_written(hive)
    assert b"ALSOSECRET" not in everything_written(hive)


async def test_login_never_writes_through_a_planted_link(hive: Daemon, tmp_path: Path) -> None:
    """The agent owns its claude dir: a link there (to another agent's dir or a host file) is never
    followed; the login refuses or replaces the link itself."""
    sock = hive.config.host_socket_path
    for name in ("a", "b"):
        assert (await hivectl("spawn", name, sock=sock)).returncode == 0
    target = tmp_path / "host-file"
    target.write_text("untouched")
    claude_a = hive.config.paths.agent_claude("a")
    (claude_a / LOGIN_FILE).symlink_to(target)
    (claude_a / f".{LOGIN_FILE}.tmp").symlink_to(tmp_path / "made-by-link")
    assert hive.views.rows()["a"].needs_login  # a link is no login
    result = await trio.run_process(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), "login", "a"],
        stdin=SECRET.encode(), capture_stdout=True, capture_stderr=True, check=False, env=_env(),
    )  # fmt: skip
    assert result.returncode == 0, err(result)
    assert target.read_text() == "untouched"
    assert not (tmp_path / "made-by-link").exists()
    assert not (claude_a / LOGIN_FILE).is_symlink()

    claude_b = hive.config.paths.agent_claude("b")
    claude_b.rename(claude_b.with_name("claude.real"))
    claude_b.symlink_to(claude_a)  # b tries to read a's login by pointing its dir at a's
    result = await trio.run_process(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), "login", "b"],
        stdin=OAUTH.encode(), capture_stdout=True, capture_stderr=True, check=False, env=_env(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "its claude directory is a symlink or not a directory; not following it" in err(result)
    assert login_env(claude_a) == {"ANTHROPIC_API_KEY": SECRET}  # a's login untouched
    assert hive.views.rows()["b"].needs_login  # a link to a's dir does not log b in


def test_agent_env_store_is_all_or_nothing(tmp_path: Path) -> None:
    env = AgentEnv(tmp_path)
    env.update("a", {"K": "1"}, [])
    with pytest.raises(Exception, match="not an environment variable name"):
        env.update("a", {"GOOD": "2", "BAD-KEY": "3"}, [])
    assert env.own("a") == {"K": "1"}
    assert env.update("a", {}, ["K", "NEVER_SET"]) == []
    assert not (tmp_path / "agent-env.json").read_text().count("K")


def test_harness_reads_only_a_regular_login_file(tmp_path: Path) -> None:
    (tmp_path / LOGIN_FILE).write_text(json.dumps({"env": {"ANTHROPIC_API_KEY": "k", "LD_PRELOAD": "x"}}))
    assert login_env(tmp_path) == {"ANTHROPIC_API_KEY": "k"}  # only the credential variables
    assert has_login({"CLAUDE_CODE_OAUTH_TOKEN": "t"}, tmp_path / "missing")
    assert not has_login({"ANTHROPIC_API_KEY": ""}, tmp_path / "missing")
    (tmp_path / LOGIN_FILE).unlink()
    (tmp_path / LOGIN_FILE).symlink_to(tmp_path / "elsewhere")
    assert login_env(tmp_path) == {}
    assert not has_login({}, tmp_path)


async def test_a_purge_forgets_the_agents_values_and_usage(hive: Daemon) -> None:
    from hivecore import usage

    sock = hive.config.host_socket_path
    assert (await hivectl("spawn", "a", sock=sock)).returncode == 0
    assert (await hivectl("env", "a", "K=v", sock=sock)).returncode == 0
    await hive.store.call(lambda c: usage.record(c, "a", usage.Turn(duration_seconds=1), 1.0))
    assert (await hivectl("destroy", "a", sock=sock)).returncode == 0  # kept state: kept values
    assert hive.agent_env is not None
    assert hive.agent_env.own("a") == {"K": "v"}
    assert (await hivectl("purge", "a", sock=sock)).returncode == 0
    assert hive.agent_env.own("a") == {}
    assert await hive.store.call(lambda c: usage.summaries(c, ["a"], 0)) == {}
    assert (await hivectl("spawn", "a", sock=sock)).returncode == 0
    assert out(await hivectl("env", "a", sock=sock)) == "no environment keys\n"
