"""host.sock throughput and latency: ``agent_status`` with 50 agents vs a bare trio JSON-lines echo server.

Run: ``.venv/bin/python bench/host_sock.py [--seconds 2] [--clients 1 4]``

Both servers run in this process under trio, one request per connection (as hivectl talks). The load
comes from separate client processes (plain blocking sockets: connect, send one line, read to EOF),
so client work does not steal the server's event loop. The agents are synthetic: a runtime that
lists 50 agents, rescanned once so the coordinator's cached rows are filled; ``agent_status``
serves those rows (about 8 KB per answer). The echo server parses the JSON line and writes it back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivecore.config import Config  # after the sys.path fix above
from hivecore.daemon import build
from hivecore.runtime.base import AgentRuntimeState, AgentSpec
from hivecore.sockets.host import HostSocket
from hivecore.unix_listener import open_unix_listener

AGENTS = 50
REQUEST = b'{"cmd":"agent_status"}\n'


class SyntheticRuntime:
    """Lists ``n`` agents (every third one stopped); no lifecycle."""

    kind = "synthetic"
    can_wait_exit = False

    def __init__(self, n: int) -> None:
        self._states = {
            f"a{i:02d}": AgentRuntimeState(name=f"a{i:02d}", running=i % 3 != 0, pid=1000 + i)
            for i in range(n)
        }

    async def list(self, names: Collection[str] | None = None) -> dict[str, AgentRuntimeState]:
        await trio.lowlevel.checkpoint()
        if names is None:
            return dict(self._states)
        return {n: self._states[n] for n in names if n in self._states}

    async def create(self, spec: AgentSpec) -> None:
        raise NotImplementedError

    async def update(self, spec: AgentSpec) -> None:
        raise NotImplementedError

    async def start(self, name: str) -> None:
        raise NotImplementedError

    async def stop(self, name: str, *, graceful: bool = True) -> None:
        raise NotImplementedError

    async def destroy(self, name: str) -> None:
        raise NotImplementedError

    async def wait_exit(self, name: str) -> None:
        raise NotImplementedError


async def serve_echo(path: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The baseline: read one line, parse it, write it back, close."""
    bound = await open_unix_listener(path, dir_mode=None)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\n" not in buf:
                chunk = await stream.receive_some(16384)
                if not chunk:
                    return
                buf += chunk
            line = buf.partition(b"\n")[0]
            await stream.send_all(json.dumps(json.loads(line), separators=(",", ":")).encode() + b"\n")

    try:
        task_status.started()
        await trio.serve_listeners(handler, [bound.listener])
    finally:
        bound.close()


# --- the client process ------------------------------------------------------------------------------


def client_main(path: str, seconds: float) -> None:
    latencies: list[float] = []
    first: bytes | None = None
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(REQUEST)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        latencies.append(time.perf_counter() - t0)
        if first is None:
            first = answer
    print(json.dumps({"latencies": latencies, "first": (first or b"").decode()}))


async def load(path: Path, clients: int, seconds: float) -> tuple[list[float], str]:
    results: list[dict[str, Any]] = []

    async def one() -> None:
        done = await trio.run_process(
            [sys.executable, __file__, "--client", os.fspath(path), "--seconds", str(seconds)],
            capture_stdout=True,
        )
        results.append(json.loads(done.stdout))

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    return [lat for r in results for lat in r["latencies"]], results[0]["first"]


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered) / seconds, statistics.median(ordered) * 1e3, p99 * 1e3


async def bench(seconds: float, client_counts: list[int]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    try:
        config = Config(state_dir=tmp / "state")
        config.paths.create_layout()
        daemon = build(config, runtime=SyntheticRuntime(AGENTS))
        admin_path, echo_path = tmp / "host.sock", tmp / "echo.sock"
        admin = HostSocket(daemon.coordinator, daemon.bus, admin_path)
        rows: list[tuple[str, int, float, float, float]] = []
        size = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.store.run)  # a rescan reads each agent's usage from the store
            await nursery.start(daemon.views.run)
            with trio.fail_after(60):  # every bench bounds its waits
                await daemon.views.rescan()
            await nursery.start(admin.run)
            await nursery.start(serve_echo, echo_path)
            for clients in client_counts:
                for label, path in (
                    (f"host.sock agent_status ({AGENTS} agents)", admin_path),
                    ("bare echo", echo_path),
                ):
                    latencies, first = await load(path, clients, seconds)
                    if path == admin_path:
                        answer = json.loads(first)
                        if not answer["ok"] or len(answer["agent_statuses"]) != AGENTS:
                            raise SystemExit(f"unexpected agent_status answer: {first[:200]}")
                        size = len(first)
                    rows.append((label, clients, *summary(latencies, seconds)))
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"host.sock round trips (one connection per request, {seconds:g} s each; answer {size} bytes)")
    print(f"{'server':<36} {'clients':>7} {'rt/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for label, clients, rate, p50, p99 in rows:
        print(f"{label:<36} {clients:>7} {rate:>9.0f} {p50:>8.3f} {p99:>8.3f}")
    for i in range(0, len(rows), 2):
        admin_row, echo_row = rows[i], rows[i + 1]
        print(
            f"ratio host.sock/echo at {admin_row[1]} client(s): throughput {admin_row[2] / echo_row[2]:.2f}, "
            f"p99 {admin_row[4] / echo_row[4]:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--client", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.clients = 0.2, [1]
    if args.client:
        client_main(args.client, args.seconds)
    else:
        trio.run(bench, args.seconds, args.clients)


if __name__ == "__main__":
    main()
