"""ProcessRuntime: watching exits (``wait_exit``), an agent whose shim was killed (issue 11 defect 3),
``list(names)`` and pidfiles from before the pgid was recorded. Real processes in a state dir under
/tmp; every test that starts agents uses the ``runtime`` fixture, whose teardown SIGKILLs every
recorded process group.

The bounds (``trio.fail_after``) are real time: the processes run in real time.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal

import pytest
import trio

from hivecore.config import StatePaths
from hivecore.errors import InvalidName, RuntimeFailure
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.process import ProcessRuntime
from hivecore.runtime.shim import group_members, read_proc_stat
from tests.procs import (
    ENV,
    SLEEP,
    dead,
    exited,
    group_alive,
    started,
    stubborn,
    wait_for,
)
from tests.waiting import eventually


def open_pidfds() -> int:
    """How many pidfds this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]":
                count += 1
        except OSError:
            pass  # the fd listdir used, closed by now
    return count


async def agent_pids(shim: int) -> list[int]:
    """The live processes of the agent's group besides its shim (once the shim has started the agent)."""
    await eventually(lambda: bool(group_members(shim, exclude=shim)))
    return group_members(shim, exclude=shim)


async def kill_shim_only(pid: int) -> None:
    await exited(pid, kill=signal.SIGKILL)


async def watch(runtime: ProcessRuntime, name: str, done: trio.Event) -> None:
    await runtime.wait_exit(name)
    done.set()


# -- wait_exit ------------------------------------------------------------------------------------


async def test_wait_exit_returns_when_the_agent_is_killed(runtime: ProcessRuntime) -> None:
    a = await started(runtime, "alpha")
    b = await started(runtime, "beta")
    assert a.pid is not None
    before = open_pidfds()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, runtime, "alpha", done)
        await eventually(lambda: open_pidfds() == before + 1)  # waiting on the shim's pidfd, not polling
        assert not done.is_set()
        os.killpg(a.pid, signal.SIGKILL)
        with trio.fail_after(5):
            await done.wait()
    assert not group_alive(a.pid)
    assert open_pidfds() == before  # closed
    assert (await runtime.list())["beta"].pid == b.pid  # the other agent is untouched


async def test_wait_exit_returns_on_a_stop_and_at_once_when_not_running(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    await runtime.create(AgentSpec(name="idle", command=SLEEP, env=ENV))
    a = await started(runtime, "alpha")
    assert a.pid is not None
    with trio.fail_after(5):
        await runtime.wait_exit("idle")  # created, never started
        await runtime.wait_exit("ghost")  # does not exist
    with pytest.raises(InvalidName):
        await runtime.wait_exit("../x")

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, runtime, "alpha", done)
        await runtime.stop("alpha")
        with trio.fail_after(5):
            await done.wait()
    with trio.fail_after(5):
        await runtime.wait_exit("alpha")  # stopped
    # A new instance (a restarted daemon) watches an agent it did not start just the same.
    await runtime.start("alpha")
    state = await wait_for(runtime, "alpha", lambda s: s.running)
    assert state.pid is not None
    done = trio.Event()
    before = open_pidfds()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, ProcessRuntime(paths), "alpha", done)
        await eventually(lambda: open_pidfds() == before + 1)
        assert not done.is_set()
        os.killpg(state.pid, signal.SIGKILL)
        with trio.fail_after(5):
            await done.wait()


async def test_cancelled_wait_exit_closes_its_pidfd(runtime: ProcessRuntime) -> None:
    a = await started(runtime, "alpha")
    before = open_pidfds()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.wait_exit, "alpha")
        await eventually(lambda: open_pidfds() == before + 1)
        nursery.cancel_scope.cancel()
    assert open_pidfds() == before
    assert (await runtime.list())["alpha"].pid == a.pid


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM])
async def test_without_pidfds_exits_are_polled(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """A kernel before 5.3 (ENOSYS) or a seccomp filter (EPERM) refuses pidfd_open: poll instead."""

    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(err, os.strerror(err))

    a = await started(runtime, "alpha")
    b = await started(runtime, "beta")
    assert a.pid is not None
    assert b.pid is not None
    monkeypatch.setattr(os, "pidfd_open", refused)
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, runtime, "alpha", done)
        os.killpg(a.pid, signal.SIGKILL)
        with trio.fail_after(5):
            await done.wait()
    with trio.fail_after(5):
        await runtime.stop("beta")
    assert not group_alive(b.pid)
    assert not (await runtime.list())["beta"].failed


# -- the shim dies, the agent lives on (issue 11 defect 3) ----------------------------------------


