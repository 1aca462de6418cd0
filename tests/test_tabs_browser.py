"""The dashboard's tabs in a real Chromium (issue 18 item 8): the hash selects the tab (unknown or
empty → SW4RM), clicks and the arrow keys move between tabs, back/forward walk them, the pills count
live while their tab is hidden (an approval over SSE bumps Y3R C4LL's pill on another tab), and
switching never fetches: still exactly one ``/api/state`` per page session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from hivecore.daemon import Daemon
from tests.conftest import call
from tests.test_dashboard_browser import (  # noqa: F401  # fixtures
    BrowserThread,
    browser,
    chromium,
    live,
    open_tab,
    pytestmark,
)
from tests.test_e2e_approval import host

if TYPE_CHECKING:
    from playwright.sync_api import Page

TABS = "[...document.querySelectorAll('#tabs [role=tab]')]"
SELECTED = f"""() => ({{
    selected: {TABS}.filter(b => b.getAttribute('aria-selected') === 'true').map(b => b.dataset.tab),
    shown: [...document.querySelectorAll('[role=tabpanel]')].filter(p => !p.hidden).map(p => p.id),
}})"""
HELD = f"""() => Object.fromEntries({TABS}.map(b => [
    b.dataset.tab,
    [...document.getElementById(b.getAttribute('aria-controls')).children].map(s => s.id),
]))"""
LOOSE = "document.querySelectorAll('main section:not([role=tabpanel] > section)').length"
STRIP_IN = "document.getElementById('warnings').closest('header, [role=tabpanel]').tagName"
TAB_STOPS = f"{TABS}.filter(b => b.tabIndex === 0).map(b => b.id)"


async def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


def selected(page: Page) -> str:
    """The tab the page shows: the one selected tab, whose panel alone is visible."""
    state: dict[str, Any] = page.evaluate(SELECTED)
    tab: str
    [tab] = state["selected"]
    assert state["shown"] == [f"tabpanel-{tab}"], state
    return tab


def pill(page: Page, tab: str, count: int) -> None:
    """Wait until tab ``tab``'s pill shows ``count``."""
    page.wait_for_function(
        "([tab, n]) => document.getElementById(`tab-pill-${tab}`).textContent === String(n)", arg=[tab, count]
    )


