"""ProcessRuntime against real processes in a state dir under /tmp (agents may run as their own uids).

Every test that starts agents uses the ``runtime`` fixture, whose teardown SIGKILLs every process group
recorded under the run dir (and every shim whose command line names it), then reaps what it can:
a leftover agent would outlive the test run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from hivecore.config import StatePaths
from hivecore.errors import InvalidName, RuntimeFailure
from hivecore.names import MANAGER_NAME
from hivecore.ports import agent_port, fnv1a_32
from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.runtime.process import PACKAGE_ROOT, ProcessRuntime, default_agent_spec
from hivecore.runtime.shim import RotatingLog, group_members, read_proc_stat
from tests.procs import (
    ENV,
    SLEEP,
    dead,
    exited,
    group_alive,
    kill_everything_under,
    started,
    stubborn,
    wait_for,
)
from tests.waiting import eventually

IGNORES_TERM = ("sh", "-c", "trap '' TERM; while :; do sleep 0.05; done")


async def test_create_start_two_agents(runtime: ProcessRuntime, paths: StatePaths) -> None:
    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
    await runtime.create(AgentSpec(name="beta", command=SLEEP, env=ENV))
    before = await runtime.list()
    assert before["alpha"] == AgentRuntimeState(name="alpha", running=False)
    assert not before["beta"].failed

    await runtime.start("alpha")
    await runtime.start("beta")
    states = await runtime.list()
    assert states.keys() == {"alpha", "beta"}
    a, b = states["alpha"], states["beta"]
    assert a.running
    assert b.running
    assert not a.failed
    assert not b.failed
    assert a.pid is not None
    assert b.pid is not None
    assert a.pid != b.pid
    for pid in (a.pid, b.pid):  # detached: session and group leader
        assert os.getsid(pid) == pid
        assert os.getpgid(pid) == pid
    assert json.loads((paths.agent_run("alpha") / "spec.json").read_text())["command"] == list(SLEEP)

    await runtime.start("alpha")  # already running: no-op
    assert (await runtime.list())["alpha"].pid == a.pid


async def test_killed_group_is_failed_other_keeps_running(runtime: ProcessRuntime) -> None:
    a = await started(runtime, "alpha")
    b = await started(runtime, "beta")
    assert a.pid is not None
    os.killpg(a.pid, signal.SIGKILL)

    dead = await wait_for(runtime, "alpha", lambda s: not s.running)
    assert dead.failed
    assert dead.exit_status == -signal.SIGKILL
    assert dead.pid is None
    still = (await runtime.list())["beta"]
    assert still.running
    assert still.pid == b.pid


async def test_stop_is_not_failed(runtime: ProcessRuntime, paths: StatePaths) -> None:
    a = await started(runtime, "alpha")
    assert a.pid is not None
    await runtime.stop("alpha")
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert not state.failed
    assert state.exit_status == -signal.SIGTERM  # recorded by the shim
    assert json.loads((paths.agent_run("alpha") / "exit_status").read_text())["by"] == "shim"
    assert not group_alive(a.pid)
    await runtime.stop("alpha")  # stopped: no-op
    await runtime.stop("ghost")  # unknown: no-op


async def test_restart_clears_marker_and_exit_status(runtime: ProcessRuntime, paths: StatePaths) -> None:
    await started(runtime, "alpha")
    await runtime.stop("alpha")
    await runtime.start("alpha")
    state = await wait_for(runtime, "alpha", lambda s: s.running)
    assert state.exit_status is None
    assert not (paths.agent_run("alpha") / "stop-requested").exists()
    assert not (paths.agent_run("alpha") / "exit_status").exists()


async def test_agent_exiting_on_its_own_is_failed(runtime: ProcessRuntime, paths: StatePaths) -> None:
    # an executable the kernel cannot run (no #!, not ELF): exec fails in the shim, which records 127
    garbage = paths.root / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    await runtime.create(AgentSpec(name="quits", command=("sh", "-c", "exit 3"), env=ENV))
    await runtime.create(AgentSpec(name="missing", command=(str(garbage),), env=ENV))
    await runtime.start("quits")
    await runtime.start("missing")
    quits = await wait_for(runtime, "quits", lambda s: not s.running and s.exit_status is not None)
    assert quits.failed
    assert quits.exit_status == 3
    missing = await wait_for(runtime, "missing", lambda s: not s.running and s.exit_status is not None)
    assert missing.failed
    assert missing.exit_status == 127


async def test_what_an_agent_leaves_in_its_group_is_killed(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    """The agent exits on its own and leaves a process behind in its group (stdout closed, so the
    log pipe does not keep the shim waiting): the shim records the agent's status, then ends the
    group, the leftover included, with one ``killpg``; the agent counts as not running at once."""
    left = paths.agent_state("leaves") / "left.pid"  # the agent's own dir: it may run as its own uid
    script = f'sleep 3600 >/dev/null 2>&1 & echo $! > "{left}"; exit 4'
    await runtime.create(AgentSpec(name="leaves", command=("sh", "-c", script), env=ENV))
    await runtime.start("leaves")
    shim = int(json.loads((paths.agent_run("leaves") / "pid").read_text())["pid"])
    await exited(shim)  # our child: a zombie until a probe reaps it, so its pid is still its own
    state = await wait_for(runtime, "leaves", lambda s: not s.running)
    assert state.exit_status == 4
    assert json.loads((paths.agent_run("leaves") / "exit_status").read_text())["by"] == "shim"
    leftover = int(left.read_text())
    await eventually(lambda: dead(leftover), 5, what="the leftover sleep killed")
    assert not group_alive(shim)


async def test_zombie_is_not_running_and_gets_reaped(runtime: ProcessRuntime) -> None:
    pid = (await started(runtime, "alpha")).pid
    assert pid is not None
    await exited(pid, kill=signal.SIGKILL, group=True)  # the shim is our child: nobody reaps it yet
    st = read_proc_stat(pid)
    assert st is not None
    assert st.state == "Z"

    state = (await runtime.list())["alpha"]
    assert not state.running
    assert state.failed
    assert state.exit_status == -signal.SIGKILL
    assert read_proc_stat(pid) is None  # reaped by list()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG never blocks)


async def test_new_instance_readopts_running_agents(runtime: ProcessRuntime, paths: StatePaths) -> None:
    a = await started(runtime, "alpha")
    b = await started(runtime, "beta")
    adopted = await ProcessRuntime(paths).list()
    assert {n: (s.running, s.pid) for n, s in adopted.items()} == {
        "alpha": (True, a.pid),
        "beta": (True, b.pid),
    }
    again = ProcessRuntime(paths)
    await again.start("alpha")  # nothing restarted
    assert (await again.list())["alpha"].pid == a.pid
    await again.stop("beta")
    assert not (await runtime.list())["beta"].failed


async def test_pid_reuse_guard(runtime: ProcessRuntime, paths: StatePaths) -> None:
    a = await started(runtime, "alpha")
    assert a.pid is not None
    pidfile = paths.agent_run("alpha") / "pid"
    record = json.loads(pidfile.read_text())
    record["starttime"] += 1  # as if the pid now belonged to another process
    pidfile.write_text(json.dumps(record))

    state = (await runtime.list())["alpha"]
    assert not state.running
    assert state.pid is None
    await runtime.stop("alpha")  # must not signal a process that is not the agent
    assert read_proc_stat(a.pid) is not None
    assert group_alive(a.pid)


async def test_graceful_stop_escalates_to_sigkill(runtime: ProcessRuntime, paths: StatePaths) -> None:
    hasty = ProcessRuntime(paths, stop_timeout=0.5)
    ready = paths.agent_state("stubborn") / "ready"  # the agent's own dir: it may run as its own uid
    a = await started(hasty, "stubborn", stubborn(ready))
    assert a.pid is not None
    await eventually(ready.exists)  # sh has installed its trap
    t0 = trio.current_time()
    with trio.fail_after(5):
        await hasty.stop("stubborn")
    assert trio.current_time() - t0 >= 0.5
    assert not group_alive(a.pid)
    state = (await hasty.list())["stubborn"]
    assert not state.running
    assert not state.failed
    assert state.exit_status == -signal.SIGKILL


async def test_hard_stop_kills_at_once(paths: StatePaths, runtime: ProcessRuntime) -> None:
    patient = ProcessRuntime(paths, stop_timeout=30)
    a = await started(patient, "stubborn", IGNORES_TERM)
    assert a.pid is not None
    with trio.fail_after(5):  # far below the stop timeout: no SIGTERM round first
        await patient.stop("stubborn", graceful=False)
    assert not group_alive(a.pid)
    assert not (await patient.list())["stubborn"].failed


async def test_cancelled_stop_still_counts_as_stop(runtime: ProcessRuntime, paths: StatePaths) -> None:
    slow = ProcessRuntime(paths, stop_timeout=30)
    ready = paths.agent_state("stubborn") / "ready"  # the agent's own dir: it may run as its own uid
    a = await started(slow, "stubborn", stubborn(ready))
    assert a.pid is not None
    await eventually(ready.exists)  # sh has installed its trap
    with trio.move_on_after(0.1):
        await slow.stop("stubborn")
    assert (await slow.list())["stubborn"].running
    os.killpg(a.pid, signal.SIGKILL)
    state = await wait_for(slow, "stubborn", lambda s: not s.running)
    assert not state.failed


async def test_destroy_removes_run_dir(runtime: ProcessRuntime, paths: StatePaths) -> None:
    a = await started(runtime, "alpha")
    assert a.pid is not None
    await runtime.destroy("alpha")
    assert not paths.agent_run("alpha").exists()
    assert not group_alive(a.pid)
    assert "alpha" not in await runtime.list()
    await runtime.destroy("alpha")  # gone: no-op


async def test_log_file_and_env(runtime: ProcessRuntime, paths: StatePaths) -> None:
    script = 'echo out; echo err >&2; echo "PP=${PYTHONPATH-unset} M=${HIVE_SHIM_PYTHONPATH-unset} X=$X"'
    await runtime.create(AgentSpec(name="talker", command=("sh", "-c", script), env={**ENV, "X": "1"}))
    await runtime.start("talker")
    await wait_for(runtime, "talker", lambda s: s.exit_status is not None)
    text = (paths.agent_run("talker") / "agent.log").read_text()
    assert "out\n" in text
    assert "err\n" in text
    assert "PP=unset M=unset X=1" in text  # the shim's own PYTHONPATH does not leak into the agent
    assert "starting: sh -c" in text
    assert "agent exited with code 0" in text


def test_rotating_log(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "agent.log", max_bytes=250, keep=3)
    for letter in "abcdefghijklm":
        log.write(letter.encode() * 100)
    log.close()

    def read(name: str) -> bytes:
        return (tmp_path / name).read_bytes()

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "agent.log",
        "agent.log.1",
        "agent.log.2",
        "agent.log.3",
    ]
    assert read("agent.log") == b"m" * 100
    assert read("agent.log.1") == b"j" * 100 + b"k" * 100 + b"l" * 100
    assert read("agent.log.3") == b"d" * 100 + b"e" * 100 + b"f" * 100  # "abc" rotated away


async def test_shim_rotates_agent_log(paths: StatePaths) -> None:
    rt = ProcessRuntime(paths, log_max_bytes=300)
    code = "import sys, time\nfor i in range(40):\n print('x' * 60, flush=True); time.sleep(0.002)"
    try:
        await rt.create(AgentSpec(name="chatty", command=(sys.executable, "-c", code), env=ENV))
        await rt.start("chatty")
        await wait_for(rt, "chatty", lambda s: s.exit_status == 0)
    finally:
        kill_everything_under(paths.run_process)
    rundir = paths.agent_run("chatty")
    assert (rundir / "agent.log.3").exists()
    assert not (rundir / "agent.log.4").exists()


async def test_errors_and_validation(
    runtime: ProcessRuntime, paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RuntimeFailure, match="has not been created"):
        await runtime.start("ghost")
    with pytest.raises(RuntimeFailure, match="has not been created"):
        await runtime.update(AgentSpec(name="ghost", command=SLEEP))
    with pytest.raises(RuntimeFailure, match="empty command"):
        await runtime.create(AgentSpec(name="empty", command=()))
    with pytest.raises(InvalidName):
        await runtime.create(AgentSpec(name="../x", command=SLEEP))

    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
    await runtime.update(AgentSpec(name="alpha", command=("sleep", "30"), env=ENV))
    assert json.loads((paths.agent_run("alpha") / "spec.json").read_text())["command"] == ["sleep", "30"]

    (paths.agent_run("alpha") / "spec.json").write_text("{}")
    with pytest.raises(RuntimeFailure, match="unreadable spec"):
        await runtime.start("alpha")
    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))

    bad = paths.run_process / "Not_Valid"
    bad.mkdir()
    (bad / "spec.json").write_text("{}")
    (paths.run_process / "nospec").mkdir()
    with caplog.at_level(logging.WARNING):
        assert set(await runtime.list()) == {"alpha"}
    assert "Not_Valid" in caplog.text


async def test_default_harness_runs_under_the_runtime(runtime: ProcessRuntime, paths: StatePaths) -> None:
    spec = default_agent_spec(paths, "alpha", extra_env={"HIVE_HEARTBEAT_SECONDS": "0.1"})
    assert spec.command == (sys.executable, "-m", "hivecore.harness")
    assert spec.env["PYTHONPATH"].split(os.pathsep)[0] == str(PACKAGE_ROOT)
    await runtime.create(spec)
    await runtime.start("alpha")
    heartbeat = paths.agent_state("alpha") / "heartbeat"
    await eventually(heartbeat.exists, timeout=10)
    env = json.loads((paths.agent_state("alpha") / "env.json").read_text())
    assert env["HIVE_LABEL"] == "alpha"
    assert env["HIVE_PORT"] == str(agent_port("alpha"))
    await runtime.stop("alpha")
    state = (await runtime.list())["alpha"]
    assert not state.failed
    assert state.exit_status == 0  # the harness exits cleanly on SIGTERM


def test_default_agent_spec_env(paths: StatePaths) -> None:
    spec = default_agent_spec(paths, MANAGER_NAME, extra_env={"HIVE_DASHBOARD_PORT": "7000"})
    assert spec.name == MANAGER_NAME
    assert spec.env["HIVE_LABEL"] == MANAGER_NAME
    assert spec.env["HIVE_PORT"] == "8000"
    assert spec.env["HIVE_STATE_DIR"] == str(paths.agent_state(MANAGER_NAME))
    assert spec.env["HIVE_DASHBOARD_PORT"] == "7000"
    assert "PATH" in spec.env


def test_ports() -> None:
    # Published FNV-1a 32-bit test vectors.
    assert fnv1a_32("") == 0x811C9DC5
    assert fnv1a_32("a") == 0xE40C292C
    assert fnv1a_32("foobar") == 0xBF9CF968
    assert agent_port(MANAGER_NAME) == 8000
    assert agent_port("alpha") == 8100 + fnv1a_32("alpha") % 900
    assert all(8100 <= agent_port(n) <= 8999 for n in ("a", "b", "zeta", "worker-01"))


async def test_agents_do_not_inherit_the_daemons_open_fds(paths: StatePaths, runtime: ProcessRuntime) -> None:
    """A detached agent holding the daemon's inherited pipe (a CI log) would keep its reader waiting."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        pipe = os.readlink(f"/proc/self/fd/{w}")
        await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
        await runtime.start("alpha")
        state = (await runtime.list())["alpha"]
        assert state.pid is not None
        for pid in [state.pid, *group_members(state.pid)]:
            held = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            assert pipe not in held, f"pid {pid} inherited {pipe}"
    finally:
        os.close(r)
        os.close(w)


async def test_a_restart_is_never_failed_half_way(runtime: ProcessRuntime, paths: StatePaths) -> None:
    """Issue 16 (honest signals): a probe while ``start`` spawns the new shim (probes take no lock)
    saw the old, dead run without its stop request and called the restart ``failed``."""
    await started(runtime, "alpha")
    seen: list[AgentRuntimeState] = []
    spawn = runtime._spawn_shim

    def probing_spawn(*args: object, **kwargs: object) -> int:
        seen.append(runtime.list_nowait(["alpha"])["alpha"])  # what a concurrent scan sees now
        return spawn(*args, **kwargs)  # type: ignore[arg-type]

    runtime._spawn_shim = probing_spawn  # type: ignore[method-assign]
    await runtime.stop("alpha")
    await runtime.start("alpha")
    await wait_for(runtime, "alpha", lambda s: s.running)
    assert seen, "start did not spawn"
    assert [s.failed for s in seen] == [False], seen
    assert not (paths.agent_run("alpha") / "stop-requested").exists()
