"""Agents run unprivileged (issue 14, finding 6): under a root daemon every agent of the process
runtime runs as its own uid and reaches nothing of the daemon's.

On main before this change the harness ran as root: every "denied" row of the attack table below
read the operator token, the database, other agents' files and every socket.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import agent_users, posix_acl
from hivecore.config import StatePaths
from hivecore.daemon import Daemon
from hivecore.errors import RuntimeFailure
from hivecore.names import MANAGER_NAME
from hivecore.proc import Credentials
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.process import ProcessRuntime
from hivecore.runtime.shim import group_members
from hivecore.sockets.client import request
from tests.procs import ENV, SLEEP, kill_everything_under, wait_for
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents change uid only under a root daemon")

PROBE = r"""
import json, os, socket, sys
out = {}
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "read":
            with open(path, "rb") as f:
                f.read(1)
        elif kind == "list":
            os.listdir(path)
        elif kind == "write":
            with open(path, "ab") as f:
                f.write(b"x")
        elif kind == "connect":
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        out[kind + " " + path] = "ok"
    except OSError as exc:
        out[kind + " " + path] = type(exc).__name__
print(json.dumps(out))
"""


def as_agent(who: Credentials, attempts: list[tuple[str, Path]]) -> dict[str, str]:
    """What a process with ``who``'s credentials gets for each attempt: ``ok`` or the error's name."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([(k, str(p)) for k, p in attempts])],
        user=who.uid,
        group=who.gid,
        extra_groups=list(who.groups),
        cwd="/",
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    result: dict[str, str] = json.loads(probe.stdout)
    return result


async def host(hive: Daemon, req: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps(req).encode() + b"\n"
    path = str(hive.config.host_socket_path)
    answer: dict[str, Any] = json.loads(await trio.to_thread.run_sync(request, path, line, 60.0))
    return answer


def agent_process(paths: StatePaths, name: str) -> int:
    """The agent under the shim: the one member of the shim's group that is not the shim."""
    record = json.loads((paths.agent_run(name) / "pid").read_text())
    members = [pid for pid in group_members(record["pgid"]) if pid != record["pid"]]
    assert members, "the agent is not running"
    return min(members)


def ids(pid: int) -> tuple[int, int, set[int]]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    groups = {int(g) for g in fields["Groups"].split()}
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1]), groups


async def test_agents_run_as_their_own_uid_and_reach_nothing_of_the_daemons(hive: Daemon) -> None:
    config = hive.config
    paths = config.paths
    for name in ("alpha", "beta"):
        assert (await host(hive, {"cmd": "spawn", "name": name}))["ok"]
    alpha = agent_users.credentials(paths, "alpha")
    beta = agent_users.credentials(paths, "beta")
    assert alpha is not None
    assert beta is not None
    assert alpha.uid != beta.uid

    await eventually(
        lambda: len(group_members(json.loads((paths.agent_run("alpha") / "pid").read_text())["pgid"])) > 1
    )
    uid, gid, groups = ids(agent_process(paths, "alpha"))
    assert (uid, gid, groups) == (alpha.uid, alpha.gid, set(alpha.groups))
    shim = json.loads((paths.agent_run("alpha") / "pid").read_text())["pid"]
    assert ids(shim)[0] == 0  # the shim stays the daemon's: the run dir's records are not the agent's

    alpha_sock = config.agent_socket_path("alpha")
    await eventually(alpha_sock.exists)
    st = alpha_sock.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alpha.uid, 0o600)
    await eventually(config.agent_socket_path("beta").exists)
    beta_state = paths.agent_state("beta")
    (beta_state / "notes").write_text("beta's")

    denied: list[tuple[str, Path]] = [
        ("read", paths.operator_token),
        ("read", paths.db),
        ("read", paths.agent_uids),
        ("list", paths.root),
        ("list", paths.agents),
        ("list", paths.run),
        ("read", paths.applied("alpha") / "agent.nix"),
        ("read", paths.meta / "flake.nix"),
        ("read", beta_state / "notes"),
        ("write", beta_state / "planted"),
        ("list", paths.agent_config("alpha")),
        ("write", paths.agent_run("alpha") / "pid"),
        ("write", paths.agent_run("alpha") / "spec.json"),
        ("connect", config.host_socket_path),
        ("connect", config.manager_socket_path),
        ("connect", config.agent_socket_path("beta")),
    ]
    allowed: list[tuple[str, Path]] = [
        ("connect", alpha_sock),
        ("write", paths.agent_state("alpha") / "mine"),
        ("read", paths.agent_state("alpha") / "mine"),
    ]
    got = await trio.to_thread.run_sync(as_agent, alpha, denied + allowed)
    assert {k: v for k, v in got.items() if v == "ok"} == {f"{k} {p}": "ok" for k, p in allowed}
    assert not (beta_state / "planted").exists()


