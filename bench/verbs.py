"""Per-agent verbs must not cost more with more agents: latency at 10 vs 300 agents, loop lag, SSE.

Run: ``.venv/bin/python bench/verbs.py [--reps 30]``

Real process runtime, real sqlite store, real job lane; the agents are ``sleep 3600`` under the shim
(created with ``runtime.create``, not ``coordinator.spawn``: no python harness per agent). Most exist
but are stopped; they still count in every full scan. Three measurements, each against a baseline
taken in the same run:

1. Verb latency through the coordinator (the job lane), p50/p99 over ``--reps`` repetitions (the
   cheap calls :data:`CHEAP` times per repetition), with 10
   and with 300 agents present: two state dirs whose actors (store, views, job lane, as
   ``tests/conftest.py::start_parts``) run side by side in this process, the repetitions interleaved
   so machine noise hits both alike. ``set_paused`` toggles one stopped agent; stop+start cycles
   one running agent. Baselines: the same work called directly (the marker touch/unlink in a worker
   thread; ``runtime.stop`` + ``runtime.start``) and ``runtime.list([name])``, the one probe every
   verb's ``require_agent`` does. Target: 300/10 ≤ 1.3 (a verb touches only its agent).
2. Event-loop lag while 20 running agents stop at once (``coordinator.stop`` for 20 names in one
   nursery, 300 agents present): a probe task loops ``await trio.sleep(0.001)`` and records how late
   it wakes. Baselines: the same probe with nothing happening, and a bare ``trio.sleep(0)`` loop's
   iteration time. Target: p99 ≤ 20 ms. ``--parts 2`` runs it alone (after part 1's setup);
   ``--why`` adds where the time goes (long trio steps, thread hops and CPU per stop);
   ``bench/ab_lag.py`` compares two trees on it.
3. SSE trigger→receipt: the real daemon (``hivecore.daemon.main`` with the dashboard on port 0) on a
   state dir holding 1 agent and on one holding 100; a raw TCP client reads
   ``/api/dashboard/stream?kinds=container_state_changed`` and times ``coordinator.set_paused`` until
   the frame with that agent's new ``paused`` arrives. Baseline: ``bus.publish`` of the same kind of
   event straight onto the daemon's bus → receipt (the HTTP/SSE path alone). The daemons run one at a
   time (``main`` locks its state dir), alternating 1/100/1/100/… every 5 repetitions. Target: 100/1
   p50 ≤ 2.

The machine is shared (2 cores, other test suites running): absolute numbers are noisy, compare the
ratios. Every agent process started here is killed on the way out, on every path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivecore.config import Config  # after the sys.path fix above
from hivecore.container_view import PAUSE_MARKER
from hivecore.daemon import Daemon, build, limit_worker_threads, tune_interpreter
from hivecore.daemon import main as daemon_main
from hivecore.runtime.base import AgentSpec
from hivecore.runtime.process import ProcessRuntime
from hivecore.wire.events import ContainerStateChanged
from tests.procs import kill_everything_under
from web.app import daemon_app

SMALL, LARGE = 10, 300
STOPPERS = 20
SETTLE = 0.15
CHEAP = 8
"""Repetitions of the cheap calls (set_paused, the marker, list) per repetition of stop+start: at
~1 ms each their median needs more samples than the shared machine's noise allows in 30."""
SSE_SIZES = (1, 100)
WAIT = 30.0
"""The bound on any single wait (a daemon start, a frame, a verb): a hang fails the bench instead."""
SSE_ROUND = 5
"""Repetitions per daemon start in part 3 (the daemons alternate, so disk noise hits both)."""


# --- helpers -------------------------------------------------------------------------------------


def agent_name(i: int) -> str:
    return f"a{i:03d}"


def make_config(state_dir: Path) -> Config:
    return Config(state_dir=state_dir, dashboard_port=0, stop_timeout=2.0, ensure_manager=False)


async def create_agents(config: Config, runtime: ProcessRuntime, names: list[str]) -> None:
    """The agents' dirs and specs (stopped); ``sleep 3600`` is their command."""
    config.paths.create_layout()
    env = {"PATH": os.environ["PATH"]}
    for name in names:
        for sub in ("state", "claude", "config"):
            (config.paths.agent_dir(name) / sub).mkdir(parents=True, exist_ok=True)
        await runtime.create(AgentSpec(name=name, command=("sleep", "3600"), env=env))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


