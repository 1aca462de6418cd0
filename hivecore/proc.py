"""The one subprocess runner: git, nix, nixos-container and systemctl all go through :func:`run`.

What every child gets, whoever asks for it:

* **Validated argv.** Every argument is a ``str`` without a NUL byte (a NUL would otherwise surface
  as a bare ``ValueError`` inside a nursery); the first is a non-empty program name. A bad argv
  raises :class:`InvalidArgv` (a :class:`~hivecore.errors.HiveError`) naming the argument.
* **Capped output.** ``cap`` bytes of stdout and, separately, of stderr are kept; the rest is read
  and dropped (``truncated`` says so), so a chatty child can neither block on a full pipe nor grow
  the daemon's memory.
* **A time limit** (``time_limit`` seconds of wall-clock time, kept by a kernel timer so that a
  test's ``MockClock`` cannot fire it early): past it the child's whole process group
  is killed and the result says ``timed_out``. Callers own the number; there is no default.
* **Its own process group**, killed (``SIGKILL`` to the group) when the caller is cancelled or the
  time limit fires, and reaped before :func:`run` returns or raises.
* **Death with the daemon.** The child is started with ``PR_SET_PDEATHSIG = SIGKILL``: if the
  daemon dies, even by ``kill -9``, the kernel kills the child (a long ``nix eval`` never outlives
  it). Grandchildren that the child did not reap are in the child's group and die with it when the
  daemon is stopped normally; a ``kill -9`` of the daemon reaches only the direct child.
  The kernel ties that signal to the *thread* that forked, and trio forks in a worker thread that
  retires after 10 s idle: :func:`keep_forking_threads` keeps trio's worker threads for the life
  of the process, else every child still running 10 s after its thread went idle was killed.
* **Optional confinement**: ``user`` (run as that uid/gid with exactly the given groups; only when
  the daemon is root), ``memory_limit`` (``RLIMIT_AS``, bytes) and ``stdin`` bytes (else
  ``/dev/null``).

Nothing here blocks the trio thread: the child is a ``trio.run_process`` child.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

from hivecore.errors import HiveError

OUTPUT_CAP = 1 << 20
"""Default bytes kept of stdout (and, separately, of stderr) of one child."""

_PR_SET_PDEATHSIG = 1


class InvalidArgv(HiveError):
    """An argument vector that cannot be handed to ``execve``: the message names the argument."""


@attrs.frozen
class Credentials:
    """Who a child runs as: ``uid``/``gid`` and exactly ``groups`` as its supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@attrs.frozen
class Result:
    """What a finished child left: exit status (negative: killed by that signal), capped output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    truncated: bool = False
    timed_out: bool = False


def check_argv(argv: Sequence[object]) -> list[str]:
    """``argv`` as a list of ``str``; :class:`InvalidArgv` if it cannot reach ``execve`` intact."""
    if not argv:
        raise InvalidArgv("cannot run an empty command")
    out: list[str] = []
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidArgv(f"argument {i} of the command is a {type(arg).__name__}, not text")
        if "\0" in arg:
            raise InvalidArgv(f"argument {i} of `{_program(argv)}` contains a NUL byte")
        out.append(arg)
    if not out[0]:
        raise InvalidArgv("cannot run a command with an empty program name")
    return out


def _program(argv: Sequence[object]) -> str:
    first = argv[0]
    return first.replace("\0", "\\0") if isinstance(first, str) else "?"


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


_LIBC = _libc()
_PRCTL: Callable[..., int] | None = None if _LIBC is None else _LIBC.prctl


_THREAD_LIFETIME = min(int(threading.TIMEOUT_MAX), 10 * 365 * 86400)


def keep_forking_threads() -> None:
    """Keep trio's worker threads alive for the life of the process (idempotent).

    ``PR_SET_PDEATHSIG`` fires when the thread that forked the child exits, not the process, and
    :func:`trio.lowlevel.open_process` forks in a cached worker thread that exits after 10 s idle
    (``trio._core._thread_cache.IDLE_TIMEOUT``, read on every wait). Without this a ``nix build``
    or a Claude turn still running 10 s after its thread went idle was SIGKILLed by the kernel.
    A thread kept idle costs a stack mapping, and trio starts at most its limiter's 40.
    """
    from trio._core import _thread_cache

    if getattr(_thread_cache, "IDLE_TIMEOUT", None) != _THREAD_LIFETIME:
        _thread_cache.IDLE_TIMEOUT = _THREAD_LIFETIME


def child_setup(memory_limit: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child ``PR_SET_PDEATHSIG = SIGKILL`` (and ``RLIMIT_AS`` when
    ``memory_limit`` is set), for callers that spawn a child themselves; it calls
    :func:`keep_forking_threads` so the death signal follows this process, not a worker thread."""
    keep_forking_threads()
    return _child_setup(os.getpid(), memory_limit)


