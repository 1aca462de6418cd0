"""``hive-c0re serve``: build the actors, start them under the supervisor, serve until cancelled.

Ownership: :func:`main` owns one nursery holding the supervisor; the supervisor owns every actor's
task. Cancelling :func:`main` (SIGINT/SIGTERM in the CLI) cancels the whole tree; the event bus
closes every subscription on its way out and the socket actors unlink their socket files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from actors.crash_watch import CrashWatch
from actors.event_bus import EventBus
from actors.supervisor import ChildSpec, Supervisor
from actors.transients import TransientRegistry
from hivecore.config import Config
from hivecore.coordinator import Coordinator
from hivecore.runtime.base import ContainerRuntime
from hivecore.sockets.host import HostSocket, live_urls
from hivecore.statelock import hold_state_lock
from hivecore.store import Store
from web.app import create_app

log = logging.getLogger(__name__)


@attrs.define
class Daemon:
    """Handles to a running daemon (tests and the CLI use them)."""

    config: Config
    bus: EventBus
    coordinator: Coordinator
    supervisor: Supervisor
    crash_watch: CrashWatch
    dashboard_urls: list[str] = attrs.field(factory=list)


def make_runtime(config: Config) -> ContainerRuntime:
    if config.runtime == "nixos":
        from hivecore.runtime.nixos import NixosRuntime

        return NixosRuntime(config.paths, meta_dir=config.paths.meta)
    from hivecore.runtime.process import ProcessRuntime

    return ProcessRuntime(config.paths, stop_timeout=config.stop_timeout)


async def main(config: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled; ``task_status.started(Daemon)`` once every actor serves."""
    paths = config.paths
    paths.create_layout()
    with hold_state_lock(paths.lock_file), _log_stop():
        log.info("state dir %s (runtime %s)", paths.root, config.runtime)
        bus = EventBus()
        store = Store(paths.db)
        transients = TransientRegistry(bus)
        coordinator = Coordinator(config, bus, store, transients, make_runtime(config))
        crash_watch = CrashWatch(coordinator, config.crash_watch_interval)
        supervisor = Supervisor(bus)
        daemon = Daemon(config, bus, coordinator, supervisor, crash_watch)
        admin = HostSocket(
            coordinator,
            bus,
            config.host_socket_path,
            group=config.admin_group,
            urls=live_urls(
                config.domain,
                config.dashboard_host,
                config.dashboard_port,
                # the dashboard's real address (port 0 binds an ephemeral port) once it is serving
                lambda: daemon.dashboard_urls[0] + "/" if daemon.dashboard_urls else None,
            ),
        )

        async def serve_web(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            hc = hypercorn.config.Config()
            hc.bind = [f"{config.dashboard_host}:{config.dashboard_port}"]
            hc.graceful_timeout = 2.0
            hc.accesslog = None
            hc.errorlog = logging.getLogger("hypercorn.error")
            app = create_app(coordinator, bus, supervisor)
            async with trio.open_nursery() as nursery:
                urls = await nursery.start(partial(hypercorn.trio.serve, app, hc))
                daemon.dashboard_urls = list(urls)
                log.info("dashboard on %s", ", ".join(urls))
                task_status.started()

        children = [
            ChildSpec("event_bus", bus.run),
            ChildSpec("store", store.run),
            ChildSpec("crash_watch", crash_watch.run),
            ChildSpec("host_socket", admin.run),
            ChildSpec("dashboard", serve_web),
        ]
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run, children)
            log.info("hive-c0re serving (%d actors)", len(children))
            task_status.started(daemon)


@contextlib.contextmanager
def _log_stop() -> Iterator[None]:
    try:
        yield
    finally:
        log.info("hive-c0re stopped (agents keep running; the next serve re-adopts them)")
