"""A pytest plugin: where a test run's CPU goes, by child program (opt-in, one process only).

    PYTHONPATH=bench .venv/bin/python -m pytest -p childcpu -p no:xdist tests/test_lifecycle.py

Every child the test process waits for is reaped with ``os.wait4`` instead of ``os.waitpid``, so
its user+system CPU seconds (its own waited-for descendants included: an agent's shim counts its
agent) are summed per program (``git``, ``nix``, ``python -m hivecore.cli.hivectl`` …). The
summary prints the test process's own CPU beside them. Children reaped another way (a detached
agent, a process the test never waits for) land in the "all children" total only, or nowhere.
"""

from __future__ import annotations

import collections
import os
import resource
import subprocess
from typing import Any

_CPU: collections.defaultdict[str, float] = collections.defaultdict(float)
_RUNS: collections.Counter[str] = collections.Counter()
_PROGRAM: dict[int, str] = {}


def _name(argv: list[str]) -> str:
    prog = os.path.basename(argv[0]) if argv else "?"
    if prog.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        return f"python -m {argv[2]}"
    return prog


_execute_child: Any = subprocess.Popen._execute_child  # type: ignore[attr-defined]


def _recording_execute_child(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> Any:
    result = _execute_child(self, args, *rest, **kwargs)
    argv = [os.fsdecode(args)] if isinstance(args, (str, bytes)) else [os.fsdecode(a) for a in args]
    _PROGRAM[self.pid] = _name(argv)
    return result


def _waitpid(pid: int, options: int) -> tuple[int, int]:
    reaped, status, usage = os.wait4(pid, options)
    if reaped:
        prog = _PROGRAM.pop(reaped, "(started outside subprocess.Popen)")
        _CPU[prog] += usage.ru_utime + usage.ru_stime
        _RUNS[prog] += 1
    return reaped, status


def pytest_configure(config: Any) -> None:
    subprocess.Popen._execute_child = _recording_execute_child  # type: ignore[attr-defined]
    os.waitpid = _waitpid


def pytest_terminal_summary(terminalreporter: Any) -> None:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    write = terminalreporter.write_line
    write(
        f"CPU s: this process {own.ru_utime + own.ru_stime:.1f}, all children "
        f"{children.ru_utime + children.ru_stime:.1f}, by program {sum(_CPU.values()):.1f}"
    )
    for prog, seconds in sorted(_CPU.items(), key=lambda kv: -kv[1])[:15]:
        write(f"{seconds:8.1f} s {_RUNS[prog]:6d} runs  {prog}")
