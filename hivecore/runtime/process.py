"""The embedded process runtime: each agent is a detached process group under a shim.

On disk, per agent, under ``<state>/run/process/<name>/`` (the runtime's alone: the agent's socket
lives elsewhere, in ``<runtime-dir>/agents/<name>/``):

``spec.json``
    The command and environment to run (written by ``create``/``update``). Its presence is what makes
    the agent exist for :meth:`ProcessRuntime.list`.
``pid``
    ``{"pid", "pgid", "starttime", "started_at"}`` of the shim, the session and process-group leader
    (so ``pgid`` = ``pid``). ``starttime`` is ``/proc/<pid>/stat`` field 22; a pid only counts as this
    agent while it matches, so a recycled pid is never mistaken for the agent.
``stop-requested``
    Written before a stop sends its first signal; cleared by ``start``. Tells a stop from a crash.
``exit_status``
    Written by the shim when the agent exits (or by this runtime when it reaps a shim that died
    without writing it). Cleared by ``start``.
``agent.log`` (+ ``.1`` … ``.3``), ``shim.log``
    The agent's stdout/stderr, rotated by the shim; the shim's own stderr.

Agents run in their own session, so they outlive the daemon; a new :class:`ProcessRuntime` on the same
state dir re-adopts them from their pidfiles. The agent's environment is exactly ``spec.env`` (nothing
is inherited from the daemon).

Under a root daemon each agent runs as its own uid (:mod:`hivecore.agent_users`): ``start`` grants it
traverse on the directories it needs, hands it its state dir, and spawns the shim (which stays root,
so the run dir and its records are the daemon's alone); the shim first checks, as that uid, that it
can execute its command and interpreter and reports back on a pipe, and ``start`` waits for that
report (a clear :class:`RuntimeFailure` naming the path otherwise, never an agent that dies at
start); then the shim starts the agent as that uid in its state dir. The daemon itself never forks
to change uids (such a fork holds the GIL while it copies the daemon's page tables). Under a
non-root daemon the agent runs as the daemon's user, in the daemon's working directory.

Running means: the shim is alive, *or* a live process is left in its process group. The second case is
an agent whose shim was killed on its own (issue 11): the agent still runs, unsupervised (its output
is no longer captured and nobody records its exit), and is reported ``running`` with ``orphaned`` set
until its whole group is gone. ``start`` does not launch a second copy next to it; ``stop`` and
``destroy`` signal the whole group (SIGTERM to the group, as there is no shim left to forward it) and
wait until no process of it is left. ``start`` refuses (naming the survivors) when a stop was requested
and the old group still lives: that stop was cancelled or failed, and starting now would run two copies.

Reaping: when this daemon is the shim's parent, a dead shim stays a zombie until someone waits for it.
Every probe that sees a zombie with the recorded pid *and* start time ``waitpid``\\ s it (``WNOHANG``,
so never blocking); if it is not our child, the ``ChildProcessError`` is ignored and its real parent
reaps it.

Nothing blocks the trio thread: probes (``list``, the checks in ``start``/``stop``), spawning and
``rmtree`` run in worker threads; waiting for an exit uses a pidfd (see :mod:`hivecore.runtime.procwait`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import trio

import hivecore
from hivecore import agent_users
from hivecore.config import StatePaths
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.ports import agent_port
from hivecore.proc import Credentials
from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.runtime.procwait import live_group_members, poll_until, wait_process_exit
from hivecore.runtime.shim import (
    DEFAULT_LOG_MAX_BYTES,
    EXIT_STATUS_FILE,
    PROBE_TIMEOUT,
    PYTHONPATH_ENV,
    exit_status_record,
    read_proc_stat,
    write_json_atomic,
)

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
PID_FILE = "pid"
STOP_MARKER = "stop-requested"
SHIM_LOG = "shim.log"

PACKAGE_ROOT = Path(hivecore.__file__).resolve().parent.parent
"""The directory holding the ``hivecore`` package: what PYTHONPATH needs for ``python -m hivecore.…``."""

_NO_ENV: Mapping[str, str] = MappingProxyType({})
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
)
"""Dispositions an exec keeps if the daemon ignores them (Python ignores SIGPIPE): reset for the shim."""
_BLOCKED_UNTIL_SHIM_READY = (signal.SIGTERM, signal.SIGINT)
"""The shim starts with these blocked and unblocks them once its forwarding handlers are installed."""
BOOTING = max(2, (os.cpu_count() or 2) // 2)
"""Starts whose shim may be booting at once (half the cores, at least 2): each shim is a Python
interpreter starting up (~40 ms of CPU), and 20 of them at once left the event loop starved of CPU
(``bench/verbs.py`` part 2 on 2 cores: loop lag p99 ~30 ms with 20, ~14 ms with 2, load 15)."""
READY_FD = 3
"""The shim's fd for its readiness report (see :mod:`hivecore.runtime.shim`)."""
READY_TIMEOUT = PROBE_TIMEOUT + 20.0
"""Seconds a start waits for the shim's report: its interpreter's start-up plus its probe."""