async def test_the_manager_owns_every_proposed_repo(hive: Daemon) -> None:
    paths = hive.config.paths
    assert (await host(hive, {"cmd": "spawn", "name": "coder"}))["ok"]
    manager = agent_users.credentials(paths, MANAGER_NAME)
    assert manager is not None
    config_repo = paths.agent_config("coder")
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [config_repo, *config_repo.rglob("*")]}
    assert owners == {(manager.uid, manager.gid)}
    coder = agent_users.credentials(paths, "coder")
    assert coder is not None
    got = await trio.to_thread.run_sync(
        as_agent,
        manager,
        [("write", config_repo / "agent.nix"), ("read", paths.operator_token), ("list", paths.applied_root)],
    )
    assert list(got.values()) == ["ok", "PermissionError", "PermissionError"]


# --- the runtime alone -----------------------------------------------------------------------------


@pytest.fixture
async def runtime(paths: StatePaths) -> Any:
    try:
        yield ProcessRuntime(paths, stop_timeout=5, runtime_dir=paths.run)
    finally:
        kill_everything_under(paths.run_process)


@pytest.mark.parametrize("mode", [0o700, 0o710, 0o750, 0o755])
async def test_whatever_mode_the_state_dir_has_the_agent_reaches_its_own(
    runtime: ProcessRuntime, paths: StatePaths, mode: int
) -> None:
    os.chmod(paths.root, mode)
    ready = paths.agent_state("alpha") / "ready"
    await runtime.create(
        AgentSpec(name="alpha", command=("sh", "-c", f": > {ready}; exec sleep 60"), env=ENV)
    )
    await runtime.start("alpha")
    await eventually(ready.exists)
    alpha = agent_users.credentials(paths, "alpha")
    assert alpha is not None
    assert ready.stat().st_uid == alpha.uid
    # nobody else got anything: other local users still cannot enter the state dir
    nobody = Credentials(uid=65534, gid=65534)
    assert (await trio.to_thread.run_sync(as_agent, nobody, [("list", paths.agents)]))[
        f"list {paths.agents}"
    ] != "ok"


def _private(base: Path) -> Path:
    """A directory only root can enter (like ``/root``)."""
    d = base / "private"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    return d


def _script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _unrunnable(base: Path, kind: str) -> tuple[tuple[str, ...], dict[str, str], Path]:
    """(command, env, the path the error must name) for each way a command escapes the uid."""
    shared = base / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private = _private(base)
    if kind == "venv from a private python":
        real = _script(private / "python3", "#!/bin/sh\nexec sleep 60\n")
        (shared / "venv" / "bin").mkdir(parents=True)
        link = shared / "venv" / "bin" / "python"
        link.symlink_to(real)
        (shared / "venv" / "pyvenv.cfg").write_text(f"home = {private}\n")
        return (str(link), "-m", "hivecore.harness"), ENV, link
    if kind == "interpreter under a private dir":
        interp = _script(private / "interp", "#!/bin/sh\nexec sleep 60\n")
        prog = _script(shared / "agent", f"#!{interp}\n")
        return (str(prog),), ENV, interp
    if kind == "env interpreter on a private PATH entry":
        _script(private / "tool", "#!/bin/sh\nexec sleep 60\n")
        prog = _script(shared / "agent", "#!/usr/bin/env tool\n")
        return (str(prog),), {"PATH": f"{private}:/usr/bin:/bin"}, private / "tool"
    if kind == "program only root may run":
        prog = _script(shared / "agent", "#!/bin/sh\nexec sleep 60\n", mode=0o700)
        return (str(prog),), ENV, prog
    if kind == "program on a private PATH entry":
        _script(private / "agentprog", "#!/bin/sh\nexec sleep 60\n")
        return ("agentprog",), {"PATH": f"{private}:/usr/bin:/bin"}, private / "agentprog"
    if kind == "python with a private PYTHONPATH":
        python = _script(shared / "python3", "#!/bin/sh\nexec sleep 60\n")
        return (str(python), "-m", "x"), {**ENV, "PYTHONPATH": str(private)}, private
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "venv from a private python",
        "interpreter under a private dir",
        "env interpreter on a private PATH entry",
        "program only root may run",
        "program on a private PATH entry",
        "python with a private PYTHONPATH",
    ],
)
async def test_a_command_the_uid_cannot_run_is_refused_at_start_naming_the_path(
    runtime: ProcessRuntime, paths: StatePaths, kind: str
) -> None:
    command, env, culprit = _unrunnable(_fresh_dir(paths), kind)
    await runtime.create(AgentSpec(name="alpha", command=command, env=env))
    with pytest.raises(RuntimeFailure, match="cannot start as uid") as caught:
        await runtime.start("alpha")
    assert str(culprit) in str(caught.value)
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert not state.failed
    assert not (paths.agent_run("alpha") / "pid").exists()


