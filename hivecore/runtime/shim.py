"""The process runtime's per-agent shim.

Usage: ``python -m hivecore.runtime.shim [--log-max-bytes N] [--user UID:GID:G1,G2 --cwd DIR]
[--ready-fd FD --check PATHS_JSON] RUNDIR -- CMD…``.

The shim is the session and process-group leader of one agent. It

- with ``--ready-fd``: first checks, as ``--user``, that every path of ``--check`` (a JSON list) can be
  executed or traversed (:func:`unreachable`), and reports one JSON line on ``FD`` before anything
  else: ``{"ok": true}``, ``{"unreachable": PATH}`` or ``{"error": TEXT}``; on anything but ``ok`` it
  exits without starting the agent. The daemon waits for that line (a root daemon, whose agents run
  as their own uids): the probe's fork happens in this small process, not in the daemon, where a
  fork that changes uids holds the GIL while it copies the daemon's page tables;
- starts ``CMD`` as its child (same process group) with stdin on ``/dev/null`` and stdout+stderr
  piped into ``RUNDIR/agent.log``, rotated past ``--log-max-bytes`` (``agent.log.1`` …
  ``agent.log.3``); with ``--user``, as that uid and gid with exactly those supplementary groups,
  in ``--cwd`` (the shim itself keeps the daemon's user, so ``RUNDIR`` stays the daemon's);
- forwards SIGTERM/SIGINT to the child and waits for it;
- writes ``RUNDIR/exit_status`` (JSON ``{"returncode", "signal", "finished_at", "by": "shim"}``) so the
  status survives a daemon restart (the daemon is then not the shim's parent and cannot ``waitpid`` it);
- kills whatever the agent left behind in its process group, itself included (one ``killpg``: see
  :func:`end_group`).

It uses the standard library only (no trio) so it starts fast. The small ``/proc`` and JSON helpers
below are shared with :mod:`hivecore.runtime.process`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any, NamedTuple

from hivecore.atomic import write_json_atomic as write_json_atomic  # shared with the process runtime

EXIT_STATUS_FILE = "exit_status"
LOG_FILE = "agent.log"
LOG_KEEP = 3
DEFAULT_LOG_MAX_BYTES = 1 << 20
PYTHONPATH_ENV = "HIVE_SHIM_PYTHONPATH"
"""Set by the runtime when it had to prepend the hivecore package root to the shim's PYTHONPATH: the
agent's own PYTHONPATH as JSON (``null`` = unset), which the shim restores for the agent."""

_FORWARDED = (signal.SIGTERM, signal.SIGINT)
_PIPE_DRAIN_SECONDS = 1.0
PROBE_TIMEOUT = 10.0
"""Seconds the reachability probe (:func:`unreachable`) may take."""
_PROBE = 'for p do [ -x "$p" ] || { printf "%s" "$p"; exit 1; }; done'


# -- helpers shared with the runtime ------------------------------------------------------------


class ProcStat(NamedTuple):
    state: str
    pgrp: int
    starttime: int
    """Clock ticks since boot (``/proc/<pid>/stat`` field 22): with the pid, a unique process identity."""