class LagProbe:
    """How late a ``trio.sleep(0.001)`` wakes, sampled continuously while ``recording``."""

    PERIOD = 0.001

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.recording = False

    async def run(self) -> None:
        while True:
            t0 = trio.current_time()
            await trio.sleep(self.PERIOD)
            if self.recording:
                self.samples.append(trio.current_time() - t0 - self.PERIOD)

    @asynccontextmanager
    async def record(self) -> AsyncIterator[list[float]]:
        self.samples = []
        self.recording = True
        try:
            yield self.samples
        finally:
            self.recording = False


def thread_sched() -> tuple[float, float]:
    """``(s on a CPU, s waiting in a run queue for one)`` of the calling thread so far
    (``/proc/thread-self/schedstat``; zeros where the kernel does not keep it)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            on_cpu, queued, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(queued) / 1e9


class HopCounter:
    """Counts thread hops while installed (``--why``): ``trio.to_thread.run_sync`` calls (worker
    threads) and ``Store.call`` (the store thread), and how long the worker hops waited in all
    between the call and their function starting in a thread (mostly for a thread token:
    :data:`hivecore.daemon.WORKER_THREADS`)."""

    def __init__(self) -> None:
        self.worker = self.store = 0
        self.token_wait = 0.0
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        from hivecore.store import Store

        run_sync, call = trio.to_thread.run_sync, Store.call
        counter = self

        async def counted_run_sync(fn: Any, *args: Any, **kw: Any) -> Any:
            counter.worker += 1
            t0 = time.perf_counter()

            def timed(*a: Any) -> Any:
                counter.token_wait += time.perf_counter() - t0
                return fn(*a)

            return await run_sync(timed, *args, **kw)

        async def counted_call(self: Any, fn: Any) -> Any:
            counter.store += 1
            return await call(self, fn)

        self._saved = [(trio.to_thread, "run_sync", run_sync), (Store, "call", call)]
        trio.to_thread.run_sync = counted_run_sync  # type: ignore[assignment]
        Store.call = counted_call  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for owner, attr, value in self._saved:
            setattr(owner, attr, value)


def _proc_cpu(pid: int) -> float:
    """Seconds of CPU the threads of process ``pid`` used so far (``/proc/<pid>/task/*/schedstat``:
    ns, where ``stat``'s clock ticks are 10 ms); 0 for a process that is gone."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total / 1e9


class RoundCost:
    """CPU spent while the agents stop (``--why``), summed over the rounds: the trio thread's (and
    its wait in a run queue), the whole daemon process's, and the reaped children's from the stop on
    (the shims, and the agents they reaped: ``RUSAGE_CHILDREN`` less the shims' CPU before it)."""

    def __init__(self) -> None:
        self.trio_cpu = self.trio_queued = self.process = self.children = self.wall = 0.0
        self._at: tuple[float, ...] = ()

    @staticmethod
    def _now() -> tuple[float, ...]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            *thread_sched(),
            time.process_time(),
            children.ru_utime + children.ru_stime,
            time.perf_counter(),
        )

    def begin(self, shims: list[int]) -> None:
        """``shims``: the pids of the shims about to stop (their CPU so far is not the stop's)."""
        self._at = self._now()
        self.children -= sum(_proc_cpu(pid) for pid in shims)

    def end(self) -> None:
        d = [b - a for a, b in zip(self._at, self._now(), strict=True)]
        self.trio_cpu += d[0]
        self.trio_queued += d[1]
        self.process += d[2]
        self.children += d[3]
        self.wall += d[4]

    def report(self, n: int) -> str:
        return (
            f"CPU ms: trio thread {self.trio_cpu / n * 1e3:.2f} (queued for a core "
            f"{self.trio_queued / n * 1e3:.2f}), daemon process {self.process / n * 1e3:.2f}, reaped "
            f"children {self.children / n * 1e3:.2f}; wall {self.wall * 1e3:.0f} ms for {n} stops"
        )


class StepTimer(trio.abc.Instrument):
    """Which trio task steps are long while ``recording``, and what the trio thread did in them: *ran*
    (its CPU time ≈ the step's wall time: our code blocks the loop), *queued* for a core (the run
    queue wait of ``/proc/thread-self/schedstat``: other processes or threads had both cores), or
    neither: it slept, i.e. waited for the GIL (or in a blocking syscall). What a lag spike is made of."""

    LONG = 0.005

    def __init__(self) -> None:
        self.recording = False
        self.long: list[tuple[float, float, float, str]] = []
        """``(wall s, thread CPU s, run queue s, task name)`` of each step longer than :attr:`LONG`."""
        self._t0 = self._cpu0 = self._rq0 = 0.0
        self._armed = False
        """Whether the step under way began while recording (its start was read)."""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._armed = self.recording
        if self._armed:  # a /proc read per step: only while it counts
            self._t0, (self._cpu0, self._rq0) = time.perf_counter(), thread_sched()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not (self.recording and self._armed):
            return
        wall = time.perf_counter() - self._t0
        if wall > self.LONG:
            cpu, rq = thread_sched()
            name = task.name.split(" ", 1)[0][-40:]
            self.long.append((wall, cpu - self._cpu0, rq - self._rq0, name))

    def report(self, label: str) -> None:
        if not self.long:
            print(f"  {label}: no trio task step over {self.LONG * 1e3:.0f} ms")
            return
        walls = sum(w for w, _, _, _ in self.long)
        cpus = sum(c for _, c, _, _ in self.long)
        rqs = sum(q for _, _, q, _ in self.long)
        tasks = sorted({n for _, _, _, n in self.long})
        print(
            f"  {label}: {len(self.long)} trio task steps over {self.LONG * 1e3:.0f} ms (max "
            f"{max(w for w, _, _, _ in self.long) * 1e3:.1f} ms), {walls * 1e3:.0f} ms in all: the trio "
            f"thread ran {cpus * 1e3:.1f}, queued for a core {rqs * 1e3:.1f}, slept (GIL) "
            f"{(walls - cpus - rqs) * 1e3:.1f}; tasks: {', '.join(tasks[:6])}"
        )


# --- 1 and 2: verbs on the actors (store, views, job lane) ----------------------------------------


async def start_actors(config: Config, nursery: trio.Nursery) -> Daemon:
    config.paths.create_layout()
    tune_interpreter()  # as hivecore.daemon.main does
    limit_worker_threads()  # as hive-c0re serve does
    daemon = build(config)
    await nursery.start(daemon.store.run)
    await nursery.start(daemon.views.run)
    await nursery.start(daemon.lane.run)
    return daemon


async def bench_verbs(roots: dict[int, Path], reps: int, nursery: trio.Nursery) -> dict[int, Daemon]:
    """Part 1; returns the daemons (their actors keep running) so part 2 reuses the large one."""
    daemons: dict[int, Daemon] = {}
    for n, root in roots.items():
        config = make_config(root)
        runtime = ProcessRuntime(config.paths, stop_timeout=config.stop_timeout)
        await create_agents(config, runtime, [agent_name(i) for i in range(n)])
        daemons[n] = await start_actors(config, nursery)
        await daemons[n].views.rescan()  # seed every row, as crash_watch's first tick does
        await daemons[n].coordinator.start(agent_name(0), source="internal")  # the stop+start agent

    pausee, cycled = agent_name(1), agent_name(0)
    marker = {n: d.config.paths.agent_state(pausee) / PAUSE_MARKER for n, d in daemons.items()}
    names = ("set_paused", "raw marker", "stop+start", "raw stop+start", "list([name])")
    got: dict[tuple[str, int], list[float]] = {(k, n): [] for k in names for n in daemons}

    def toggle(path: Path, on: bool) -> None:
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    for rep in range(reps + 2):  # the first two are warm-up
        for n, d in daemons.items():  # interleaved: noise hits both sizes alike
            c, rt = d.coordinator, d.runtime
            samples: dict[str, list[float]] = {k: [] for k in names}
            for i in range(CHEAP):
                on = i % 2 == 0
                samples["set_paused"].append(await timed(partial(c.set_paused, pausee, on)))
                marker_write = partial(trio.to_thread.run_sync, toggle, marker[n], on)
                samples["raw marker"].append(await timed(marker_write))
                samples["list([name])"].append(await timed(partial(rt.list, [pausee])))
            # each start is followed by a settle pause (untimed): a stop right after a start would
            # also wait for the fresh shim (a python process) to unblock SIGTERM
            t0 = time.perf_counter()
            await c.stop(cycled)
            await c.start(cycled)
            samples["stop+start"].append(time.perf_counter() - t0)
            await trio.sleep(SETTLE)
            t0 = time.perf_counter()
            await rt.stop(cycled)
            await rt.start(cycled)
            samples["raw stop+start"].append(time.perf_counter() - t0)
            await trio.sleep(SETTLE)
            if rep >= 2:
                for k, v in samples.items():
                    got[(k, n)] += v

    if not reps:
        return daemons
    print(
        f"\n1. verb latency, ms ({reps} reps of stop+start, {reps * CHEAP} of the others, interleaved; "
        f"{SMALL} and {LARGE} agents present)"
    )
    heads = (f"p50@{SMALL}", f"p99@{SMALL}", f"p50@{LARGE}", f"p99@{LARGE}", f"p50 {LARGE}/{SMALL}")
    print(f"{'call':<16} " + " ".join(f"{h:>8}" for h in heads[:4]) + f" {heads[4]:>11}")
    for k in names:
        a, b = got[(k, SMALL)], got[(k, LARGE)]
        ratio = statistics.median(b) / statistics.median(a)
        cells = " ".join(ms(pct(xs, q)) for xs in (a, b) for q in (0.5, 0.99))
        print(f"{k:<16} {cells} {ratio:>11.2f}")
    for verb, raw in (("set_paused", "raw marker"), ("stop+start", "raw stop+start")):
        over = [statistics.median(got[(verb, n)]) / statistics.median(got[(raw, n)]) for n in daemons]
        print(f"  RATIO {verb} / {raw}: {over[0]:.1f}x at {SMALL}, {over[1]:.1f}x at {LARGE}")
    print("  target: p50 300/10 ≤ 1.3 for set_paused and stop+start (p99 of 30 reps is the worst one);")
    print("  set_paused / raw marker ≤ 3x (issue 15 item 10)")
    return daemons


async def bench_lag(daemon: Daemon, rounds: int, nursery: trio.Nursery, *, why: bool = False) -> None:
    """Part 2: loop lag while STOPPERS running agents stop at once (LARGE agents present)."""
    c = daemon.coordinator
    names = [agent_name(i) for i in range(LARGE - STOPPERS, LARGE)]
    probe = LagProbe()
    nursery.start_soon(probe.run)

    # baselines: the probe with nothing happening; a bare sleep(0) loop's iteration time
    await trio.sleep(0.1)
    async with probe.record() as idle:
        await trio.sleep(1.0)
    idle = list(idle)
    ticks: list[float] = []
    for _ in range(2000):
        t0 = trio.current_time()
        await trio.lowlevel.checkpoint()  # what trio.sleep(0) does
        ticks.append(trio.current_time() - t0)

    stopping: list[float] = []
    starting: list[float] = []
    walls: list[float] = []
    steps = StepTimer()
    hops = HopCounter()
    spent = RoundCost()
    if why:  # its hooks run at every task step: off by default, so they never weigh on the lag
        trio.lowlevel.add_instrument(steps)
    for _ in range(rounds):
        async with probe.record() as s, trio.open_nursery() as inner:
            for name in names:
                inner.start_soon(partial(c.start, name))
        starting += s
        await trio.sleep(0.3)  # let the shims settle: each is a fresh python process
        if why:
            running = await daemon.runtime.list(names)
            spent.begin([state.pid for state in running.values() if state.pid is not None])
            hops.install()
        t0 = time.perf_counter()
        steps.recording = True
        async with probe.record() as s, trio.open_nursery() as inner:
            for name in names:
                inner.start_soon(partial(c.stop, name))
        steps.recording = False
        walls.append(time.perf_counter() - t0)
        if why:
            spent.end()
            hops.uninstall()
        stopping += s
        await trio.sleep(0.2)
    if why:
        trio.lowlevel.remove_instrument(steps)

    print(f"\n2. event-loop lag, ms ({STOPPERS} agents stopping at once, {LARGE} present, {rounds} rounds)")
    print(f"{'while':<34} {'samples':>7} {'p50':>8} {'p99':>8} {'max':>8}")
    rows = (
        ("idle (probe only)", idle),
        ("bare sleep(0) loop iteration", ticks),
        (f"{STOPPERS}x coordinator.stop at once", stopping),
        (f"{STOPPERS}x coordinator.start at once", starting),
    )
    for label, xs in rows:
        print(f"{label:<34} {len(xs):>7} {ms(pct(xs, 0.5))} {ms(pct(xs, 0.99))} {ms(max(xs))}")
    print(f"  stop wall time per round: {', '.join(f'{w * 1e3:.0f}' for w in walls)} ms")
    if why:
        steps.report("while stopping")
        n = rounds * STOPPERS
        print(
            f"  per stop: {hops.worker / n:.1f} worker-thread hops (waiting {hops.token_wait / n * 1e3:.2f} "
            f"ms for a thread in all), {hops.store / n:.1f} store calls; " + spent.report(n)
        )
    print(f"  RATIO stop lag p99 / idle p99: {pct(stopping, 0.99) / pct(idle, 0.99):.1f}")
    stop99, start99 = pct(stopping, 0.99) * 1e3, pct(starting, 0.99) * 1e3
    print(f"  target: p99 ≤ 20 ms while stopping (here {stop99:.1f} ms) and starting ({start99:.1f} ms)")


# --- 3: SSE through the real daemon --------------------------------------------------------------


class SSEReader:
    """A raw HTTP/1.1 SSE client; chunk-size lines are skipped by reading ``data:`` lines only."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.waiting: tuple[str, bool, trio.Event] | None = None
        self.arrived = 0.0

    @classmethod
    async def open(cls, daemon: Daemon) -> SSEReader:
        url = urlsplit(daemon.dashboard_urls[0])
        assert url.hostname is not None
        assert url.port is not None
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        path = "/api/dashboard/stream?kinds=container_state_changed"
        token = daemon.config.paths.operator_token.read_text().strip()  # written at the daemon's start
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        await stream.send_all(head.encode())
        reader = cls(stream)
        with trio.fail_after(WAIT):
            while b": connected" not in reader.buf:  # the subscription exists from here on
                chunk = await stream.receive_some()
                if not chunk:
                    raise EOFError(f"the stream closed before it was connected: {reader.buf[:300]!r}")
                reader.buf += chunk
        reader.buf = reader.buf.partition(b": connected")[2]
        return reader

    async def run(self) -> None:
        while True:
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                if line.startswith(b"data: "):
                    self._frame(json.loads(line[6:]))
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError("the SSE stream closed")
            self.buf += chunk

    def _frame(self, data: dict[str, Any]) -> None:
        now = time.perf_counter()
        row = data.get("container") or {}
        if self.waiting is not None:
            name, paused, event = self.waiting
            if row.get("name") == name and row.get("paused") is paused:
                self.arrived = now
                self.waiting = None
                event.set()

    async def until(self, name: str, paused: bool, trigger: Callable[[], Awaitable[object]]) -> float:
        event = trio.Event()
        self.waiting = (name, paused, event)
        t0 = time.perf_counter()
        with trio.fail_after(WAIT):
            await trigger()
            await event.wait()
        return self.arrived - t0


async def sse_round(root: Path, reps: int) -> tuple[list[float], list[float]]:
    """One daemon on ``root``: ``reps`` set_paused→frame and ``reps`` publish→frame timings."""
    name = agent_name(0)
    verb: list[float] = []
    bare: list[float] = []
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(daemon_main, make_config(root), web_factory=daemon_app))
        reader = await SSEReader.open(daemon)
        nursery.start_soon(reader.run)
        c = daemon.coordinator
        for rep in range(reps + 2):
            row = c.views()[name]
            paused = not row.paused
            dt = await reader.until(name, paused, partial(c.set_paused, name, paused))
            fake = ContainerStateChanged(container=attrs.evolve(row, paused=not paused))
            bt = await reader.until(name, not paused, partial(_publish, daemon, fake))
            if rep >= 2:
                verb.append(dt)
                bare.append(bt)
        nursery.cancel_scope.cancel()
    await reader.stream.aclose()
    return verb, bare


async def _publish(daemon: Daemon, event: ContainerStateChanged) -> None:
    daemon.bus.publish(event)
    await trio.lowlevel.checkpoint()


async def bench_sse(roots: dict[int, Path], reps: int) -> None:
    for n, root in roots.items():
        config = make_config(root)
        await create_agents(config, ProcessRuntime(config.paths), [agent_name(i) for i in range(n)])
    verb: dict[int, list[float]] = {n: [] for n in roots}
    bare: dict[int, list[float]] = {n: [] for n in roots}
    rounds = max(1, reps // SSE_ROUND)
    for _ in range(rounds):  # 1, 100, 1, 100, ...: one daemon at a time (main locks its state dir)
        for n, root in roots.items():
            v, b = await sse_round(root, SSE_ROUND)
            verb[n] += v
            bare[n] += b
    print(f"\n3. SSE trigger→receipt, ms (real daemon + dashboard, {rounds}x{SSE_ROUND} reps per size)")
    print(f"{'trigger':<26} {'agents':>6} {'p50':>8} {'p99':>8}")
    for n in roots:
        print(f"{'coordinator.set_paused':<26} {n:>6} {ms(pct(verb[n], 0.5))} {ms(pct(verb[n], 0.99))}")
        print(f"{'bus.publish (baseline)':<26} {n:>6} {ms(pct(bare[n], 0.5))} {ms(pct(bare[n], 0.99))}")
    lo, hi = SSE_SIZES
    ratio = statistics.median(verb[hi]) / statistics.median(verb[lo])
    bratio = statistics.median(bare[hi]) / statistics.median(bare[lo])
    print(f"  set_paused p50 {hi}/{lo}: {ratio:.2f} (target ≤ 2); bus.publish p50 {hi}/{lo}: {bratio:.2f}")


# --- main ------------------------------------------------------------------------------------------


async def run(
    roots: dict[int, Path], sse_roots: dict[int, Path], reps: int, rounds: int, parts: set[int], why: bool
) -> None:
    t0 = time.perf_counter()
    if parts & {1, 2}:
        async with trio.open_nursery() as nursery:
            daemons = await bench_verbs(roots, reps if 1 in parts else 0, nursery)
            if 2 in parts:
                await bench_lag(daemons[LARGE], rounds, nursery, why=why)
            nursery.cancel_scope.cancel()
    if 3 in parts:
        await bench_sse(sse_roots, reps)
    took = time.perf_counter() - t0
    print(f"\ntotal {took:.0f} s; a shared 2-core machine: absolute numbers are noisy, compare the ratios")


async def bounded(budget: float, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    with trio.fail_after(budget):
        await fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="stop-20-at-once rounds for the lag probe")
    parser.add_argument("--parts", default="1,2,3", help="which measurements to run (part 2 needs 1's setup)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does every part still run?")
    parser.add_argument(
        "--why", action="store_true", help="part 2: report the long trio task steps (wall vs the loop's CPU)"
    )
    parser.add_argument("--budget", type=float, default=1800, help="seconds before the whole bench fails")
    args = parser.parse_args()
    if args.smoke:
        global LARGE, STOPPERS, SSE_SIZES, SETTLE
        LARGE, STOPPERS, SSE_SIZES, SETTLE = 20, 5, (1, 5), 0.05
        args.reps, args.rounds = 2, 1
    parts = {int(p) for p in args.parts.split(",")}
    logging.basicConfig(level=logging.WARNING)
    tmp = [Path(tempfile.mkdtemp(prefix="hv", dir="/tmp")) for _ in range(4)]
    roots = {SMALL: tmp[0], LARGE: tmp[1]}
    sse_roots = {SSE_SIZES[0]: tmp[2], SSE_SIZES[1]: tmp[3]}
    try:
        trio.run(bounded, args.budget, run, roots, sse_roots, args.reps, args.rounds, parts, args.why)
    finally:
        for root in tmp:
            kill_everything_under(root / "run" / "process")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