async def test_agent_whose_shim_was_killed_is_still_running(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    a = await started(runtime, "alpha")
    shim = a.pid
    assert shim is not None
    agent = await agent_pids(shim)
    pidfile = paths.agent_run("alpha") / "pid"
    assert json.loads(pidfile.read_text())["pgid"] == shim
    await kill_shim_only(shim)

    state = (await runtime.list())["alpha"]
    assert state.running
    assert state.orphaned
    assert not state.failed
    assert state.pid == shim  # the process group id
    assert read_proc_stat(shim) is None  # the zombie shim was reaped
    assert (await runtime.list(["alpha"]))["alpha"].orphaned

    record = pidfile.read_text()
    await runtime.start("alpha")  # running: no second copy
    assert pidfile.read_text() == record
    assert group_members(shim) == agent

    with trio.fail_after(5):
        await runtime.stop("alpha")
    assert all(dead(pid) for pid in agent)
    assert not group_alive(shim)
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert not state.orphaned
    assert not state.failed  # stopped on request
    assert state.exit_status == -signal.SIGKILL  # the shim's, recorded when the daemon reaped it

    await runtime.start("alpha")  # a fresh copy now
    again = await wait_for(runtime, "alpha", lambda s: s.running)
    assert again.pid not in (None, shim)
    assert not again.orphaned


async def test_graceful_stop_of_an_orphaned_group_sends_term_to_the_group(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    patient = ProcessRuntime(paths, stop_timeout=30)
    a = await started(patient, "alpha")  # sleep: dies of SIGTERM
    assert a.pid is not None
    agent = await agent_pids(a.pid)
    await kill_shim_only(a.pid)
    with trio.fail_after(5):  # far below the stop timeout: no shim to forward it, the group got it
        await patient.stop("alpha")
    assert all(dead(pid) for pid in agent)


async def test_destroy_ends_an_orphaned_group(runtime: ProcessRuntime, paths: StatePaths) -> None:
    a = await started(runtime, "alpha")
    assert a.pid is not None
    agent = await agent_pids(a.pid)
    await kill_shim_only(a.pid)
    with trio.fail_after(5):
        await runtime.destroy("alpha")
    assert not paths.agent_run("alpha").exists()
    assert all(dead(pid) for pid in agent)
    assert "alpha" not in await runtime.list()


async def test_orphaned_agent_that_then_dies_is_failed(runtime: ProcessRuntime) -> None:
    a = await started(runtime, "alpha")
    assert a.pid is not None
    agent = await agent_pids(a.pid)
    await kill_shim_only(a.pid)
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, runtime, "alpha", done)
        with trio.move_on_after(0.3):  # the shim is gone but the agent is not: no return
            await done.wait()
        assert not done.is_set()
        for pid in agent:
            os.kill(pid, signal.SIGKILL)
        with trio.fail_after(5):
            await done.wait()
    state = (await runtime.list())["alpha"]
    assert not state.running
    assert state.failed


async def test_start_refuses_while_a_cancelled_stop_left_the_old_group(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    slow = ProcessRuntime(paths, stop_timeout=30)
    ready = paths.agent_state("alpha") / "ready"  # the agent's own dir: it may run as its own uid
    a = await started(slow, "alpha", stubborn(ready))
    assert a.pid is not None
    await eventually(ready.exists)  # its TERM trap is set
    await kill_shim_only(a.pid)
    sh = [pid for pid in await agent_pids(a.pid) if not dead(pid)]
    with trio.move_on_after(0.2):  # the group ignores SIGTERM: the stop is still waiting
        await slow.stop("alpha")
    assert (await slow.list())["alpha"].running

    with pytest.raises(RuntimeFailure, match=rf'agent "alpha" is still stopping: .*group {a.pid} ') as e:
        await slow.start("alpha")
    assert any(str(pid) in str(e.value) for pid in sh)
    assert [s.pid for s in (await slow.list()).values()] == [a.pid]  # nothing new was started

    with trio.fail_after(5):
        await slow.stop("alpha", graceful=False)
    assert not group_alive(a.pid)
    await slow.start("alpha")
    assert (await wait_for(slow, "alpha", lambda s: s.running)).pid != a.pid


async def test_start_refuses_while_a_cancelled_stop_left_the_shim(
    runtime: ProcessRuntime, paths: StatePaths
) -> None:
    slow = ProcessRuntime(paths, stop_timeout=30)
    ready = paths.agent_state("alpha") / "ready"  # the agent's own dir: it may run as its own uid
    a = await started(slow, "alpha", stubborn(ready))
    assert a.pid is not None
    await eventually(ready.exists)
    with trio.move_on_after(0.2):
        await slow.stop("alpha")
    with pytest.raises(RuntimeFailure, match=rf"still stopping: .*\({a.pid}\)"):
        await slow.start("alpha")
    await slow.stop("alpha", graceful=False)
    assert not group_alive(a.pid)


async def test_pidfile_without_pgid_is_still_adopted(runtime: ProcessRuntime, paths: StatePaths) -> None:
    """A pidfile written before the pgid was recorded: the shim's pid is its group."""
    a = await started(runtime, "alpha")
    assert a.pid is not None
    agent = await agent_pids(a.pid)
    pidfile = paths.agent_run("alpha") / "pid"
    record = json.loads(pidfile.read_text())
    del record["pgid"]
    pidfile.write_text(json.dumps(record))
    await kill_shim_only(a.pid)
    assert (await runtime.list())["alpha"].orphaned
    await runtime.stop("alpha")
    assert all(dead(pid) for pid in agent)


# -- list(names) ----------------------------------------------------------------------------------


async def test_list_names_probes_only_those(
    runtime: ProcessRuntime, paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    await runtime.create(AgentSpec(name="alpha", command=SLEEP, env=ENV))
    b = await started(runtime, "beta")
    await runtime.create(AgentSpec(name="gamma", command=SLEEP, env=ENV))
    (paths.agent_run("gamma") / "pid").write_text("not json")

    with caplog.at_level(logging.WARNING):
        beta = await runtime.list(["beta"])
        assert beta.keys() == {"beta"}
        assert beta["beta"].running
        assert beta["beta"].pid == b.pid
        assert (await runtime.list(["alpha", "ghost", "../x", "Bad_Name", "alpha"])).keys() == {"alpha"}
        assert await runtime.list([]) == {}
        assert runtime.list_nowait({"beta"}).keys() == {"beta"}
    assert "gamma" not in caplog.text  # never probed
    with caplog.at_level(logging.WARNING):
        assert list(await runtime.list()) == ["alpha", "beta", "gamma"]
    assert "unreadable pidfile" in caplog.text
    with pytest.raises(TypeError):
        await runtime.list("beta")  # one name is not a collection of names