_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def _rundir_lock(rundir: Path) -> threading.RLock:
    """Held (in worker threads) while reaping a shim and recording its exit status, while ``start``
    replaces a run's files and while ``destroy`` removes the run dir: a probe in one thread must not
    write the old run's ``exit_status`` after a ``start`` in another has cleared it for the new run,
    nor into a directory being removed. One per run dir: agents never wait for each other."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(rundir, threading.RLock())


@attrs.frozen
class _Launched:
    """A shim spawned with a readiness pipe, its report not read yet (see ``start``)."""

    name: str
    rundir: Path
    pid: int
    ready: int
    """The pipe's read end (ours to close)."""
    identity: _Identity
    stop_requested: bool
    """Whether the previous run's stop marker was there (restored if the start is refused)."""


def default_agent_spec(paths: StatePaths, name: str, *, extra_env: Mapping[str, str] = _NO_ENV) -> AgentSpec:
    """The spec of the bundled minimal harness (``python -m hivecore.harness``) for agent ``name``."""
    validate_name(name)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    pythonpath = [str(PACKAGE_ROOT), *(p for p in inherited if p != str(PACKAGE_ROOT))]
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "HIVE_LABEL": name,
        "HIVE_STATE_DIR": str(paths.agent_state(name)),
        "HIVE_PORT": str(agent_port(name)),
        **extra_env,
    }
    return AgentSpec(name=name, command=(sys.executable, "-m", "hivecore.harness"), env=env)


@attrs.frozen
class _PidRecord:
    pid: int
    pgid: int
    starttime: int
    started_at: float


@attrs.frozen
class _Identity:
    """Who a root daemon's agent runs as, and what that uid must reach to start."""

    who: Credentials
    check: tuple[str, ...]
    """Every path the uid must execute or traverse (:func:`agent_users.startup_paths` + ``reach``)."""
    reach: tuple[Path, ...]
    """The agent's own directories (state, socket dir)."""


@attrs.frozen
class _Liveness:
    """One agent's processes as probed now."""

    record: _PidRecord | None
    shim_alive: bool = False
    survivors: tuple[int, ...] = ()
    """Live processes left in the group of a dead shim (not scanned while the shim lives)."""

    @property
    def running(self) -> bool:
        return self.shim_alive or bool(self.survivors)