def _child_setup(parent: int, memory_limit: int | None) -> Callable[[], None]:
    """The code that runs in the forked child before ``execve`` (after any uid/gid change, which
    would otherwise clear the death signal). Everything it calls is bound here, in the parent:
    the child must not import or take locks another thread may hold."""
    prctl = _PRCTL
    setrlimit = resource.setrlimit
    rlimit_as = resource.RLIMIT_AS
    getppid = os.getppid
    kill = os.kill
    getpid = os.getpid
    sigkill = signal.SIGKILL

    def setup() -> None:
        if memory_limit is not None:
            setrlimit(rlimit_as, (memory_limit, memory_limit))
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sigkill), 0, 0, 0)
        if getppid() != parent:  # the daemon died before the death signal was armed
            kill(getpid(), sigkill)

    return setup


@contextlib.contextmanager
def _unwrap_start_error() -> Iterator[None]:
    """A child that cannot be started raises its plain ``OSError``, not a nursery's group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_CLOCK_MONOTONIC = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK | TFD_CLOEXEC share their values


def _timerfd(seconds: float) -> int | None:
    """A Linux timerfd that becomes readable after ``seconds`` of real (monotonic) time, or None."""
    if _LIBC is None:
        return None
    fd = int(_LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS))
    if fd < 0:
        return None
    whole = int(seconds)
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(whole, max(1, int((seconds - whole) * 1e9))))
    if _LIBC.timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
        os.close(fd)
        return None
    return fd


async def _cancel_after_real_time(seconds: float, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` after ``seconds`` of wall-clock time.

    A child's time limit is about the child, so it is kept by the kernel (a timerfd the trio loop
    waits on), not by trio's clock: a test's ``MockClock`` may jump trio's clock while a real child
    runs, and that must not look like the child overran. Falls back to ``trio.sleep`` off Linux.
    """
    fd = _timerfd(seconds)
    if fd is None:
        await trio.sleep(seconds)
    else:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
    scope.cancel()


async def _kill_group(proc: trio.Process) -> None:
    """``deliver_cancel`` for :func:`trio.run_process`: SIGKILL to the child's whole group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    time_limit: float,
    cwd: Path | None = None,
    cap: int = OUTPUT_CAP,
    stdin: bytes | None = None,
    user: Credentials | None = None,
    memory_limit: int | None = None,
) -> Result:
    """Run ``argv`` to completion (see the module docstring for what every child gets).

    Raises :class:`InvalidArgv` for a bad argv and ``OSError`` when the program cannot be started;
    a non-zero exit is not an error here (callers decide). On cancellation the child's group is
    killed and reaped, then ``Cancelled`` propagates.
    """
    args = check_argv(argv)
    for key, value in env.items():
        if "\0" in key or "\0" in value or "=" in key:
            raise InvalidArgv(f"environment variable {key!r} of `{args[0]}` cannot be passed")
    out, err = bytearray(), bytearray()
    truncated = False

    async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        nonlocal truncated
        async for chunk in stream:
            room = cap - len(into)
            if room > 0:
                into += chunk[:room]
            if len(chunk) > room:
                truncated = True

    options: dict[str, object] = {}
    if user is not None:
        options.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
    proc: trio.Process | None = None
    deadline = trio.CancelScope()
    with deadline, _unwrap_start_error():
        async with trio.open_nursery() as outer:
            outer.start_soon(_cancel_after_real_time, time_limit, deadline)
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(
                    partial(
                        trio.run_process,
                        args,
                        stdin=subprocess.DEVNULL if stdin is None else stdin,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        check=False,
                        env=dict(env),
                        cwd=cwd,
                        start_new_session=True,
                        preexec_fn=child_setup(memory_limit),
                        deliver_cancel=_kill_group,
                        **options,
                    )
                )
                assert proc.stdout is not None
                assert proc.stderr is not None
                nursery.start_soon(drain, proc.stdout, out)
                nursery.start_soon(drain, proc.stderr, err)
            outer.cancel_scope.cancel()  # the child is done: stop the watchdog
    if proc is None:  # the deadline fired before the child started
        return Result(-int(signal.SIGKILL), b"", b"", truncated=False, timed_out=True)
    if deadline.cancelled_caught:
        # the group was killed by deliver_cancel; be sure no straggler of the group is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    returncode = proc.returncode if proc.returncode is not None else -int(signal.SIGKILL)
    return Result(returncode, bytes(out), bytes(err), truncated, deadline.cancelled_caught)