async def test_tabs_route_by_hash_count_live_and_walk_history(
    live: Daemon,  # noqa: F811 (a fixture imported above)
    browser: BrowserThread,  # noqa: F811
) -> None:
    base = live.dashboard_urls[0]
    msock = live.config.manager_socket_path
    with trio.fail_after(180):
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        page = await browser.new_page(base)

        # the nav is built from the sections: each tab holds the sections that name it
        held: dict[str, list[str]] = await browser.run(lambda: page.evaluate(HELD))
        assert list(held)[:5] == ["swarm", "call", "system", "schedules", "flow"], held
        assert held["swarm"] == ["swarm"]
        assert held["call"] == ["call"]
        assert held["system"] == ["kept", "meta", "queue", "health"]
        assert held["schedules"] == ["schedules", "reminders"]
        assert held["flow"] == ["flow", "inbox"]
        assert await browser.run(lambda: page.evaluate(LOOSE)) == 0  # every section is on a tab
        # the warning strip is in the header, outside every tab
        assert await browser.run(lambda: page.evaluate(STRIP_IN)) == "HEADER"

        # no hash: SW4RM; a hash selects its tab; an unknown one falls back to SW4RM
        assert await browser.run(lambda: selected(page)) == "swarm"
        assert await browser.run(lambda: page.is_visible("#containers .row[data-name='coder']"))
        await browser.run(lambda: page.evaluate("location.hash = '#schedules'"))
        await browser.run(lambda: page.wait_for_selector("#schedule-form", state="visible"))
        assert await browser.run(lambda: selected(page)) == "schedules"
        assert await browser.run(lambda: page.is_hidden("#containers"))
        await browser.run(lambda: page.evaluate("location.hash = '#no-such-tab'"))
        await browser.run(lambda: page.wait_for_selector("#containers", state="visible"))
        assert await browser.run(lambda: selected(page)) == "swarm"

        # clicks push history: back and forward walk the tabs
        await browser.run(lambda: open_tab(page, "system"))
        await browser.run(lambda: open_tab(page, "call"))
        assert await browser.run(lambda: page.evaluate("location.hash")) == "#call"
        await browser.run(lambda: page.go_back())
        await browser.run(lambda: page.wait_for_selector("#tabpanel-system", state="visible"))
        assert await browser.run(lambda: selected(page)) == "system"
        await browser.run(lambda: page.go_back())  # #no-such-tab
        await browser.run(lambda: page.wait_for_selector("#tabpanel-swarm", state="visible"))
        await browser.run(lambda: page.go_forward())
        await browser.run(lambda: page.wait_for_selector("#tabpanel-system", state="visible"))
        assert await browser.run(lambda: selected(page)) == "system"

        # the keyboard: the selected tab alone is in the tab order; arrows, Home and End move
        order = list(held)
        stops = await browser.run(lambda: page.evaluate(TAB_STOPS))
        assert stops == ["tab-system"]
        await browser.run(lambda: page.focus("#tab-system"))
        await browser.run(lambda: page.keyboard.press("ArrowRight"))
        assert await browser.run(lambda: selected(page)) == "schedules"
        assert await browser.run(lambda: page.evaluate("document.activeElement.id")) == "tab-schedules"
        await browser.run(lambda: page.keyboard.press("End"))
        assert await browser.run(lambda: selected(page)) == order[-1]
        await browser.run(lambda: page.keyboard.press("Home"))
        assert await browser.run(lambda: selected(page)) == "swarm"
        await browser.run(lambda: page.keyboard.press("ArrowLeft"))  # wraps to the last
        assert await browser.run(lambda: selected(page)) == order[-1]
        await browser.run(lambda: page.go_back())  # the keys pushed history too
        await browser.run(lambda: page.wait_for_selector("#tabpanel-swarm", state="visible"))

        # the pills count live, on whatever tab the page shows
        await browser.run(lambda: open_tab(page, "system"))
        swarm_count = await browser.run(lambda: page.inner_text("#swarm-count"))
        await browser.run(lambda: pill(page, "swarm", int(swarm_count)))
        await browser.run(lambda: pill(page, "call", 0))
        await ok(await call(msock, {"cmd": "request_spawn", "name": "scout"}))  # an approval over SSE
        await browser.run(lambda: pill(page, "call", 1))
        await ok(await call(msock, {"cmd": "ask_operator", "question": "lunch?"}))  # an open question
        await browser.run(lambda: pill(page, "call", 2))
        await ok(await call(msock, {"cmd": "send", "to": "operator", "body": "look at me"}))  # unread
        await browser.run(lambda: pill(page, "call", 3))
        await browser.run(lambda: pill(page, "flow", 1))
        assert await browser.run(lambda: selected(page)) == "system"
        assert await browser.run(lambda: page.is_hidden("#approvals"))
        # reading the inbox (its tab shown) reads the message: both pills drop it
        await browser.run(lambda: open_tab(page, "flow"))
        await browser.run(lambda: pill(page, "flow", 0))
        await browser.run(lambda: pill(page, "call", 2))
        await browser.run(lambda: open_tab(page, "call"))
        scout = "#approvals .card.pending:has-text('scout')"
        await browser.run(lambda: page.wait_for_selector(scout, state="visible"))
        assert browser.state_requests == [f"{base}/api/state"], browser.state_requests

        # a fresh page session on a hash opens on that tab, with its own one snapshot; a message
        # read in the last session stays read
        await browser.run(lambda: page.evaluate("location.hash = '#schedules'"))
        await browser.run(lambda: page.reload())
        await browser.run(lambda: page.wait_for_selector("body[data-ready='1']"))
        assert await browser.run(lambda: selected(page)) == "schedules"
        await browser.run(lambda: pill(page, "call", 2))
        await browser.run(lambda: pill(page, "flow", 0))
    assert browser.state_requests == [f"{base}/api/state"] * 2, browser.state_requests
    assert browser.console_errors == []


EXTRA = (
    '<section id="extra" data-tab-count="extra-count">'
    '<h2>◆ 3XTR4 ◆ <span class="pill" id="extra-count">4</span></h2></section>'
    '<section id="joined" data-tab="system"><h2>◆ J01N3D ◆</h2></section></main>'
)


async def test_a_section_added_to_the_page_gets_a_tab_with_no_script_change(
    live: Daemon,  # noqa: F811 (a fixture imported above)
    browser: BrowserThread,  # noqa: F811
) -> None:
    """The nav is built from the sections the page has: one without ``data-tab`` gets a tab of its
    own (routed by its id, labelled by its heading, its pill from ``data-tab-count``); one naming a
    tab joins it. The page is served as is, with two sections spliced in on the way."""
    from tests.conftest import TEST_TOKEN

    base = live.dashboard_urls[0]

    def load() -> Page:
        context = browser.browser.new_context()
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: browser.console_errors.append(str(e)))

        def splice(route: Any) -> None:
            response = route.fetch()
            route.fulfill(response=response, body=response.text().replace("</main>", EXTRA))

        page.route(lambda url: url.split("#")[0].rstrip("/") == base.rstrip("/"), splice)
        page.goto(f"{base}/login#token={TEST_TOKEN}")
        page.wait_for_selector("body[data-ready='1']")
        return page

    with trio.fail_after(120):
        page = await browser.run(load)
        held: dict[str, list[str]] = await browser.run(lambda: page.evaluate(HELD))
        assert held["extra"] == ["extra"], held
        assert held["system"][-1] == "joined", held
        assert await browser.run(lambda: page.inner_text("#tab-extra")) == "◆ 3XTR4 ◆ 4"
        await browser.run(lambda: page.evaluate("location.hash = '#extra'"))
        await browser.run(lambda: page.wait_for_selector("#extra", state="visible"))
        assert await browser.run(lambda: selected(page)) == "extra"
        await browser.run(lambda: page.evaluate("document.getElementById('extra-count').textContent = '5'"))
        await browser.run(lambda: pill(page, "extra", 5))
    assert browser.console_errors == []
