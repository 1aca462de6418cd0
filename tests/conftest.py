"""Shared fixtures: a running daemon on a short temp state dir, and agent-process cleanup."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import hypothesis
import pytest
import trio

from actors.crash_watch import CrashWatch
from actors.event_bus import EventBus
from actors.rebuild_queue import JobLane
from actors.transients import TransientRegistry
from actors.views import Views
from hivecore import store as st
from hivecore.config import Config, StatePaths
from hivecore.coordinator import Coordinator
from hivecore.runtime.process import ProcessRuntime
from hivecore.store import Store
from tests.nats_server import nats_auth_server as nats_auth_server  # the same with per-hive users
from tests.nats_server import nats_server as nats_server  # the swarm tests' real NATS server
from tests.procs import kill_everything_under
from tests.worker import AGENT_UID_BASE

if TYPE_CHECKING:
    from hivecore.daemon import Daemon

# property tests check what the code answers, never how fast: hypothesis's per-example deadline
# (200 ms by default) fails them at random on a loaded 2-core machine (speed lives in bench/)
hypothesis.settings.register_profile("hivecore", deadline=None)
hypothesis.settings.load_profile("hivecore")


# the startup auto_update (a hyperhive bump and a rebuild of every stale agent) is skipped in the
# suite; tests of it unset this with monkeypatch
os.environ.setdefault("HIVE_SKIP_AUTO_UPDATE", "1")
# every `hive-c0re serve` a test starts hands out this worker's agent uids (tests/worker.py)
os.environ["HIVE_AGENT_UID_BASE"] = str(AGENT_UID_BASE)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short path (Unix socket paths must stay under 108 bytes); agents killed on teardown."""
    path = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
    try:
        yield path
    finally:
        kill_everything_under(path / "run" / "process")
        shutil.rmtree(path, ignore_errors=True)


def make_config(state_dir: Path, **overrides: object) -> Config:
    base: dict[str, object] = {
        "state_dir": state_dir,
        "dashboard_port": 0,
        "stop_timeout": 2.0,
        "ensure_manager": False,
        "agent_uid_base": AGENT_UID_BASE,
    }
    base.update(overrides)
    return Config(**base)  # type: ignore[arg-type]


TEST_TOKEN = "hivetest-operator-token-0123456789"
"""The operator token the ``hive`` fixture's dashboard accepts (written before the daemon starts)."""
AUTH = f"Authorization: Bearer {TEST_TOKEN}\r\n"
"""The header line that authenticates a raw HTTP request to the ``hive`` fixture's dashboard."""


def write_test_token(state_dir: Path) -> None:
    token = state_dir / "operator-token"
    token.write_text(TEST_TOKEN + "\n")
    token.chmod(0o600)


@pytest.fixture
async def hive(state_dir: Path) -> AsyncIterator[Daemon]:
    """A running daemon (real process runtime, real sockets, dashboard on an ephemeral port); its
    dashboard takes :data:`TEST_TOKEN` (send :data:`AUTH`)."""
    from hivecore.daemon import main
    from web.app import daemon_app

    write_test_token(state_dir)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, make_config(state_dir), web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


@attrs.define
class Parts:
    """The daemon's object graph without sockets or HTTP; the store, views and job lane are running
    (crash_watch is not: tests start it when they need it)."""

    daemon: Daemon
    nursery: trio.Nursery

    @property
    def config(self) -> Config:
        return self.daemon.config

    @property
    def bus(self) -> EventBus:
        return self.daemon.bus

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def transients(self) -> TransientRegistry:
        return self.daemon.transients

    @property
    def runtime(self) -> ProcessRuntime:
        assert isinstance(self.daemon.runtime, ProcessRuntime)
        return self.daemon.runtime

    @property
    def coordinator(self) -> Coordinator:
        return self.daemon.coordinator

    @property
    def crash_watch(self) -> CrashWatch:
        return self.daemon.crash_watch

    @property
    def views(self) -> Views:
        return self.daemon.views

    @property
    def lane(self) -> JobLane:
        return self.daemon.lane

    async def inbox(self, recipient: str) -> list[tuple[int, str, str]]:
        return await self.store.call(lambda c: st.undelivered_for(c, recipient))


async def start_parts(config: Config, nursery: trio.Nursery) -> Parts:
    """Build the object graph and start the store, views and job lane in ``nursery``."""
    from hivecore.daemon import build

    config.paths.create_layout()
    daemon = build(config)
    await nursery.start(daemon.store.run)
    await nursery.start(daemon.views.run)
    await nursery.start(daemon.meta.run)
    await nursery.start(daemon.lane.run)
    return Parts(daemon, nursery)


@pytest.fixture
async def parts(state_dir: Path) -> AsyncIterator[Parts]:
    config = make_config(state_dir, crash_watch_interval=10.0)
    async with trio.open_nursery() as nursery:
        yield await start_parts(config, nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
def paths(state_dir: Path) -> StatePaths:
    """The state layout under /tmp (``state_dir``): a root daemon's agents run as their own uids and
    must reach it."""
    p = StatePaths(state_dir)
    p.create_layout()
    return p


@pytest.fixture
def runtime(paths: StatePaths) -> Iterator[ProcessRuntime]:
    """The process runtime alone; every process it started is killed at the end."""
    try:
        # generous: a graceful stop's outcome must not depend on how loaded the machine is
        yield ProcessRuntime(paths, stop_timeout=10)
    finally:
        kill_everything_under(paths.run_process)


async def start_hub(state_dir: Path, nursery: trio.Nursery) -> Parts:
    """:func:`start_parts` plus the broker, the agent sockets and the manager socket; agents
    ``coder`` and ``tester`` exist, stopped (no harness reads their inboxes but the test), their
    sockets bound."""
    config = make_config(state_dir, crash_watch_interval=3600.0)
    parts = await start_parts(config, nursery)
    d = parts.daemon
    await nursery.start(d.broker.run)
    await nursery.start(d.agent_sockets.run)
    await nursery.start(d.manager_socket.run)
    for name in ("coder", "tester"):
        await d.coordinator.spawn(name)
        await d.coordinator.stop(name)
    with trio.fail_after(10):
        await d.agent_sockets.wait_for(lambda a: a.bound() == ["coder", "tester"])
    return parts


async def call(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request on a fresh connection to the socket at ``path`` (10 s at most)."""
    from hivecore.harness import Channel

    chan = await Channel.open(path)
    try:
        with trio.fail_after(10):
            return await chan.call(request)
    finally:
        await chan.aclose()
