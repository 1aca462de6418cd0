"""CLI start-up: wall time of ``hivectl status`` vs a bare ``python -c`` raw socket request.

Run: ``.venv/bin/python bench/cli.py [--runs 20]``

Both are fresh interpreters (the same one, so the same ``site`` work) asking the same real host.sock
server for ``agent_status`` (10 synthetic agents); the server runs in a separate process started by
this script and ended by it. The bare client connects, sends the line and prints the answer; hivectl
also parses its arguments, decodes the answer and prints a table. Target: ratio ≤ 2.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AGENTS = 10
BARE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"cmd":"agent_status"}\\n')
answer = b""
while chunk := s.recv(65536):
    answer += chunk
sys.stdout.write(answer.decode())
"""


def serve(path: str) -> None:
    """The server process: a real HostSocket over a façade with synthetic rows."""
    import trio

    from hivecore.errors import NotAvailable
    from hivecore.models import Approval, ContainerView
    from hivecore.sockets.host import HostSocket

    class Facade:
        def __init__(self) -> None:
            self._views = {
                f"a{i}": ContainerView(name=f"a{i}", container=f"h-a{i}", running=i % 3 != 0)
                for i in range(AGENTS)
            }

        def views(self) -> Mapping[str, ContainerView]:
            return self._views

        async def agent_names(self) -> list[str]:
            return list(self._views)

        async def approvals(self) -> list[Approval]:
            return []

        def __getattr__(self, name: str) -> Any:
            async def refuse(*args: Any, **kwargs: Any) -> None:
                raise NotAvailable(f"{name} is not part of this benchmark")

            return refuse

    class Bus:
        def subscribe(self, *args: Any, **kwargs: Any) -> Any:
            raise NotAvailable("subscribe is not part of this benchmark")

    async def main() -> None:
        host = HostSocket(Facade(), Bus(), Path(path))  # type: ignore[arg-type]  # synthetic stand-ins
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            print("ready", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0 or not done.stdout:
        raise SystemExit(f"{cmd[:4]} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def bench(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hcc", dir="/tmp"))
    path = os.fspath(tmp / "host.sock")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", path], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the benchmark server did not start")
        hivectl = [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", path, "status"]
        bare = [sys.executable, "-c", BARE, path]
        wall(hivectl)  # warm the page cache for both
        wall(bare)
        times: dict[str, list[float]] = {"hivectl status": [], "bare python -c": []}
        for _ in range(runs):  # interleaved, so machine noise hits both alike
            times["hivectl status"].append(wall(hivectl))
            times["bare python -c"].append(wall(bare))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CLI wall time, {runs} runs each, agent_status with {AGENTS} agents over a real host.sock")
    print(f"{'client':<16} {'p50 ms':>8} {'min ms':>8} {'max ms':>8}")
    for label, samples in times.items():
        print(
            f"{label:<16} {statistics.median(samples) * 1e3:>8.1f} "
            f"{min(samples) * 1e3:>8.1f} {max(samples) * 1e3:>8.1f}"
        )
    ratio = statistics.median(times["hivectl status"]) / statistics.median(times["bare python -c"])
    print(f"ratio hivectl/bare (p50): {ratio:.2f} (target <= 2.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 2
    if args.serve:
        serve(args.serve)
    else:
        bench(args.runs)


if __name__ == "__main__":
    main()
