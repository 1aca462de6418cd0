"""Dashboard SSE fan-out: 120 concurrent clients on loopback, trigger→receipt latency and memory.

Two servers, each in its own subprocess, fed the same way in the same run:

* **hivecore**: the real daemon (``hivecore.daemon.main`` with ``web.app.daemon_app``: auth,
  the event bus, the kind filter, the stream's ``id:`` frames) behind hypercorn; a side TCP port
  publishes one ``agent_notice`` on the bus per line it reads;
* **bare**: a minimal ASGI SSE endpoint under the same hypercorn; the side port puts one frame of the
  same size into every client's memory channel.

The clients (raw HTTP/1.1 over TCP, all in this process) connect, then for each trigger the bench
writes a nonce to the side port and notes when each client reads it. Latency is trigger→receipt per
client; memory is the server's RSS growth from before the clients connected to after, per client.

    .venv/bin/python bench/sse.py [--clients 120] [--triggers 40]

At most :data:`hivecore.dashboard_listener.MAX_AUTHENTICATED` clients (128): the daemon refuses
authenticated connections past that (one operator's tabs, not a fan-out service), so a larger
``--clients`` would measure the refusals.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hivecore.dashboard_listener import MAX_AUTHENTICATED  # noqa: E402  (after the sys.path fix)

TOKEN = "bench-operator-token-0123456789abcdef"
CLIENTS = MAX_AUTHENTICATED - 8
"""Below the daemon's authenticated-connection cap (a few slots left for the bench's own probes)."""


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- servers (run as subprocesses: ``bench/sse.py --serve hivecore|bare``) ----------------------------


async def trigger_port(on_line: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while chunk := await stream.receive_some():
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    on_line(line.decode())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def serve_hivecore() -> None:
    from hivecore.config import Config
    from hivecore.daemon import main
    from hivecore.wire.events import AgentNotice
    from web.app import daemon_app

    state = Path(tempfile.mkdtemp(prefix="hcsse", dir="/tmp"))
    (state / "operator-token").write_text(TOKEN + "\n")
    (state / "operator-token").chmod(0o600)
    config = Config(state_dir=state, dashboard_port=0, ensure_manager=False, crash_watch_interval=3600)
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(partial(main, config, web_factory=daemon_app))

        def publish(nonce: str) -> None:
            daemon.bus.publish(AgentNotice(event="bench", agent="bench", note=nonce))

        port = await nursery.start(trigger_port, publish)
        web_port = daemon.dashboard_port()
        print(json.dumps({"web": web_port, "trigger": port}), flush=True)


async def serve_bare() -> None:
    import hypercorn.config
    import hypercorn.trio

    channels: set[trio.MemorySendChannel[bytes]] = set()
    seq = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        sender, receiver = trio.open_memory_channel[bytes](256)
        channels.add(sender)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
            async for frame in receiver:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        finally:
            channels.discard(sender)

    def publish(nonce: str) -> None:
        nonlocal seq
        seq += 1
        # the same fields and size as hivecore's agent_notice frame
        data = {"seq": seq, "event": "bench", "agent": "bench", "note": nonce, "kind": "agent_notice"}
        frame = f"id: {seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        for ch in list(channels):
            try:
                ch.send_nowait(frame)
            except trio.WouldBlock:
                channels.discard(ch)

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(hypercorn.trio.serve, app, config))
        port = await nursery.start(trigger_port, publish)
        web_port = int(urls[0].rsplit(":", 1)[1])
        print(json.dumps({"web": web_port, "trigger": port}), flush=True)


# --- clients ------------------------------------------------------------------------------------------


class Tally:
    """Receipt times per nonce; ``done[nonce]`` is set once every client has it."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.got: dict[str, list[float]] = {}
        self.done: dict[str, trio.Event] = {}

    def expect(self, nonce: str) -> trio.Event:
        return self.done.setdefault(nonce, trio.Event())

    def note(self, nonce: str, at: float) -> None:
        times = self.got.setdefault(nonce, [])
        times.append(at)
        if len(times) == self.clients:
            self.expect(nonce).set()


