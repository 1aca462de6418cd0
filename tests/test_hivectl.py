"""The real ``hivectl`` as a subprocess against the real daemon's socket: tables, --json, exit codes."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import hivecore
from hivecore.cli import hivectl as hivectl_cli
from hivecore.daemon import Daemon
from hivecore.errors import HiveError
from hivecore.wire.host import (
    COMMANDS,
    AgentConfigRequest,
    AgentEnvRequest,
    AgentStatusRequest,
    AgentStatusRow,
    AlarmsRequest,
    ApprovalRequest,
    ApproveRequest,
    AuditRequest,
    CancelReminderRequest,
    DenyRequest,
    DestroyRequest,
    GetLogsRequest,
    HostRequest,
    HostResponse,
    KillRequest,
    LifecycleScope,
    ListRequest,
    LoginRequest,
    LogoutRequest,
    MetaUpdateRequest,
    OperatorInboxRequest,
    OpSendRequest,
    PendingRequest,
    PurgeTombstoneRequest,
    RebuildRequest,
    ReleaseRequest,
    RemindersRequest,
    RequestSpawnRequest,
    RestartRequest,
    ScheduleRequest,
    SchedulesRequest,
    SetPausedRequest,
    SpawnRequest,
    StartRequest,
    StateFileRequest,
    StopRequest,
    SubscribeAgentStatusRequest,
    SwarmOpRequest,
    SwarmStatusRequest,
    UnscheduleRequest,
    UrlsRequest,
    UsageRequest,
    encode_response,
    parse_request,
)
from hivecore.wire.questions import AnswerRequest, CancelQuestionRequest, QuestionsRequest

REPO = Path(hivecore.__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HIVE_HOST_SOCK"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


async def hivectl(
    *args: str, sock: Path | None, env: dict[str, str] | None = None, unprivileged: bool = False
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "hivecore.cli.hivectl"]
    if sock is not None:
        cmd += ["--socket", os.fspath(sock)]
    if unprivileged:
        # still uid 0 (so it can read this checkout and the venv wherever CI put them), but without
        # the capabilities that let root ignore file permissions
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", *cmd]
    with trio.fail_after(30):
        return await trio.run_process(
            [*cmd, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env or _env(),
            cwd=REPO,
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


async def test_verbs_print_tables_and_exit_zero(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    result = await hivectl("list", sock=sock)
    assert (result.returncode, out(result)) == (0, "no agents\n")
    for name in ("a", "bee"):
        result = await hivectl("spawn", name, sock=sock)
        assert (result.returncode, out(result)) == (0, f"spawned {name}\n"), err(result)
    assert out(await hivectl("list", sock=sock)) == "a\nbee\n"
    assert out(await hivectl("stop", "bee", sock=sock)) == "stopped bee\n"
    assert out(await hivectl("pause", "bee", sock=sock)) == "paused bee\n"

    status = out(await hivectl("status", sock=sock)).splitlines()
    assert status[0].split() == ["NAME", "STATE", "PAUSED", "NEEDS", "SHA", "REMINDERS", "STATUS"]
    assert [line.split()[:3] for line in status[1:]] == [["a", "running", "-"], ["bee", "stopped", "yes"]]
    state_col = status[0].index("STATE")
    assert status[1][state_col:].startswith("running")
    assert status[2][state_col:].startswith("stopped")  # aligned although "bee" is longer than "a"
    only = out(await hivectl("status", "bee", sock=sock)).splitlines()
    assert [line.split()[0] for line in only] == ["NAME", "bee"]

    assert out(await hivectl("resume", "bee", sock=sock)) == "resumed bee\n"
    # a running agent is left as it is, and hivectl says so (issue 16 item 3)
    assert out(await hivectl("start", "--all", sock=sock)) == "bee started; a already running\n"
    assert out(await hivectl("restart", "a", sock=sock)) == "restarted a\n"
    assert out(await hivectl("stop", "a", "bee", "--hard", sock=sock)) == "stopped a, bee\n"
    assert out(await hivectl("start", "a", sock=sock)) == "started a\n"
    assert out(await hivectl("kill", "a", sock=sock)) == "killed a\n"
    assert out(await hivectl("pending", sock=sock)) == "no pending approvals\n"
    assert out(await hivectl("pending", "--all", sock=sock)) == "no approvals\n"
    urls = out(await hivectl("urls", sock=sock)).splitlines()
    assert urls[0].split() == ["WHAT", "URL"]
    assert urls[1].split() == ["home", hive.dashboard_urls[0] + "/"]
    assert out(await hivectl("destroy", "a", sock=sock)) == "destroyed a (state kept)\n"
    result = await hivectl("destroy", "bee", "--purge", sock=sock)
    assert out(result) == "destroyed bee and purged its state\n"


async def test_json_prints_the_daemons_answer_verbatim(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await hivectl("spawn", "a", sock=sock)
    result = await hivectl("--json", "status", sock=sock)
    expected = encode_response(
        HostResponse(
            ok=True, agent_statuses=[AgentStatusRow.from_view(v) for v in hive.coordinator.views().values()]
        )
    )
    assert (result.returncode, result.stdout) == (0, expected)
    # --json works after the verb too, and refusals are printed raw with exit code 1
    result = await hivectl("restart", "ghost", "--json", sock=sock)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "version": 1,
        "ok": False,
        "error": 'agent "ghost" is not managed by this hive',
    }
    assert (
        await hivectl("pending", "--json", sock=sock)
    ).stdout == b'{"version":1,"ok":true,"approvals":[]}\n'


async def test_refusals_exit_one_with_the_daemons_message(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    result = await hivectl("restart", "ghost", sock=sock)
    assert (result.returncode, err(result)) == (1, 'hivectl: agent "ghost" is not managed by this hive\n')
    assert out(result) == ""
    result = await hivectl("start", sock=sock)  # refused by hivectl itself (the daemon would too)
    assert result.returncode == 1
    assert "start: name at least one agent, or use --all" in err(result)
    result = await hivectl("rebuild", "a", sock=sock)
    assert (result.returncode, err(result)) == (1, 'hivectl: agent "a" is not managed by this hive\n')
    for args in (["approve", "1"], ["deny", "1", "--note", "no"]):
        result = await hivectl(*args, sock=sock)
        assert (result.returncode, err(result)) == (1, "hivectl: no approval 1\n")
    result = await hivectl("request-spawn", "hm1nd", sock=sock)
    assert result.returncode == 1
    assert '"hm1nd" is the manager' in err(result)
    # a usage error is 1 too: 2 is reserved for "daemon unreachable"
    result = await hivectl("approve", "seven", sock=sock)
    assert result.returncode == 1
    assert "invalid int value" in err(result)


async def test_unreachable_daemon_exits_two_and_names_the_fix(state_dir: Path) -> None:
    missing = state_dir / "nope.sock"
    result = await hivectl("list", sock=missing)
    assert result.returncode == 2
    assert f"no socket at {missing}: the daemon is not running" in err(result)

    stale = state_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(stale))
    dead.close()
    result = await hivectl("status", sock=stale)
    assert result.returncode == 2
    assert "the daemon is down" in err(result)

    # the default path comes from HIVE_HOST_SOCK
    result = await hivectl("list", sock=None, env=_env(HIVE_HOST_SOCK=os.fspath(missing)))
    assert result.returncode == 2
    assert f"no socket at {missing}" in err(result)


def _can_drop_caps() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_drop_caps(), reason="needs root and a setpriv that can drop capabilities")
async def test_permission_denied_names_the_admin_group(hive: Daemon) -> None:
    # the socket belongs to another user and group (0660): connecting without root's override is EACCES
    os.chown(hive.config.host_socket_path, 65534, 65534)
    result = await hivectl("list", sock=hive.config.host_socket_path, unprivileged=True)
    assert result.returncode == 2
    assert "you are not in the hive-admin group" in err(result)


async def fake_daemon(directory: Path) -> tuple[Path, trio.SocketListener]:
    path = directory / "fake.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(os.fspath(path))
    sock.listen()
    return path, trio.SocketListener(sock)


async def test_newer_daemon_version_warns_and_continues(state_dir: Path) -> None:
    async def newer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()
            await stream.send_all(b'{"version":2,"ok":true,"agents":["a"],"nodes":[]}\n')

    async def mute(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()

    for handler, code in ((newer, 0), (mute, 2)):
        path, listener = await fake_daemon(state_dir)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
            result = await hivectl("list", sock=path)
            nursery.cancel_scope.cancel()
        path.unlink()
        assert result.returncode == code
        if code == 0:
            assert out(result) == "a\n"
            assert "warning: the daemon speaks host.sock version 2, this hivectl knows 1; continuing" in err(
                result
            )
        else:
            assert "the daemon closed the connection without answering" in err(result)


async def test_watch_streams_changes(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await hivectl("spawn", "w", sock=sock)
    for as_json in (False, True):
        args = [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", os.fspath(sock), "watch"]
        if as_json:
            args.append("--json")
        process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, env=_env(), cwd=REPO)
        try:
            assert process.stdout is not None
            buf = b""
            with trio.fail_after(20):
                while b"\n" not in buf:
                    buf += await process.stdout.receive_some()
                first, _, buf = buf.partition(b"\n")
                if as_json:
                    assert first == b'{"version":1,"ok":true}'
                else:
                    assert first.split() == [
                        b"TIME",
                        b"NAME",
                        b"STATE",
                        b"PAUSED",
                        b"NEEDS",
                        b"SHA",
                        b"REMINDERS",
                        b"STATUS",
                    ]
                await hive.coordinator.set_paused("w", not as_json)
                while b"\n" not in buf:
                    buf += await process.stdout.receive_some()
            line = buf.partition(b"\n")[0]
            if as_json:
                assert json.loads(line)["agent_statuses"][0]["paused"] is False
            else:
                assert line.split()[1:4] == [b"w", b"running", b"yes"]
        finally:
            process.kill()
            with trio.fail_after(10):
                await process.wait()


async def test_hive_c0re_admin_verbs_are_the_same_client(hive: Daemon) -> None:
    """The original's `hive-c0re list` / `hive-c0re spawn x` keep working (same client as hivectl)."""
    sock = os.fspath(hive.config.host_socket_path)
    base = [sys.executable, "-m", "hivecore.cli.daemon"]
    with trio.fail_after(30):
        spawned = await trio.run_process(
            [*base, "spawn", "cc", "--socket", sock], capture_stdout=True, env=_env(), cwd=REPO, check=True
        )
        listed = await trio.run_process(
            [*base, "list", "--socket", sock], capture_stdout=True, env=_env(), cwd=REPO, check=True
        )
    assert out(spawned) == "spawned cc\n"
    assert out(listed) == "cc\n"