class ProcessRuntime:
    """:class:`~hivecore.runtime.base.ContainerRuntime` over detached process groups (see the module doc).

    The instance holds no state of its own: everything is on disk, so any number of instances (or a
    restarted daemon) see the same agents. Callers serialise lifecycle verbs per agent; ``list`` and
    ``wait_exit`` may run alongside anything.
    """

    kind = "process"
    can_wait_exit = True

    def __init__(
        self,
        paths: StatePaths,
        *,
        stop_timeout: float = 10.0,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        runtime_dir: Path | None = None,
        env_source: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self._paths = paths
        self._env_source = env_source
        """The operator's environment for an agent (:meth:`hivecore.agent_env.AgentEnv.env_for`),
        merged into its spec's at every start, never written to ``spec.json``."""
        self._runtime_dir = runtime_dir
        """Where the agents' sockets live (``<runtime>/agents/<n>``, ``<runtime>/manager``): a root
        daemon grants each agent's uid traverse there (see :mod:`hivecore.agent_users`)."""
        self._stop_timeout = stop_timeout
        self._log_max_bytes = log_max_bytes
        self._booting = trio.Semaphore(BOOTING)
        self._ended: set[tuple[int, int]] = set()
        """``(pgid, starttime)`` of runs seen over (shim dead, no live process left in its group), so a
        stopped agent costs no ``/proc`` scan on every probe where dead members linger as zombies
        (an init that does not reap). A cache of facts, safe to lose: a group with no live member
        never gains one (joining it needs a live process of its session). Set operations are atomic
        under the GIL; worker threads share it."""

    # -- the protocol ---------------------------------------------------------------------------

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """:meth:`list_nowait` with the probing (run dirs, ``/proc``, reaping) in a worker thread.

        Only the run-dir listing (one ``listdir``, none when ``names`` is given) happens on the
        caller's thread; with nothing to probe there is no thread hop. Cancellation abandons the answer
        only after the probe finishes (it is not interrupted).
        """
        candidates = self._candidates(names)
        if not candidates:
            await trio.lowlevel.checkpoint()
            return {}
        return await trio.to_thread.run_sync(self._probe_all, candidates)

    def list_nowait(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        """Every agent with a ``spec.json`` (only those in ``names`` when given), probed now and reaped
        when it is a zombie child of ours. Blocking: file and ``/proc`` reads.

        With ``names``, only those agents are probed (the cost does not grow with the number of other
        agents); a name that is not an agent (or not a valid name) is simply absent from the result.
        """
        return self._probe_all(self._candidates(names))

    async def create(self, spec: AgentSpec) -> None:
        """Write the spec (creating the run dir; in a worker thread); an existing agent just gets the
        new spec. Once begun, the write completes even if the caller is cancelled."""
        await trio.to_thread.run_sync(self._create_sync, spec)

    async def update(self, spec: AgentSpec) -> None:
        """Replace the spec (in a worker thread); a running agent keeps its old command until it is
        restarted. Once begun, the write completes even if the caller is cancelled."""
        await trio.to_thread.run_sync(self._update_sync, spec)

    async def start(self, name: str) -> None:
        """Launch the shim from the stored spec (in a worker thread); under a root daemon, then wait
        (here, not in a thread: at most :data:`READY_TIMEOUT` s) for the shim's report that the
        agent's uid reaches what it needs, and refuse the start (:class:`RuntimeFailure` naming the
        path; the shim killed, the agent as it was) if it does not.

        At most :data:`BOOTING` starts of this runtime are under way at once; the others wait.
        A no-op while the agent runs, orphaned or not (see the module doc). Raises
        :class:`RuntimeFailure` if a stop was requested and processes of the old group still live.
        Cancellation: the spawn runs to completion in its thread; a cancelled wait for the report
        leaves the shim to start the agent (or to exit, recorded as a failed run, if it may not).
        """
        async with self._booting:  # see BOOTING
            await self._start(name)

    async def _start(self, name: str) -> None:
        launched = await trio.to_thread.run_sync(self._start_sync, name)
        if launched is None:
            return
        report: dict[str, object] = {"missing": "timed out"}
        ready = trio.lowlevel.FdStream(launched.ready)
        try:
            with trio.move_on_after(READY_TIMEOUT):
                report = await _read_report(ready)
        finally:
            await ready.aclose()
        if report.get("ok") is True:
            log.info("started agent %s (shim pid %d)", name, launched.pid)
            return
        await trio.to_thread.run_sync(self._refuse, launched, report)

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        """Stop the agent's process group and wait until the whole group is gone.

        Graceful: SIGTERM to the shim (which forwards it to the agent; to the whole group if the shim is
        gone), then SIGKILL to the whole group once the stop timeout has passed; not graceful: SIGKILL to
        the group now. A stopped (or unknown) agent is a no-op. On cancellation the signals already sent
        stand; the ``stop-requested`` marker is written first, so the exit still counts as a stop, not a
        crash.
        """
        rundir, live = await trio.to_thread.run_sync(self._begin_stop, name)
        if not live.running:
            return
        record = live.record
        assert record is not None
        if not graceful:
            _signal_group(record.pgid, signal.SIGKILL)
        elif live.shim_alive:
            # SIGTERM to the shim only: it forwards it to the agent. Signalling the whole group would
            # hand the agent a second SIGTERM, which kills an agent that restores the default handler
            # while it shuts down (trio's open_signal_receiver does exactly that).
            _signal_process(record.pid, signal.SIGTERM)
        else:
            log.warning("agent %s lost its shim: sending SIGTERM to its group %d", name, record.pgid)
            _signal_group(record.pgid, signal.SIGTERM)
        with trio.move_on_after(self._stop_timeout if graceful else float("inf")) as scope:
            await self._wait_gone(rundir, record)
        if scope.cancelled_caught:
            log.warning("agent %s ignored SIGTERM for %.1f s: sending SIGKILL", name, self._stop_timeout)
            _signal_group(record.pgid, signal.SIGKILL)
            await self._wait_gone(rundir, record)
        log.info("stopped agent %s", name)

    async def destroy(self, name: str) -> None:
        """Stop the agent, then remove its run dir (its state dir is untouched). Unknown: a no-op.

        The removal runs in a worker thread and, once begun, completes even if the caller is cancelled.
        """
        await self.stop(name, graceful=True)
        if await trio.to_thread.run_sync(self._remove_rundir, name):
            log.info("destroyed agent %s", name)

    async def wait_exit(self, name: str) -> None:
        """Return once the agent running now has exited: its shim and every process of its group are
        gone. Returns at once if it is not running (or does not exist).

        pidfd-based: no polling while the shim lives; after the shim exits, the group is checked once
        and polled only if processes are left in it (an agent whose shim was killed). A restart after
        this call began does not matter: it waits for the processes that were running when it began.
        Cancellation leaves nothing behind. Raises :class:`~hivecore.errors.InvalidName` for a bad name.
        """
        rundir, live = await trio.to_thread.run_sync(self._named_liveness, name)
        if live.running:
            assert live.record is not None
            await self._wait_gone(rundir, live.record)

    # -- internals -----------------------------------------------------------------------------

    def _rundir(self, name: str) -> Path:
        """Blocking (it resolves the path): worker threads only."""
        return self._paths.agent_run(name)

    def _create_sync(self, spec: AgentSpec) -> None:
        rundir = self._rundir(spec.name)
        rundir.mkdir(parents=True, exist_ok=True)
        self._write_spec(rundir, spec)

    def _update_sync(self, spec: AgentSpec) -> None:
        rundir = self._rundir(spec.name)
        if not (rundir / SPEC_FILE).is_file():
            raise RuntimeFailure(f'agent "{spec.name}" has not been created')
        self._write_spec(rundir, spec)

    def _remove_rundir(self, name: str) -> bool:
        # under the lock a probe holds while it reaps and records an exit status in this directory
        rundir = self._rundir(name)
        with _rundir_lock(rundir):
            if not rundir.exists():
                return False
            shutil.rmtree(rundir, onerror=_vanished_ok)
        return True

    def _candidates(self, names: Collection[str] | None) -> tuple[str, ...]:
        """The valid names to probe, sorted: ``names``, or every entry of the run-agents dir."""
        if names is None:
            try:
                entries = os.listdir(self._paths.run_process)
            except FileNotFoundError:
                return ()
            for entry in entries:
                if not _valid_name(entry):
                    log.warning("ignoring %s: not a valid agent name", self._paths.run_process / entry)
        elif isinstance(names, str):
            raise TypeError("names must be a collection of names, not one name")
        else:
            entries = [*names]
        return tuple(sorted({entry for entry in entries if _valid_name(entry)}))

    def _probe_all(self, names: Collection[str]) -> dict[str, AgentRuntimeState]:
        """Blocking: probe each (valid) name that is an agent, i.e. has a run dir with a ``spec.json``."""
        root = self._paths.run_process
        states = {}
        for name in names:
            rundir = root / name
            if rundir.is_symlink() or not (rundir / SPEC_FILE).is_file():
                continue
            states[name] = self._probe(name, rundir)
        return states

    def _probe(self, name: str, rundir: Path) -> AgentRuntimeState:
        live = self._liveness(rundir)
        record = live.record
        if live.running:
            assert record is not None
            return AgentRuntimeState(
                name=name,
                running=True,
                pid=record.pid,
                started_at=record.started_at,
                orphaned=not live.shim_alive,
            )
        # Started, not running and not asked to stop: it died on its own (or was killed behind our back).
        failed = record is not None and not (rundir / STOP_MARKER).exists()
        return AgentRuntimeState(name=name, running=False, failed=failed, exit_status=_read_exit_code(rundir))

    def _liveness(self, rundir: Path) -> _Liveness:
        """Probe the recorded run (blocking: worker threads only)."""
        record = _read_pid(rundir)
        if record is None:
            return _Liveness(record=None)
        if self._shim_alive(rundir, record):
            return _Liveness(record=record, shim_alive=True)
        return _Liveness(record=record, survivors=self._survivors(record))

    def _named_liveness(self, name: str) -> tuple[Path, _Liveness]:
        rundir = self._rundir(name)
        return rundir, self._liveness(rundir)

    def _survivors(self, record: _PidRecord) -> tuple[int, ...]:
        """Live processes left in the group of the (dead) shim of ``record``. Blocking."""
        key = (record.pgid, record.starttime)
        if key in self._ended:
            return ()
        survivors = tuple(live_group_members(record.pgid, record.starttime))
        if not survivors:
            self._ended.add(key)
        return survivors

    def _shim_alive(self, rundir: Path, record: _PidRecord) -> bool:
        """Is the recorded shim alive? Reaps it if it is a zombie child of this process.

        A zombie child of ours that cannot be reaped yet (the shim has a log-pump thread: the leader
        is a zombie while that thread is still on its way out) counts as alive for those few
        milliseconds, so "not running" always comes with its exit status recorded.
        """
        st = read_proc_stat(record.pid)
        if st is None or st.starttime != record.starttime:
            return False
        if st.state == "Z":
            return not _reap(rundir, record.pid)
        return True

    def _group_gone(self, rundir: Path, record: _PidRecord) -> bool:
        """Blocking: the shim reaped (if ours) and no live process left in its group?"""
        return not self._shim_alive(rundir, record) and not self._survivors(record)

    async def _wait_gone(self, rundir: Path, record: _PidRecord) -> None:
        """Wait for the shim's exit (pidfd), then check its group once; poll only while it has members."""
        await wait_process_exit(record.pid, record.starttime)
        await poll_until(lambda: self._group_gone(rundir, record))

    def _begin_stop(self, name: str) -> tuple[Path, _Liveness]:
        """Blocking: probe, and if anything runs write the stop marker (before any signal is sent)."""
        rundir, live = self._named_liveness(name)
        if live.running:
            (rundir / STOP_MARKER).touch()
        return rundir, live

    def _start_sync(self, name: str) -> _Launched | None:
        """Blocking: spawn the shim and record it; a :class:`_Launched` whose report ``start`` must
        read when the shim probes the agent's uid first (a root daemon), else ``None``."""
        rundir = self._rundir(name)
        spec = self._with_operator_env(self._read_spec(rundir, name))
        with _rundir_lock(rundir):
            live = self._liveness(rundir)
            if live.running:
                assert live.record is not None
                if (rundir / STOP_MARKER).exists():
                    pids = live.survivors or (live.record.pid,)
                    raise RuntimeFailure(
                        f'agent "{name}" is still stopping: a stop was requested but its process group '
                        f"{live.record.pgid} still has live processes ({', '.join(map(str, pids))}); "
                        "stop or kill it again before starting it"
                    )
                if not live.shim_alive:
                    log.warning(
                        "agent %s runs without its shim (processes %s of group %d): not starting a copy",
                        name,
                        ", ".join(map(str, live.survivors)),
                        live.record.pgid,
                    )
                return None
            identity = self._prepare_user(name, spec)
            # the stop marker stays until the new run's pid file is written (see below)
            stop_requested = (rundir / STOP_MARKER).exists()
            (rundir / EXIT_STATUS_FILE).unlink(missing_ok=True)
            ready: int | None = None
            if identity is None:
                pid = self._spawn_shim(rundir, spec)
            else:
                r, w = os.pipe()
                try:
                    pid = self._spawn_shim(rundir, spec, identity.who, ready=(w, identity.check))
                except BaseException:
                    os.close(r)
                    raise
                finally:
                    os.close(w)
                ready = r
            st = read_proc_stat(pid)
            if st is None:  # our own child: it exists until we reap it
                if ready is not None:
                    os.close(ready)
                raise RuntimeFailure(f'agent "{name}" vanished right after start (pid {pid})')
            write_json_atomic(
                rundir / PID_FILE,
                # the shim is a session leader (setsid), so its pid is the agent's process group id
                {"pid": pid, "pgid": pid, "starttime": st.starttime, "started_at": time.time()},
            )
            # only now: a probe (it takes no lock) between the two would see the old, dead run
            # without its stop request and call a restart "failed"
            (rundir / STOP_MARKER).unlink(missing_ok=True)
        if ready is None:
            log.info("started agent %s (shim pid %d)", name, pid)
            return None
        assert identity is not None
        return _Launched(name, rundir, pid, ready, identity, stop_requested)

    def _with_operator_env(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` with the operator's environment over agent.nix's; hive-c0re's identity keys
        (``HIVE_*``, ``PATH`` …) are never operator keys, so they keep their values. Blocking."""
        if self._env_source is None:
            return spec
        try:
            extra = self._env_source(spec.name)
        except HiveError as exc:
            raise RuntimeFailure(f'cannot start agent "{spec.name}": {exc}') from None
        return attrs.evolve(spec, env={**spec.env, **extra}) if extra else spec

    def _prepare_user(self, name: str, spec: AgentSpec) -> _Identity | None:
        """Under a root daemon: the agent's uid, its directories prepared, and the paths it must
        reach (:class:`RuntimeFailure` when its program is not found); ``None`` otherwise. Blocking.
        Whether the uid reaches them is probed by the shim (:meth:`_spawn_checked`)."""
        try:
            who = agent_users.credentials(self._paths, name)
            if who is None:
                return None
            agent_users.prepare_agent(self._paths, self._runtime_dir, name, who)
            reach = [self._paths.agent_state(name)]
            if self._runtime_dir is not None:
                reach.append(self._runtime_dir / ("manager" if name == MANAGER_NAME else f"agents/{name}"))
            check = [*agent_users.startup_paths(spec.command, spec.env), *reach]
        except HiveError as exc:
            raise RuntimeFailure(str(exc)) from None
        except OSError as exc:
            raise RuntimeFailure(f'cannot prepare the directories of agent "{name}": {exc}') from exc
        return _Identity(who=who, check=tuple(dict.fromkeys(map(str, check))), reach=tuple(reach))

    def _refuse(self, launched: _Launched, report: Mapping[str, object]) -> None:
        """Blocking: the shim did not report ``ok``: kill and reap it, put the agent's files back as
        they were (no run recorded; the stop marker if there was one), raise :class:`RuntimeFailure`
        naming the path (or why the probe could not run, or that nothing was reported)."""
        name, rundir, pid, identity = launched.name, launched.rundir, launched.pid, launched.identity
        _signal_group(pid, signal.SIGKILL)
        with _rundir_lock(rundir):  # no probe records this run's exit while it is undone
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            current = _read_pid(rundir)
            if current is not None and current.pid == pid:
                (rundir / PID_FILE).unlink(missing_ok=True)
                (rundir / EXIT_STATUS_FILE).unlink(missing_ok=True)
                if launched.stop_requested:
                    (rundir / STOP_MARKER).touch()
        if "unreachable" in report or "error" in report:
            said = {k: str(v) for k, v in report.items()}
            raise RuntimeFailure(str(agent_users.refusal(name, identity.who, said, identity.reach)))
        raise RuntimeFailure(
            f'agent "{name}" did not start: its shim reported nothing within {READY_TIMEOUT:.0f} s '
            f"({report.get('missing', 'timed out')}; see {rundir / SHIM_LOG})"
        )

    def _spawn_shim(
        self,
        rundir: Path,
        spec: AgentSpec,
        who: Credentials | None = None,
        *,
        ready: tuple[int, tuple[str, ...]] | None = None,
    ) -> int:
        user: list[str] = []
        if who is not None:
            groups = ",".join(str(g) for g in who.groups)
            cwd = str(self._paths.agent_state(spec.name))
            user = ["--user", f"{who.uid}:{who.gid}:{groups}", "--cwd", cwd]
        readiness: list[str] = []
        ready_actions: list[tuple[int, int, int]] = []
        if ready is not None:
            readiness = ["--ready-fd", str(READY_FD), "--check", json.dumps(list(ready[1]))]
            # first, before the opens below could reuse the pipe's fd number (a daemon started
            # with a closed stdin gets fd 0 or 1 from os.pipe)
            ready_actions = [(os.POSIX_SPAWN_DUP2, ready[0], READY_FD)]
        argv = [
            sys.executable,
            "-m",
            "hivecore.runtime.shim",
            "--log-max-bytes",
            str(self._log_max_bytes),
            *user,
            *readiness,
            str(rundir),
            "--",
            *spec.command,
        ]
        file_actions: list[tuple[Any, ...]] = [
            *ready_actions,
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(rundir / SHIM_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # posix_spawn keeps every inheritable fd, or a detached agent would hold whatever pipe the
        # daemon's parent left open (a CI log, a terminal) for its lifetime. Not close actions: glibc
        # refuses one for an fd at or above the soft open-files limit (EBADF, no agent starts).
        seal_inherited_fds()
        try:
            return os.posix_spawn(
                sys.executable,
                argv,
                _shim_env(spec.env),
                file_actions=file_actions,
                setsid=True,
                setsigdef=_RESET_SIGNALS,
                setsigmask=_BLOCKED_UNTIL_SHIM_READY,
            )
        except OSError as e:
            raise RuntimeFailure(f'cannot start agent "{spec.name}": {e}') from e

    def _write_spec(self, rundir: Path, spec: AgentSpec) -> None:
        validate_name(spec.name)
        if not spec.command:
            raise RuntimeFailure(f'agent "{spec.name}" has an empty command')
        record = {
            "name": spec.name,
            "command": list(spec.command),
            "env": dict(spec.env),
            "flake_ref": spec.flake_ref,
        }
        write_json_atomic(rundir / SPEC_FILE, record)

    def _read_spec(self, rundir: Path, name: str) -> AgentSpec:
        try:
            raw = json.loads((rundir / SPEC_FILE).read_text(encoding="utf-8"))
            return AgentSpec(
                name=name,
                command=tuple(str(a) for a in raw["command"]),
                env={str(k): str(v) for k, v in raw.get("env", {}).items()},
                flake_ref=raw.get("flake_ref"),
            )
        except FileNotFoundError:
            raise RuntimeFailure(f'agent "{name}" has not been created') from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RuntimeFailure(f'agent "{name}" has an unreadable spec: {e!r}') from e


def _vanished_ok(func: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    """``rmtree``'s error hook: an entry that vanished meanwhile is fine; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except HiveError:
        return False
    return True


def seal_inherited_fds() -> list[int]:
    """Mark every inheritable fd above stderr close-on-exec; returns the fds it marked. Blocking.

    Python opens every fd of its own close-on-exec (PEP 446): an inheritable one was left open by
    whoever started this process (a CI log pipe, ``exec 300>f`` in a shell). ``fcntl`` reaches any
    open fd, also one at or above the soft open-files limit, which ``posix_spawn``'s close actions
    cannot name. ``hive-c0re serve`` calls this at start; every agent start calls it again (cheap:
    one listing of ``/proc/self/fd``), so what the parent left open never reaches an agent.
    """
    sealed = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
                    sealed.append(fd)
            except OSError:
                pass  # the fd listdir itself used, closed by now
    return sealed


async def _read_report(ready: trio.lowlevel.FdStream) -> dict[str, object]:
    """The shim's one-line JSON report; when there is none (it exited first, or wrote garbage),
    ``{"missing": why}``. Unbounded: the caller bounds it."""
    buf = b""
    while b"\n" not in buf:
        chunk = await ready.receive_some(4096)
        if not chunk:
            return {"missing": "the shim exited without a report"}
        buf += chunk
    try:
        report = json.loads(buf.partition(b"\n")[0])
    except ValueError:
        report = None
    return report if isinstance(report, dict) else {"missing": f"an unreadable report {buf[:200]!r}"}


def _shim_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus a PYTHONPATH that lets the shim import hivecore; the shim restores the original."""
    out = dict(env)
    original = env.get("PYTHONPATH")
    entries = [p for p in (original or "").split(os.pathsep) if p]
    if str(PACKAGE_ROOT) not in entries:
        out[PYTHONPATH_ENV] = json.dumps(original)
        out["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *entries])
    return out


def _read_pid(rundir: Path) -> _PidRecord | None:
    try:
        raw = json.loads((rundir / PID_FILE).read_text(encoding="utf-8"))
        pid = int(raw["pid"])
        return _PidRecord(
            pid=pid,
            pgid=int(raw.get("pgid", pid)),  # pidfiles written before the pgid was recorded: the same
            starttime=int(raw["starttime"]),
            started_at=float(raw["started_at"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring unreadable pidfile in %s: %s", rundir, e)
        return None


def _read_exit_code(rundir: Path) -> int | None:
    """The recorded exit status: the return code, or ``-signal`` if the agent was killed by a signal."""
    try:
        raw = json.loads((rundir / EXIT_STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable exit status in %s: %s", rundir, e)
        return None
    if isinstance(raw.get("returncode"), int):
        return int(raw["returncode"])
    if isinstance(raw.get("signal"), int):
        return -int(raw["signal"])
    return None


def _reap(rundir: Path, pid: int) -> bool:
    """Collect a zombie shim if it is our child; record its status if the shim could not.

    False only if it is our child and not reapable yet (threads of it still exiting).
    """
    with _rundir_lock(rundir):
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # not our child: its parent (init after a daemon restart) reaps it
        if reaped == 0:
            return False
        exit_file = rundir / EXIT_STATUS_FILE
        current = _read_pid(rundir) if rundir.is_dir() else None
        if current is not None and current.pid == pid and not exit_file.exists():
            code = os.waitstatus_to_exitcode(status)
            write_json_atomic(exit_file, exit_status_record(code, by="daemon"))
        return True


def _signal_process(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise RuntimeFailure(f"cannot signal process {pid}: {e}") from e


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise RuntimeFailure(f"cannot signal process group {pgid}: {e}") from e
