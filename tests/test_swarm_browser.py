"""The swarm view in a real Chromium (docs/swarm.md "Events"): hive alpha is a daemon with
``--swarm`` on a real ``nats-server -js``, hive beta a swarm link whose rows the test sets; alpha's
page groups beta's agents under beta, live, shows another hive's markup as text, resyncs after its
stream drops, and turns beta unreachable within the heartbeat TTL, all on one ``/api/state``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from actors.swarm_link import SwarmLink
from hivecore import swarm as sw
from hivecore.daemon import Daemon
from hivecore.models import ContainerView
from tests.conftest import make_config, write_test_token
from tests.nats_server import NatsServer
from tests.test_dashboard_browser import BrowserThread, browser, chromium, pytestmark  # noqa: F401
from tests.test_swarm_link import RowsStandIn, roots, running  # noqa: F401
from tests.waiting import eventually

TTL = 2.0
EVIL = "<img src=x onerror=window.pwned=1> rm -rf"


@pytest.fixture
async def alpha(state_dir: Path, nats_server: NatsServer) -> AsyncIterator[Daemon]:
    from hivecore.daemon import main
    from web.app import daemon_app

    write_test_token(state_dir)
    settings = sw.SwarmSettings(url=nats_server.url, hive_name="alpha", heartbeat_ttl=TTL)
    config = make_config(state_dir, swarm=settings)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


async def test_another_hives_agents_show_grouped_under_it_live_as_text_and_turn_unreachable(
    alpha: Daemon,
    browser: BrowserThread,  # noqa: F811
    nats_server: NatsServer,
    roots: Callable[[], Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    views = RowsStandIn()
    views.set("hm1nd", ContainerView(name="hm1nd", container="hm1nd", is_manager=True, running=True))
    views.set("coder", ContainerView(name="coder", container="h-coder", running=True, status_text=EVIL))
    settings = sw.SwarmSettings(url=nats_server.url, hive_name="beta", heartbeat_ttl=TTL)
    beta = SwarmLink(settings, views, roots())  # type: ignore[arg-type]
    base = alpha.dashboard_urls[0]
    coder = "#swarm-hives .hive.reachable[data-hive='beta'] .row.running[data-name='coder']"
    async with trio.open_nursery() as nursery:
        with trio.fail_after(120):
            scope = await running(nursery, beta)
            link = alpha.swarm
            assert link is not None
            await eventually(lambda: link.state == "connected" and beta.state == "connected", 20)
            page = await browser.new_page(base)
            await browser.run(lambda: page.wait_for_selector(coder))
            assert await browser.run(lambda: page.inner_text("#swarm-local .name")) == "alpha"
            text = await browser.run(lambda: page.inner_text(f"{coder} .status-text"))
            assert text == EVIL
            assert (
                await browser.run(lambda: page.evaluate("document.querySelectorAll('#swarm img').length"))
                == 0
            )
            assert await browser.run(lambda: page.evaluate("window.pwned === undefined"))
            # live: a new agent on beta, a changed one
            views.set("writer", ContainerView(name="writer", container="h-writer"))
            await browser.run(
                lambda: page.wait_for_selector(
                    "#swarm-hives [data-hive='beta'] .row.stopped[data-name='writer']"
                )
            )
            # beta's pending approvals: a count on its head (approved on beta); alpha counts its own
            beta.set_pending_approvals(2)
            await browser.run(
                lambda: page.wait_for_selector(
                    "#swarm-hives [data-hive='beta'] .chip.approvals:has-text('2 approvals')"
                )
            )
            await eventually(lambda: link.pending_approvals == 0, 10)
            await browser.run(lambda: page.locator("#swarm").screenshot(path=str(tmp_path / "swarm.png")))
            # the stream drops; what changes meanwhile comes back with the new stream's swarm_state
            assert alpha.dashboard_app.hive_drop_streams() >= 1
            views.set("writer", None)
            views.set(
                "coder", ContainerView(name="coder", container="h-coder", running=False, status_text="idle")
            )
            await browser.run(
                lambda: page.wait_for_selector(
                    "#swarm-hives [data-hive='beta'] .row.stopped[data-name='coder']"
                )
            )
            await browser.run(
                lambda: page.wait_for_selector("#swarm-hives [data-name='writer']", state="detached")
            )
            await browser.run(lambda: page.wait_for_selector("#status.live"))
            names = await browser.run(
                lambda: page.eval_on_selector_all(
                    "#swarm-hives [data-hive='beta'] .row", "rs => rs.map(r => r.dataset.name)"
                )
            )
            assert names == ["coder", "hm1nd"]
            # beta stops heartbeating: unreachable on the open page within the TTL, without a reload
            scope.cancel()
            stopped = time.monotonic()
            await browser.run(
                lambda: page.wait_for_selector("#swarm-hives .hive.unreachable[data-hive='beta']")
            )
            assert time.monotonic() - stopped <= TTL + 1.5
            assert len(browser.state_requests) == 1
            assert browser.console_errors == []
        nursery.cancel_scope.cancel()
