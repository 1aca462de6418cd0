"""Shared fixtures: a running daemon on a short temp state dir, and agent-process cleanup."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

from actors.crash_watch import CrashWatch
from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from hivecore import store as st
from hivecore.config import Config
from hivecore.coordinator import Coordinator
from hivecore.runtime.process import ProcessRuntime
from hivecore.store import Store
from tests.procs import kill_everything_under

if TYPE_CHECKING:
    from hivecore.daemon import Daemon


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short path (Unix socket paths must stay under 108 bytes); agents killed on teardown."""
    path = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
    try:
        yield path
    finally:
        kill_everything_under(path / "run" / "agents")
        shutil.rmtree(path, ignore_errors=True)


def make_config(state_dir: Path, **overrides: object) -> Config:
    base: dict[str, object] = {"state_dir": state_dir, "dashboard_port": 0, "stop_timeout": 2.0}
    base.update(overrides)
    return Config(**base)  # type: ignore[arg-type]


@pytest.fixture
async def hive(state_dir: Path) -> AsyncIterator[Daemon]:
    """A running daemon (real process runtime, real sockets, dashboard on an ephemeral port)."""
    from hivecore.daemon import main

    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(main, make_config(state_dir))
        yield daemon
        nursery.cancel_scope.cancel()


@attrs.define
class Parts:
    """The daemon's object graph without sockets or HTTP; the store actor is running."""

    config: Config
    bus: EventBus
    store: Store
    transients: TransientRegistry
    runtime: ProcessRuntime
    coordinator: Coordinator
    crash_watch: CrashWatch
    nursery: trio.Nursery

    async def inbox(self, recipient: str) -> list[tuple[int, str, str]]:
        return await self.store.call(lambda c: st.undelivered_for(c, recipient))


@pytest.fixture
async def parts(state_dir: Path) -> AsyncIterator[Parts]:
    config = make_config(state_dir, crash_watch_interval=10.0)
    config.paths.create_layout()
    bus = EventBus()
    store = Store(config.paths.db)
    transients = TransientRegistry(bus)
    runtime = ProcessRuntime(config.paths, stop_timeout=config.stop_timeout)
    coordinator = Coordinator(config, bus, store, transients, runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield Parts(
            config,
            bus,
            store,
            transients,
            runtime,
            coordinator,
            CrashWatch(coordinator, config.crash_watch_interval),
            nursery,
        )
        nursery.cancel_scope.cancel()