async def test_purge_refused_while_the_agent_exists_then_deletes_the_kept_state(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    state = hive.config.paths.agent_dir("old")
    assert (await hivectl("spawn", "old", sock=sock)).returncode == 0
    result = await hivectl("purge", "old", sock=sock)
    assert (result.returncode, err(result)) == (
        1,
        'hivectl: agent "old" still has a live container; destroy it first\n',
    )
    assert state.exists()
    assert out(await hivectl("destroy", "old", sock=sock)) == "destroyed old (state kept)\n"
    assert state.exists()
    result = await hivectl("purge", "old", sock=sock)
    assert (result.returncode, out(result)) == (0, "purged the kept state of old\n"), err(result)
    assert not state.exists()
    result = await hivectl("purge", "old", "--json", sock=sock)
    assert (result.returncode, result.stdout) == (
        1,
        b'{"version":1,"ok":false,"error":"no kept state for \\"old\\""}\n',
    )


HIVECTL_REQUESTS: list[tuple[list[str], HostRequest]] = [
    (["list"], ListRequest()),
    (["status"], AgentStatusRequest()),
    (["status", "a", "b"], AgentStatusRequest(names=["a", "b"])),
    (["watch"], SubscribeAgentStatusRequest()),
    (["start", "a", "b"], StartRequest(scope=LifecycleScope(agent_names=["a", "b"]))),
    (["start", "--all"], StartRequest(scope=LifecycleScope(agents=True))),
    (["stop", "a", "--hard"], StopRequest(scope=LifecycleScope(agent_names=["a"]), graceful=False)),
    (["stop", "--all"], StopRequest(scope=LifecycleScope(agents=True), graceful=True)),
    (["restart", "a"], RestartRequest(name="a")),
    (["release", "a"], ReleaseRequest(name="a")),
    (["alarms"], AlarmsRequest()),
    (["rebuild", "a"], RebuildRequest(name="a")),
    (["kill", "a"], KillRequest(name="a")),
    (["spawn", "a"], SpawnRequest(name="a")),
    (["destroy", "a", "--purge"], DestroyRequest(name="a", purge=True)),
    (["purge", "a"], PurgeTombstoneRequest(name="a")),
    (["request-spawn", "a"], RequestSpawnRequest(name="a")),
    (["request-spawn", "a", "--description", "d"], RequestSpawnRequest(name="a", description="d")),
    (["pending"], PendingRequest(only_pending=True)),
    (["pending", "--all"], PendingRequest()),
    (["show", "7"], ApprovalRequest(id=7)),
    (["logs", "a"], GetLogsRequest(name="a", lines=50)),
    (["logs", "a", "-n", "5", "-f"], GetLogsRequest(name="a", lines=5)),
    (["send", "a", "hi there"], OpSendRequest(to="a", body="hi there")),
    (["send", "@manager", "hi"], OpSendRequest(to="@manager", body="hi")),
    (["inbox", "--limit", "5"], OperatorInboxRequest(limit=5)),
    (["approve", "7"], ApproveRequest(id=7)),
    (["deny", "7", "--note", "no"], DenyRequest(id=7, note="no")),
    (["pause", "a"], SetPausedRequest(name="a", paused=True)),
    (["resume", "a"], SetPausedRequest(name="a", paused=False)),
    (["urls"], UrlsRequest()),
    (["meta-update", "hyperhive", "agent-a"], MetaUpdateRequest(inputs=["hyperhive", "agent-a"])),
    (["login", "a"], LoginRequest(name="a", secret="sk-from-stdin\n")),
    (["logout", "a"], LogoutRequest(name="a")),
    (["env", "a"], AgentEnvRequest(name="a")),
    (["usage"], UsageRequest()),
    (["usage", "a"], UsageRequest(name="a")),
    (["questions"], QuestionsRequest()),
    (["answer", "3", "yes, go"], AnswerRequest(id=3, answer="yes, go")),
    (["cancel-question", "3"], CancelQuestionRequest(id=3)),
    (["reminders"], RemindersRequest()),
    (["reminders", "a", "--done"], RemindersRequest(name="a", done=True)),
    (["cancel-reminder", "3"], CancelReminderRequest(id=3)),
    (["schedules"], SchedulesRequest()),
    (
        ["schedule", "--to", "a,b", "--every", "1h", "--description", "d", "hi"],
        ScheduleRequest(to=["a", "b"], body="hi", every="1h", description="d"),
    ),
    (
        ["schedule", "--to", "a", "--at", "2026-12-01T12:00:00Z", "hi"],
        ScheduleRequest(to=["a"], body="hi", at="2026-12-01T12:00:00Z"),
    ),
    (["unschedule", "3", "--target", "a"], UnscheduleRequest(id=3, target="a")),
    (["swarm"], SwarmStatusRequest()),
    # operator reach (docs/swarm.md): NAME@HIVE / ID@HIVE become one swarm_op
    (["stop", "coder@farm", "--hard"], SwarmOpRequest(op="stop", target="coder@farm", graceful=False)),
    (["start", "coder@farm"], SwarmOpRequest(op="start", target="coder@farm")),
    (["restart", "coder@farm"], SwarmOpRequest(op="restart", target="coder@farm")),
    (["rebuild", "coder@farm"], SwarmOpRequest(op="rebuild", target="coder@farm")),
    (["kill", "coder@farm"], SwarmOpRequest(op="kill", target="coder@farm")),
    (["pause", "coder@farm"], SwarmOpRequest(op="pause", target="coder@farm")),
    (["resume", "coder@farm"], SwarmOpRequest(op="resume", target="coder@farm")),
    (["approve", "7@farm"], SwarmOpRequest(op="approve", target="7@farm")),
    (["deny", "7@farm", "--note", "no"], SwarmOpRequest(op="deny", target="7@farm", note="no")),
    (
        ["swarm-op", "stop", "coder@farm", "--hard", "--wait", "5"],
        SwarmOpRequest(op="stop", target="coder@farm", graceful=False, timeout=5.0),
    ),
    (["audit"], AuditRequest()),
    (
        ["audit", "--since", "1764540000", "--agent", "a", "--limit", "5", "--before", "9"],
        AuditRequest(since=1764540000.0, agent="a", limit=5, before=9),
    ),
    (["audit", "--since", "2026-12-01T00:00:00Z"], AuditRequest(since=1796083200.0)),
    (["audit", "--verify"], AuditRequest(verify=True)),
    (["config", "a"], AgentConfigRequest(name="a")),
    (["state-file", "a", "notes/x.md"], StateFileRequest(name="a", path="notes/x.md")),
    (
        ["env", "a", "K=v=w", "E=", "--unset", "U", "--stdin"],
        AgentEnvRequest(name="a", set={"K": "v=w", "E": "", "S": "from stdin"}, unset=["U"]),
    ),
]


@pytest.mark.parametrize(("argv", "expected"), HIVECTL_REQUESTS)
def test_every_request_hivectl_writes_is_the_wire_record(
    argv: list[str], expected: HostRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hivectl writes its lines without the converter (it starts faster so); the daemon's decoder
    must read each one as exactly the record the verb means (secrets come from stdin)."""
    stdin = "S=from stdin\n" if argv[0] == "env" else "sk-from-stdin\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    args = hivectl_cli.build_parser().parse_args(argv)
    line = args.build(args).line()
    assert line.endswith(b"\n")
    assert parse_request(line.rstrip(b"\n")) == expected


def test_every_wire_verb_has_a_hivectl_command() -> None:
    assert {r.CMD for _, r in HIVECTL_REQUESTS} == set(COMMANDS)


# --- the operator's review and conversation CLI (issue 16) ---------------------------------------------


async def _host_line(sock: Path, request: dict[str, object]) -> bytes:
    with trio.fail_after(60):
        stream = await trio.open_unix_socket(os.fspath(sock))
        async with stream:
            await stream.send_all(json.dumps(request).encode() + b"\n")
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def _failed_and_pending(hive: Daemon) -> tuple[int, int, str]:
    """An apply_commit that failed to build (its nix error in the note) and a pending spawn."""
    from tests.test_approvals import BROKEN_NIX, commit

    await hive.coordinator.spawn("coder")
    sha = await commit(hive.config.paths.agent_config("coder"), {"agent.nix": BROKEN_NIX}, "oops")
    broken = await hive.coordinator.request_apply_commit("coder", sha, "break it")
    with pytest.raises(HiveError):
        await hive.coordinator.approve(broken.id)
    spawn = await hive.coordinator.request_spawn("helper", "for docs")
    return broken.id, spawn.id, sha


async def test_pending_lists_only_pending_and_all_shows_each_failure_reason(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    failed_id, spawn_id, _ = await _failed_and_pending(hive)
    failed = await hive.coordinator.approval(failed_id)
    assert failed.status == "failed"
    assert failed.note
    assert "\n" in failed.note

    table = out(await hivectl("pending", sock=sock)).splitlines()
    assert table[0].split()[:2] == ["ID", "AGENT"]
    assert [line.split()[0] for line in table[1:] if line and line[0].isdigit()] == [str(spawn_id)]
    assert f"#{failed_id}" not in out(await hivectl("pending", sock=sock))

    history = out(await hivectl("pending", "--all", sock=sock))
    rows = [line.split()[0] for line in history.splitlines()[1:] if line and line[0].isdigit()]
    assert rows == [str(failed_id), str(spawn_id)]
    block = history.split(f"#{failed_id} apply_commit coder failed:\n", 1)[1].split("\n\n")[0]
    reason = [line.strip() for line in failed.note.strip().splitlines()][:3]
    assert [line.strip() for line in block.splitlines()][:3] == reason  # line breaks kept

    # host.sock's bare `pending` keeps its answer: every approval, byte for byte as before
    everything = await hive.coordinator.pending()
    assert await _host_line(sock, {"cmd": "pending"}) == encode_response(
        HostResponse(ok=True, approvals=everything)
    )
    assert [a.id for a in everything] == [failed_id, spawn_id]
    only = json.loads(await _host_line(sock, {"cmd": "pending", "only_pending": True}))
    assert [a["id"] for a in only["approvals"]] == [spawn_id]


async def test_show_prints_the_full_stored_review_escaped_and_coloured_only_on_a_terminal(
    hive: Daemon,
) -> None:
    from tests.test_approvals import commit

    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("coder")
    proposed = hive.config.paths.agent_config("coder")
    message = "make it \x1b]52;c;cHduZWQ=\x07sonnet\n\nbody line \x1b[2Aup"
    files = {"agent.nix": '{ ... }: { hive.agent.model = "sonnet"; }\n', "notes.txt": "one\ntwo\n"}
    sha = await commit(proposed, files, message)
    approval = await hive.coordinator.request_apply_commit("coder", sha, "desc \x1b[31mred")

    result = await hivectl("show", str(approval.id), sock=sock)
    text = out(result)
    assert result.returncode == 0, err(result)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert f"approval #{approval.id}: apply_commit of coder" in text
    assert f"commit:    {sha}" in text
    assert "desc \\x1b[31mred" in text
    assert "make it \\x1b]52;c;cHduZWQ=\\x07sonnet" in text
    assert "  body line \\x1b[2Aup" in text
    assert "notes.txt" in text
    assert "+2 -0" in text
    assert "+++ b/notes.txt" in text
    assert "\n+one\n+two\n" in text
    assert "files (2 files +" in text

    # resolved approvals keep their review: show still prints it after a deny
    await hive.coordinator.deny(approval.id, "not\nnow")
    later = out(await hivectl("show", str(approval.id), sock=sock))
    assert "status:    denied" in later
    assert "why it was denied:\n  not\n  now" in later
    assert "+++ b/notes.txt" in later

    # on a terminal the diff is coloured; the agent's own escapes still are not passed through
    main_fd, tty_fd = os.openpty()
    try:
        with trio.fail_after(30):
            proc = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "hivecore.cli.hivectl",
                    "--socket",
                    os.fspath(sock),
                    "show",
                    str(approval.id),
                ],
                stdout=tty_fd,
                env={k: v for k, v in _env().items() if k != "NO_COLOR"} | {"TERM": "xterm"},
                cwd=REPO,
                check=False,
            )
        os.close(tty_fd)
        tty_fd = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
        if tty_fd >= 0:
            os.close(tty_fd)
    assert proc.returncode == 0
    coloured = shown.decode().replace("\r\n", "\n")
    assert "\x1b[32m+one\x1b[0m" in coloured
    assert "\x1b[1mdiff --git a/notes.txt b/notes.txt\x1b[0m" in coloured
    assert "\x1b]52" not in coloured
    assert "\x07" not in coloured
    assert "make it \\x1b]52;c;cHduZWQ=\\x07sonnet" in coloured

    result = await hivectl("show", "999", sock=sock)
    assert (result.returncode, err(result)) == (1, "hivectl: no approval 999\n")


async def test_request_spawn_prints_the_new_approvals_id(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    result = await hivectl("request-spawn", "helper", "--description", "docs", sock=sock)
    [row] = await hive.coordinator.pending(only_pending=True)
    assert (result.returncode, out(result)) == (0, f"requested a spawn of helper (approval {row.id})\n")
    result = await hivectl("--json", "request-spawn", "other", sock=sock)
    assert json.loads(result.stdout)["approval_id"] == row.id + 1


async def test_json_status_of_one_agent_returns_only_that_agent(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    for name in ("a", "bee"):
        await hive.coordinator.spawn(name)
    result = await hivectl("--json", "status", "bee", sock=sock)
    assert result.returncode == 0, err(result)
    assert [r["name"] for r in json.loads(result.stdout)["agent_statuses"]] == ["bee"]
    every = json.loads((await hivectl("--json", "status", sock=sock)).stdout)
    assert [r["name"] for r in every["agent_statuses"]] == ["a", "bee"]
    result = await hivectl("status", "bee", "ghost", sock=sock)
    assert (result.returncode, err(result)) == (1, 'hivectl: agent "ghost" is not managed by this hive\n')
    result = await hivectl("status", "Bad/Name", sock=sock)
    assert result.returncode == 1
    assert "invalid agent name" in err(result)


async def test_logs_tails_and_follows_an_agents_log(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("a")
    await hive.coordinator.stop("a")  # nothing else writes its log now
    log = hive.config.paths.agent_run("a") / "agent.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)) + "evil \x1b]0;owned\x07 title\n")

    result = await hivectl("logs", "a", "-n", "3", sock=sock)
    assert (result.returncode, out(result)) == (0, "line 8\nline 9\nevil \\x1b]0;owned\\x07 title\n")
    assert out(await hivectl("logs", "a", sock=sock)).count("\n") == 11
    result = await hivectl("logs", "ghost", sock=sock)
    assert (result.returncode, err(result)) == (1, 'hivectl: agent "ghost" is not managed by this hive\n')

    args = [
        sys.executable,
        "-m",
        "hivecore.cli.hivectl",
        "--socket",
        os.fspath(sock),
        "logs",
        "a",
        "-n",
        "1",
        "-f",
    ]
    process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, env=_env(), cwd=REPO)
    buf = b""

    async def until(needle: bytes) -> None:
        nonlocal buf
        assert process.stdout is not None
        with trio.fail_after(20):
            while needle not in buf:
                buf += await process.stdout.receive_some()

    try:
        await until(b"title\n")
        with log.open("a") as f:
            f.write("new one\nhalf")  # a line still being written is not shown yet
        await until(b"new one\n")
        with log.open("a") as f:
            f.write(" done\n")
        await until(b"half done\n")
        assert buf == b"evil \\x1b]0;owned\\x07 title\nnew one\nhalf done\n"
        log.write_text("after rotation\n")  # shorter than the offset: read from the start again
        await until(b"after rotation\n")
    finally:
        process.kill()
        with trio.fail_after(10):
            await process.wait()


async def test_send_as_the_operator_and_read_the_operators_inbox(hive: Daemon) -> None:
    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("a")
    result = await hivectl("send", "a", "please look at #3", sock=sock)
    assert (result.returncode, out(result)) == (0, "sent to a (1 message)\n"), err(result)
    # in a's inbox (a's harness may already have taken it: delivered, not necessarily acked)
    sql = "SELECT sender, body FROM messages WHERE recipient = 'a' ORDER BY id"
    mail = await hive.store.call(lambda c: c.execute(sql).fetchall())
    assert [tuple(row) for row in mail][-1:] == [("operator", "please look at #3")]
    result = await hivectl("send", "ghost", "hi", sock=sock)
    assert result.returncode == 1
    assert "ghost" in err(result)
    result = await hivectl("send", "a", "x" * 5000, sock=sock)
    assert result.returncode == 1
    assert "4096" in err(result)

    assert out(await hivectl("inbox", sock=sock)) == "nobody wrote to you\n"
    await hive.broker.send("a", "operator", "done \x1b[2J cleared?")
    text = out(await hivectl("inbox", sock=sock))
    assert text.splitlines()[0].endswith("from a")
    assert text.splitlines()[1] == "  done \\x1b[2J cleared?"