class Client:
    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def open(self, port: int, path: str, auth: bool) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = f"GET {path} HTTP/1.1\r\nHost: bench\r\n"
        if auth:
            head += f"Authorization: Bearer {TOKEN}\r\n"
        await stream.send_all((head + "\r\n").encode())
        while b": connected" not in self.buf:
            chunk = await stream.receive_some()
            if not chunk:
                raise EOFError("the server closed the stream")
            self.buf += chunk
        self.buf = b""
        self.stream = stream

    async def read(self, tally: Tally) -> None:
        assert self.stream is not None
        while chunk := await self.stream.receive_some(65536):
            now = time.perf_counter()
            self.buf += chunk
            while b"\n\n" in self.buf:
                frame, _, self.buf = self.buf.partition(b"\n\n")
                at = frame.find(b'"note":"')
                if at >= 0:
                    nonce = frame[at + 8 : frame.index(b'"', at + 8)].decode()
                    tally.note(nonce, now)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_one(kind: str, n_clients: int, n_triggers: int) -> dict[str, float]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, cwd=str(ROOT)
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                if not chunk:
                    raise RuntimeError(f"{kind} server exited before it served")
                line += chunk
        ports = json.loads(line)
        await trio.sleep(0.5)  # let the daemon's startup settle before the baseline RSS
        before = rss_kib(proc.pid)
        path = "/api/dashboard/stream?kinds=agent_notice" if kind == "hivecore" else "/sse"
        clients = [Client() for _ in range(n_clients)]
        limiter = trio.CapacityLimiter(50)  # below hypercorn's accept backlog

        async def connect(c: Client) -> None:
            async with limiter:
                await c.open(ports["web"], path, auth=kind == "hivecore")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for c in clients:
                    nursery.start_soon(connect, c)
        await trio.sleep(0.5)
        after = rss_kib(proc.pid)
        tally = Tally(n_clients)
        sent: dict[str, float] = {}
        trigger = await trio.open_tcp_stream("127.0.0.1", ports["trigger"])
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(c.read, tally)
            for i in range(n_triggers):
                nonce = f"n{i}"
                everyone = tally.expect(nonce)
                sent[nonce] = time.perf_counter()
                await trigger.send_all(f"{nonce}\n".encode())
                with trio.fail_after(30):
                    await everyone.wait()
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        await trigger.aclose()
        for c in clients:
            if c.stream is not None:
                await c.stream.aclose()
        latencies = [(t - sent[n]) * 1000 for n, ts in tally.got.items() for t in ts]
        return {
            "p50": pct(latencies, 0.50),
            "p99": pct(latencies, 0.99),
            "kib_per_client": (after - before) / n_clients,
            "samples": len(latencies),
        }
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


async def bench(n_clients: int, n_triggers: int) -> None:
    raise_nofile()
    bare = await run_one("bare", n_clients, n_triggers)
    hive = await run_one("hivecore", n_clients, n_triggers)
    print(f"SSE fan-out: {n_clients} clients on loopback, {n_triggers} triggers (ms; KiB of server RSS)")
    print(f"{'server':<10} {'p50':>8} {'p99':>8} {'KiB/client':>11} {'samples':>8}")
    for name, r in (("bare", bare), ("hivecore", hive)):
        kib, samples = r["kib_per_client"], int(r["samples"])
        print(f"{name:<10} {r['p50']:8.2f} {r['p99']:8.2f} {kib:11.1f} {samples:8d}")
    print(f"ratio      {hive['p50'] / bare['p50']:8.2f} {hive['p99'] / bare['p99']:8.2f}   (goal p50 <= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--triggers", type=int, default=40)
    parser.add_argument("--serve", choices=["hivecore", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.triggers = 10, 3
    if args.clients > MAX_AUTHENTICATED:
        parser.error(
            f"--clients {args.clients}: the daemon serves at most {MAX_AUTHENTICATED} authenticated "
            "dashboard connections at once (hivecore.dashboard_listener.MAX_AUTHENTICATED)"
        )
    if args.serve:
        raise_nofile()
        import logging

        logging.basicConfig(level=logging.WARNING)
        trio.run(serve_hivecore if args.serve == "hivecore" else serve_bare)
        return
    trio.run(bench, args.clients, args.triggers)


if __name__ == "__main__":
    main()