def read_proc_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/<pid>/stat``; ``None`` if the process does not exist (or the file is unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may itself contain spaces and ')': split after the last ')'.
    _, _, rest = raw.rpartition(b")")
    fields = rest.split()
    try:
        return ProcStat(state=fields[0].decode(), pgrp=int(fields[2]), starttime=int(fields[19]))
    except (IndexError, ValueError):
        return None


def group_members(pgid: int, *, exclude: int | None = None) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        st = read_proc_stat(int(entry.name))
        if st is not None and st.pgrp == pgid and st.state != "Z":
            members.append(int(entry.name))
    return members


def exit_status_record(code: int, *, by: str) -> dict[str, Any]:
    """The ``exit_status`` JSON for a ``subprocess``-style code (negative = killed by that signal)."""
    return {
        "returncode": code if code >= 0 else None,
        "signal": -code if code < 0 else None,
        "finished_at": time.time(),
        "by": by,
    }


def unreachable(paths: list[str], user: tuple[int, int, list[int]]) -> str | None:
    """The first of ``paths`` that ``user`` (uid, gid, supplementary groups) cannot execute or
    traverse, ``"/bin/sh"`` if the probe itself cannot run, ``None`` if every path is reachable.

    Tested by a ``/bin/sh`` probe running as that user, so modes, ACLs and private homes count
    exactly as the kernel counts them. Raises :class:`OSError` or
    :class:`subprocess.SubprocessError` (a timeout after :data:`PROBE_TIMEOUT` s) when the probe
    cannot be run as that user.
    """
    probe = subprocess.run(
        ["/bin/sh", "-c", _PROBE, "sh", *paths],
        user=user[0],
        group=user[1],
        extra_groups=user[2],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    if probe.returncode == 0:
        return None
    return probe.stdout.decode(errors="replace") or "/bin/sh"


def _readiness(check: list[str], user: tuple[int, int, list[int]] | None) -> dict[str, Any]:
    if user is None or not check:
        return {"ok": True}
    try:
        bad = unreachable(check, user)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    return {"ok": True} if bad is None else {"unreachable": bad}


# -- the shim -------------------------------------------------------------------------------------


class RotatingLog:
    """An append-only log file that rotates to ``.1`` … ``.keep`` once it grows past ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int = LOG_KEEP) -> None:
        self._path = path
        self._max_bytes = max(1, max_bytes)
        self._keep = keep
        self._lock = threading.Lock()
        self._file: IO[bytes] = path.open("ab")
        if self._file.tell() >= self._max_bytes:
            self._rotate()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._file.write(data)
            self._file.flush()
            if self._file.tell() >= self._max_bytes:
                self._rotate()

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.write(f"[hive shim {stamp}] {text}\n".encode())

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self._keep - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{i}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{i + 1}"))
        os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        self._file = self._path.open("ab")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _pump(fd: int, log: RotatingLog) -> None:
    while data := os.read(fd, 65536):
        log.write(data)


def _agent_env() -> dict[str, str]:
    env = dict(os.environ)
    saved = env.pop(PYTHONPATH_ENV, None)
    if saved is not None:
        original = json.loads(saved)
        if original is None:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = str(original)
    return env


def run(
    rundir: Path,
    command: list[str],
    *,
    log_max_bytes: int,
    user: tuple[int, int, list[int]] | None = None,
    cwd: str | None = None,
    ready_fd: int | None = None,
    check: list[str] | None = None,
) -> int:
    """Run ``command`` under the shim until it exits; return the shim's own exit code."""
    log = RotatingLog(rundir / LOG_FILE, max_bytes=log_max_bytes)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    # The runtime spawns the shim with these blocked, so a stop that raced the interpreter's startup
    # is pending now rather than lost (or fatal to the shim): it is delivered to ``forward`` here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

    if ready_fd is not None:
        report = _readiness(check or [], user)
        with os.fdopen(ready_fd, "w", encoding="utf-8") as ready:
            ready.write(json.dumps(report) + "\n")
        if "ok" not in report:
            log.note(f"not starting {shlex.join(command)}: {report}")
            log.close()
            return 0
    log.note(f"starting: {shlex.join(command)}")
    try:
        identity: dict[str, Any] = {}
        if user is not None:
            identity = {"user": user[0], "group": user[1], "extra_groups": user[2]}
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_agent_env(),
            cwd=cwd,
            **identity,
        )
    except OSError as e:
        code = 126 if isinstance(e, PermissionError) else 127
        log.note(f"cannot start the agent: {e}")
        write_json_atomic(rundir / EXIT_STATUS_FILE, {**exit_status_record(code, by="shim"), "error": str(e)})
        log.close()
        return 0
    for signum in pending:
        child.send_signal(signum)
    assert child.stdout is not None
    reader = threading.Thread(target=_pump, args=(child.stdout.fileno(), log), name="log-pump", daemon=True)
    reader.start()

    code = child.wait()
    # A straggler still holding the pipe must not keep the shim alive: drain briefly, then move on.
    reader.join(_PIPE_DRAIN_SECONDS)
    log.note(f"agent exited with {'signal ' + str(-code) if code < 0 else 'code ' + str(code)}")
    write_json_atomic(rundir / EXIT_STATUS_FILE, exit_status_record(code, by="shim"))
    log.close()
    end_group()
    return 0  # not reached


def end_group() -> None:
    """Kill whatever the agent left in the shim's process group, and the shim with it: one
    ``killpg(SIGKILL)``, the last thing the shim does (its status and log are written by then).

    Not a ``/proc`` scan for stragglers first and a normal interpreter exit after: when 20 agents
    stopped at once, their 20 shims spent ~14 ms of CPU each on those two (the scan reads every
    process's ``stat``; the interpreter's teardown), and the daemon's event loop waited for a core
    meanwhile (``bench/verbs.py --why`` part 2). The shim's own exit status is never read (its
    agent's is in ``exit_status``; :func:`hivecore.runtime.process._reap` writes one only where
    that file is missing)."""
    for stream in (sys.stdout, sys.stderr):  # the shim's own output (shim.log), if any
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if os.getpgrp() != os.getpid():  # not started by the runtime (setsid): not ours to kill
        os._exit(0)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _usage() -> int:
    sys.stderr.write(
        "usage: python -m hivecore.runtime.shim [--log-max-bytes N] [--user UID:GID:GROUPS --cwd DIR] "
        "[--ready-fd FD --check PATHS_JSON] RUNDIR -- COMMAND...\n"
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    log_max_bytes = DEFAULT_LOG_MAX_BYTES
    if args[:1] == ["--log-max-bytes"] and len(args) >= 2:
        try:
            log_max_bytes = int(args[1])
        except ValueError:
            return _usage()
        args = args[2:]
    user: tuple[int, int, list[int]] | None = None
    cwd: str | None = None
    ready_fd: int | None = None
    check: list[str] = []
    while args[:1] in (["--user"], ["--cwd"], ["--ready-fd"], ["--check"]) and len(args) >= 2:
        if args[0] == "--cwd":
            cwd = args[1]
        elif args[0] == "--ready-fd":
            try:
                ready_fd = int(args[1])
            except ValueError:
                return _usage()
        elif args[0] == "--check":
            try:
                check = [str(p) for p in json.loads(args[1])]
            except (ValueError, TypeError):
                return _usage()
        else:
            try:
                uid, gid, groups = args[1].split(":")
                user = (int(uid), int(gid), [int(g) for g in groups.split(",") if g])
            except ValueError:
                return _usage()
        args = args[2:]
    if len(args) < 3 or args[1] != "--":
        return _usage()
    rundir, command = Path(args[0]), args[2:]
    return run(
        rundir, command, log_max_bytes=log_max_bytes, user=user, cwd=cwd, ready_fd=ready_fd, check=check
    )


if __name__ == "__main__":
    sys.exit(main())