async def test_a_refused_start_after_a_stop_leaves_the_agent_stopped_not_failed(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    shared = _fresh_dir(paths)
    prog = _script(shared / "agent", "#!/bin/sh\nexec sleep 60\n")
    await runtime.create(AgentSpec(name="alpha", command=(str(prog),), env=ENV))
    await runtime.start("alpha")
    await runtime.stop("alpha")
    os.chmod(prog, 0o700)  # now only root may run it
    with pytest.raises(RuntimeFailure, match="cannot start as uid") as caught:
        await runtime.start("alpha")
    assert str(prog) in str(caught.value)
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert not state.failed  # still the stop it was, not a crash
    assert (paths.agent_run("alpha") / "stop-requested").exists()
    assert _children() == []  # the refusing shim is gone and reaped


@pytest.mark.parametrize("fault", ["exits without a report", "never reports"])
async def test_a_shim_that_does_not_report_is_a_clear_start_failure(
    runtime: ProcessRuntime, paths: StatePaths, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    from hivecore.runtime import process

    body = "exit 0\n" if fault == "exits without a report" else "exec sleep 60\n"
    fake = _script(_fresh_dir(paths) / "shim", "#!/bin/sh\n" + body)
    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
    monkeypatch.setattr(sys, "executable", str(fake))  # what the runtime spawns as the shim
    monkeypatch.setattr(process, "READY_TIMEOUT", 1.0)
    with pytest.raises(RuntimeFailure, match="did not start: its shim reported nothing") as caught:
        await runtime.start("alpha")
    monkeypatch.undo()
    assert str(paths.agent_run("alpha") / "shim.log") in str(caught.value)
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert not state.failed
    assert not (paths.agent_run("alpha") / "pid").exists()
    assert _children() == []  # killed and reaped, not a zombie


async def test_a_start_cancelled_while_it_waits_for_the_report_leaves_the_agent_starting(
    runtime: ProcessRuntime, paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hivecore.runtime import process

    async def never(ready: trio.lowlevel.FdStream) -> dict[str, object]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def pipes() -> set[int]:
        return {int(fd) for fd in os.listdir("/proc/self/fd") if _link(fd).startswith("pipe:")}

    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
    before = pipes()
    monkeypatch.setattr(process, "_read_report", never)
    with trio.move_on_after(1.0) as scope:  # a shutdown cancelling the start job, say
        await runtime.start("alpha")
    assert scope.cancelled_caught
    monkeypatch.undo()
    assert pipes() <= before  # the report pipe is closed
    state = await wait_for(runtime, "alpha", lambda s: s.running)  # the shim went on: it may
    assert not state.failed
    await runtime.stop("alpha")
    assert not (await runtime.list())["alpha"].failed


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _children() -> list[int]:
    """This process's children, zombies included (a shim we spawned and did not reap is one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat_line.rpartition(b")")[2].split()[1]) == os.getpid():
                found.append(int(entry.name))
    return found


def _fresh_dir(paths: StatePaths) -> Path:
    d = Path(paths.root.parent) / f"{paths.root.name}-cmd"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


async def test_a_state_dir_under_a_private_directory_is_refused_naming_it(state_dir: Path) -> None:
    os.chmod(state_dir, 0o700)
    inner = StatePaths(state_dir / "private-parent" / "state")
    (state_dir / "private-parent").mkdir(mode=0o700)
    os.chmod(state_dir / "private-parent", 0o700)
    inner.create_layout()
    runtime = ProcessRuntime(inner, runtime_dir=inner.run)
    try:
        await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
        with pytest.raises(RuntimeFailure, match="must let other users traverse") as caught:
            await runtime.start("alpha")
        assert str(inner.agent_state("alpha")) in str(caught.value)
    finally:
        kill_everything_under(inner.run_process)


async def test_the_default_harness_starts_as_the_agent_uid(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    """The bundled harness on this venv's Python (CI's venv: see .ci/setup.sh) runs as the agent."""
    from hivecore.runtime.process import default_agent_spec

    spec = default_agent_spec(
        paths, "alpha", extra_env={"HIVE_SOCKET": str(paths.run / "agents/alpha/mcp.sock")}
    )
    await runtime.create(spec)
    await runtime.start("alpha")
    state = await wait_for(runtime, "alpha", lambda s: s.running)
    assert state.pid is not None
    await trio.sleep(1.0)  # a harness that cannot import or reach its dirs exits within this
    assert (await runtime.list())["alpha"].running


# --- handing a tree over ---------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["hardlink", "symlink", "fifo", "symlinked dir"])
def test_handing_a_tree_over_never_hands_over_what_a_link_points_at(state_dir: Path, plant: str) -> None:
    """The manager plants links to a root-owned file (a stand-in for /etc/shadow) in its repo; the
    root daemon's hand-over must change only the tree's own entries."""
    secret_dir = state_dir / "etc"
    secret_dir.mkdir()
    secret = secret_dir / "shadow"
    secret.write_text("root:secret")
    os.chmod(secret, 0o600)
    repo = state_dir / "config"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "file").write_text("x")
    if plant == "hardlink":
        os.link(secret, repo / "sub" / "planted")
    elif plant == "symlink":
        (repo / "planted").symlink_to(secret)
    elif plant == "fifo":
        os.mkfifo(repo / "planted")
    else:
        (repo / "planted").symlink_to(secret_dir)
    uid = agent_users.shared_gid(StatePaths(state_dir)) + 99
    who = Credentials(uid=uid, gid=uid)
    changed = agent_users.hand_over(state_dir, "config", who)
    assert changed == 3  # config, sub, sub/file
    assert (secret.stat().st_uid, secret_dir.stat().st_uid) == (0, 0)
    assert (repo / "sub" / "file").stat().st_uid == who.uid
    assert agent_users.hand_over(state_dir, "config", who) == 0


def test_a_symlinked_tree_is_refused(state_dir: Path) -> None:
    (state_dir / "elsewhere").mkdir()
    (state_dir / "config").symlink_to(state_dir / "elsewhere")
    with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
        agent_users.hand_over(state_dir, "config", Credentials(uid=1900000099, gid=1900000099))
    assert (state_dir / "elsewhere").stat().st_uid == 0


async def test_the_evaluator_reads_the_meta_flakes_inputs_and_nothing_else(hive: Daemon) -> None:
    paths = hive.config.paths
    assert (await host(hive, {"cmd": "spawn", "name": "coder"}))["ok"]
    # a state dir from a version whose agent input was applied/ kept the evaluator's entry there
    await trio.to_thread.run_sync(
        posix_acl.grant, paths.applied_root, posix_acl.USER, agent_users.evaluator_uid(paths)
    )
    prepared = await trio.to_thread.run_sync(agent_users.evaluator, paths)
    assert prepared is not None
    who, store, _ = prepared
    assert store.stat().st_uid == who.uid
    denied: list[tuple[str, Path]] = [
        ("read", paths.operator_token),
        ("read", paths.db),
        ("read", paths.agent_uids),
        ("list", paths.agents),
        ("list", paths.applied_root),
        ("list", paths.run),
        ("write", paths.meta / "flake.nix"),
        ("write", paths.applied("coder") / "agent.nix"),
        # applied/ holds pending proposals: the evaluator reads only released/ (approved history)
        ("read", paths.applied("coder") / "agent.nix"),
        ("write", paths.released("coder") / "HEAD"),
    ]
    allowed: list[tuple[str, Path]] = [
        ("read", paths.meta / "flake.nix"),
        ("read", paths.meta / "flake.lock"),
        ("read", paths.root / "base" / "flake.nix"),
        ("read", paths.released("coder") / "HEAD"),
    ]
    got = await trio.to_thread.run_sync(as_agent, who, denied + allowed)
    assert {k: v for k, v in got.items() if v == "ok"} == {f"{k} {p}": "ok" for k, p in allowed}
