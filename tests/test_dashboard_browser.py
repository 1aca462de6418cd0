"""The dashboard in a real Chromium (Debian's /usr/bin/chromium driven by playwright).

The page logs in and watches while the test changes the world through host.sock, the manager
socket and the runtime; every change must reach the DOM without a reload, and the page must make
exactly one ``/api/state`` request in its whole session. Waits are playwright's DOM waits, bounded.
Screenshots land under the test's tmp dir.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import trio

from hivecore.daemon import Daemon
from tests.conftest import TEST_TOKEN, call, make_config, write_test_token
from tests.test_approvals import BROKEN_NIX, commit, sonnet
from tests.test_e2e_approval import host
from tests.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
WAIT_MS = 30_000

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not os.access(CHROMIUM, os.X_OK),
    reason=f"needs playwright (dev extra) and {CHROMIUM} (apt-get install chromium)",
)
T = TypeVar("T")


class BrowserThread:
    """Sync playwright on one dedicated thread (its objects belong to the thread that made them);
    the trio test hands it callables and awaits their results."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._serve, name="playwright", daemon=True)
        self.state_requests: list[str] = []
        self.dialog_answers: list[str] = []
        self.dialog_messages: list[str] = []
        """Every dialog's text, in order (confirms included)."""
        self.console_errors: list[str] = []
        self.failed_responses: list[tuple[int, str]] = []

    def _serve(self) -> None:
        assert sync_playwright is not None
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            self.browser = browser
            try:
                while (job := self._jobs.get()) is not None:
                    fn, reply = job
                    try:
                        reply.put((True, fn()))
                    except BaseException as exc:
                        reply.put((False, exc))
            finally:
                browser.close()

    def start(self) -> None:
        self._thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = await trio.to_thread.run_sync(reply.get, abandon_on_cancel=True)
        if not ok:
            raise value
        result: T = value
        return result

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        """Whether the thread serves and its Chromium is still connected."""
        return self._thread.is_alive() and self.call(lambda: self.browser.is_connected())

    def call(self, fn: Callable[[], T], timeout: float = 60.0) -> T:
        """:meth:`run` for synchronous callers (fixtures): blocks up to ``timeout`` s."""
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        result: T = value
        return result

    def begin_test(self) -> None:
        """Forget what the previous test's pages recorded (each test opens its own contexts)."""
        self.state_requests = []
        self.dialog_answers = []
        self.dialog_messages = []
        self.console_errors = []
        self.failed_responses = []

    def end_test(self) -> None:
        """Close every context the test opened (its pages with them): the next test starts on a
        browser with none, as a freshly launched one would."""

        def close_all() -> None:
            for context in self.browser.contexts:
                context.close()

        self.call(close_all)

    async def new_page(self, base: str, init_script: str | None = None) -> Page:
        await self.run(lambda: None)  # the browser is up

        def make() -> Page:
            context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
            if init_script is not None:
                context.add_init_script(init_script)
            page = context.new_page()
            page.on("request", lambda r: self._seen(r.url))
            page.on("dialog", self._answer)
            page.on("response", lambda r: self._status(r.url, r.status))
            page.on("pageerror", lambda e: self.console_errors.append(str(e)))
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base}/login#token={TEST_TOKEN}")
            page.wait_for_selector("body[data-ready='1']")
            return page

        return await self.run(make)

    def _status(self, url: str, status: int) -> None:
        if status >= 400:
            self.failed_responses.append((status, url))

    def _seen(self, url: str) -> None:
        if urlsplit(url).path == "/api/state":  # not /api/state-file (the state-file viewer)
            self.state_requests.append(url)

    def _answer(self, dialog: Any) -> None:
        self.dialog_messages.append(dialog.message)
        if dialog.type == "prompt":
            dialog.accept(self.dialog_answers.pop(0) if self.dialog_answers else "")
        else:
            dialog.accept()


@pytest.fixture(scope="session")
def chromium() -> Iterator[list[BrowserThread]]:
    """One Chromium per xdist worker (a launch costs ~3 s); :func:`browser` relaunches it if a test
    left it disconnected."""
    box: list[BrowserThread] = []
    try:
        yield box
    finally:
        for b in box:
            b.stop()


@pytest.fixture
def browser(chromium: list[BrowserThread]) -> Iterator[BrowserThread]:
    """The worker's Chromium, with no context open and nothing recorded yet."""
    if chromium and not chromium[0].alive():
        chromium.pop().stop()
    if not chromium:
        b = BrowserThread()
        b.start()
        chromium.append(b)
    b = chromium[0]
    b.begin_test()
    try:
        yield b
    finally:
        b.end_test()


@pytest.fixture
async def live(state_dir: Path) -> AsyncIterator[Daemon]:
    """A daemon whose crash_watch polls quickly (a process killed by hand shows up within a second)."""
    from hivecore.daemon import main
    from web.app import daemon_app

    write_test_token(state_dir)
    config = make_config(state_dir, crash_watch_interval=0.3)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


def open_tab(page: Page, tab: str) -> None:
    """Click tab ``tab`` (``swarm``, ``call``, ``system``, …) as the operator would; its panel shows."""
    page.click(f"#tab-{tab}")
    page.wait_for_selector(f"#tabpanel-{tab}", state="visible")


def tab_of(page: Page, element_id: str) -> str:
    """The tab whose panel holds the element with id ``element_id``."""
    tab: str = page.evaluate(
        "id => document.getElementById(id).closest('[role=tabpanel]').id.replace('tabpanel-', '')",
        element_id,
    )
    return tab


def shot(page: Page, out: Path, section: str) -> None:
    open_tab(page, tab_of(page, section))
    page.locator(f"#{section}").screenshot(path=str(out / f"{section}.png"))


async def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


async def test_the_page_follows_the_world_on_one_snapshot(
    live: Daemon, browser: BrowserThread, tmp_path: Path
) -> None:
    base = live.dashboard_urls[0]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with trio.fail_after(240):
        page = await browser.new_page(base)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        # spawn over host.sock
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        await browser.run(wait("#containers .row.running[data-name='coder']"))
        # stop and start over host.sock
        await ok(await host(live, {"cmd": "stop", "scope": {"agent_names": ["coder"]}}))
        await browser.run(wait("#containers .row.stopped[data-name='coder']"))
        await ok(await host(live, {"cmd": "start", "scope": {"agent_names": ["coder"]}}))
        await browser.run(wait("#containers .row.running[data-name='coder']"))
        # a process killed by hand: crash_watch notices, the row follows
        pid = (await live.runtime.list())["coder"].pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        await browser.run(wait("#containers .row[data-name='coder']:not(.running):not(.pending)"))
        await ok(await host(live, {"cmd": "start", "scope": {"agent_names": ["coder"]}}))
        await browser.run(wait("#containers .row.running[data-name='coder']"))

        # a POST from the page without the CSRF token is refused and changes nothing
        status = await browser.run(
            lambda: page.evaluate("fetch('/stop/coder', {method: 'POST'}).then(r => r.status)")
        )
        assert status == 403
        assert live.coordinator.views()["coder"].running

        # messages: the manager writes to the operator (markup stays text)
        evil = "<img src=x onerror=window.pwned=1> hi operator"
        await ok(await call(live.config.manager_socket_path, {"cmd": "send", "to": "operator", "body": evil}))
        await browser.run(wait("#operator-inbox .msg"))
        inbox = await browser.run(lambda: page.inner_text("#operator-inbox"))
        assert evil in inbox
        assert await browser.run(lambda: page.evaluate("document.querySelectorAll('#inbox img').length")) == 0
        # the compose box sends to an agent (on the FL0W tab)
        await browser.run(lambda: open_tab(page, "flow"))
        await browser.run(lambda: page.fill("#compose input[name=to]", "@coder"))
        await browser.run(lambda: page.fill("#compose input[name=body]", "hello from the page"))
        await browser.run(lambda: page.click("#compose button[type=submit]"))
        await browser.run(wait("#messages .msg:has-text('hello from the page')"))

        # an apply_commit asked by the manager, approved from the page
        proposed = live.config.paths.agent_config("coder")
        sha = await commit(proposed, {"agent.nix": sonnet()}, "use sonnet")
        asked = await ok(
            await call(
                live.config.manager_socket_path,
                {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha, "description": "sonnet"},
            )
        )
        aid = asked["approval_id"]
        card = f"#approvals .card.pending[data-id='{aid}']"
        await browser.run(lambda: open_tab(page, "call"))
        await browser.run(wait(card))
        diff = await browser.run(lambda: page.inner_text(f"{card} pre.diff"))
        assert 'model = "sonnet"' in diff
        # the stored review: the complete file list and the commit message
        files = await browser.run(lambda: page.inner_text(f"{card} ul.file-list"))
        assert "agent.nix" in files
        message = await browser.run(lambda: page.inner_text(f"{card} pre.message"))
        assert f"commit {sha}" in message
        assert "use sonnet" in message
        await browser.run(lambda: shot(page, shots, "call"))
        await browser.run(lambda: page.click(f"{card} button.approve"))
        # the toast first: it lives 4 s from the POST's answer, which under load can come well before
        # the card leaves (the approval's event); waited for second, it could be gone already
        await browser.run(wait(".toast.ok:has-text('approved')"))
        await browser.run(wait(card, "detached"))
        assert [a.status for a in await live.coordinator.approvals() if a.id == aid] == ["approved"]
        # the rebuild queue shows the finished job
        await browser.run(wait("#jobs .job.done:has-text('apply_commit')"))

        # another one, denied from the page with a note
        sha2 = await commit(proposed, {"agent.nix": sonnet("haiku")}, "use haiku")
        asked = await ok(
            await call(
                live.config.manager_socket_path,
                {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": sha2},
            )
        )
        aid2 = asked["approval_id"]
        card2 = f"#approvals .card.pending[data-id='{aid2}']"
        await browser.run(wait(card2))
        browser.dialog_answers.append("not haiku")
        await browser.run(lambda: page.click(f"{card2} button.danger"))
        await browser.run(wait(card2, "detached"))
        denied = [a for a in await live.coordinator.approvals() if a.id == aid2]
        assert [(a.status, a.note) for a in denied] == [("denied", "not haiku")]
        await browser.run(lambda: page.click("#approvals-toggle"))
        await browser.run(wait(f"#approvals .card.denied[data-id='{aid2}']"))
        await browser.run(lambda: page.click("#approvals-toggle"))

        # a spawn requested from the page's form
        await browser.run(lambda: page.fill("#spawn-form input[name=name]", "scout"))
        await browser.run(lambda: page.click("#spawn-form button[type=submit]"))
        await browser.run(wait("#approvals .card.pending:has-text('scout')"))
        shown = await browser.run(
            lambda: page.inner_text("#approvals .card.pending:has-text('scout') details.agent-nix pre")
        )
        assert "hive.agent" in shown  # the agent.nix this spawn deploys

        await browser.run(
            lambda: [shot(page, shots, s) for s in ("swarm", "flow", "inbox", "queue", "health")]  # type: ignore[func-returns-value]
        )
        await browser.run(lambda: page.screenshot(path=str(shots / "dashboard.png"), full_page=True))

        # destroy over host.sock: the row goes, a tombstone comes; purge: it goes too
        await ok(await host(live, {"cmd": "destroy", "name": "coder"}))
        await browser.run(wait("#containers .row[data-name='coder']", "detached"))
        await browser.run(wait("#tombstones .row[data-name='coder']"))
        await browser.run(lambda: shot(page, shots, "kept"))
        await ok(await host(live, {"cmd": "purge_tombstone", "name": "coder"}))
        await browser.run(wait("#tombstones .row[data-name='coder']", "detached"))

        meta_update = getattr(live.coordinator, "meta_update", None)
        if meta_update is not None:  # arrives with the meta flake work
            await meta_update(["hyperhive"], source="host_sock")
            await browser.run(wait("#jobs .job:has-text('meta_update')"))
        await browser.run(lambda: shot(page, shots, "meta"))
        await browser.run(lambda: page.screenshot(path=str(shots / "system.png"), full_page=True))

    assert browser.state_requests == [f"{base}/api/state"], browser.state_requests
    assert not browser.console_errors, browser.console_errors
    assert browser.failed_responses == [(403, f"{base}/stop/coder")]  # only the POST without CSRF
    assert await browser.run(lambda: page.evaluate("window.pwned === undefined"))
    if os.environ.get("HIVE_SCREENSHOT_TO"):
        shutil.copy(shots / "dashboard.png", os.environ["HIVE_SCREENSHOT_TO"])


async def test_the_purge_checkbox_survives_row_redraws_and_the_confirmation_says_what_goes(
    live: Daemon, browser: BrowserThread
) -> None:
    """Issue 16: the row redrew from every event and lost the tick; destroy asked the same question
    with and without purge. Also: under the process runtime no row shows a web-UI port."""
    base = live.dashboard_urls[0]
    with trio.fail_after(240):
        page = await browser.new_page(base)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        for name in ("keep", "gone"):
            await ok(await host(live, {"cmd": "spawn", "name": name}))
            await browser.run(wait(f"#containers .row.running[data-name='{name}']"))
        assert await browser.run(lambda: page.locator("#containers .port").count()) == 0

        box = "#containers .row[data-name='gone'] input[name=purge]"
        await browser.run(lambda: page.check(box))
        # events redraw the row: pause (a badge appears), then resume
        await ok(await host(live, {"cmd": "set_paused", "name": "gone", "paused": True}))
        await browser.run(wait("#containers .row[data-name='gone'] .badge.paused"))
        assert await browser.run(lambda: page.is_checked(box))
        await ok(await host(live, {"cmd": "set_paused", "name": "gone", "paused": False}))
        await browser.run(wait("#containers .row[data-name='gone'] .badge.paused", "detached"))
        assert await browser.run(lambda: page.is_checked(box))
        assert not await browser.run(
            lambda: page.is_checked("#containers .row[data-name='keep'] input[name=purge]")
        )

        # destroy without purge: the question says the state is kept, and it is
        await browser.run(
            lambda: page.click("#containers .row[data-name='keep'] form[action='/destroy/keep'] button")
        )
        await browser.run(wait("#containers .row[data-name='keep']", "detached"))
        await browser.run(wait("#tombstones .row[data-name='keep']"))
        kept_question = browser.dialog_messages[-1]
        assert "KEPT" in kept_question
        assert "DELETE" not in kept_question
        # with purge: the question names what is deleted, and nothing is kept
        await browser.run(
            lambda: page.click("#containers .row[data-name='gone'] form[action='/destroy/gone'] button")
        )
        await browser.run(wait(".toast.ok:has-text('gone destroyed and purged')"))  # first: see above
        await browser.run(wait("#containers .row[data-name='gone']", "detached"))
        purge_question = browser.dialog_messages[-1]
        assert "PURGE" in purge_question
        assert "DELETES agents/gone/" in purge_question
        assert "applied/gone/" in purge_question
        assert "No undo" in purge_question
        assert not live.config.paths.agent_dir("gone").exists()
        assert live.config.paths.agent_dir("keep").exists()
        # a new agent under the purged name starts unticked
        await ok(await host(live, {"cmd": "spawn", "name": "gone"}))
        await browser.run(wait("#containers .row.running[data-name='gone']"))
        assert not await browser.run(lambda: page.is_checked(box))
    assert not browser.console_errors, browser.console_errors


async def test_an_agent_is_logged_in_from_its_row_and_shows_its_usage(
    live: Daemon, browser: BrowserThread
) -> None:
    """Issue 17: the row's key field (its text survives redraws), L0G1N, then L0G0UT; a reported turn
    shows on the row; the key never stays in the page."""
    from hivecore.credentials import LOGIN_FILE, login_env

    secret = "sk-ant-api03-BROWSERSECRET"
    base = live.dashboard_urls[0]
    with trio.fail_after(240):
        page = await browser.new_page(base)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        await ok(await host(live, {"cmd": "spawn", "name": "a"}))
        row = "#containers .row[data-name='a']"
        await browser.run(wait(f"{row} .badge.login"))
        field = f"{row} input[name=secret]"
        await browser.run(lambda: page.fill(field, secret))
        await ok(await host(live, {"cmd": "set_paused", "name": "a", "paused": True}))  # a redraw
        await browser.run(wait(f"{row} .badge.paused"))
        assert await browser.run(lambda: page.input_value(field)) == secret
        await browser.run(lambda: page.click(f"{row} form[action='/agent-login/a'] button"))
        await browser.run(wait(f"{row} .badge.login", "detached"))
        assert login_env(live.config.paths.agent_claude("a")) == {"ANTHROPIC_API_KEY": secret}
        assert secret not in await browser.run(page.content)

        turn = {"cmd": "report_turn", "duration_seconds": 3, "input_tokens": 1500, "cost_usd": 0.25}
        answer = await call(live.config.agent_socket_path("a"), turn)
        assert answer["ok"], answer
        await browser.run(wait(f"{row} .usage:has-text('1 turns')"))
        text = await browser.run(lambda: page.inner_text(f"{row} .usage"))
        assert "1.5k tok" in text
        assert "$0.25" in text

        await browser.run(lambda: page.click(f"{row} form[action='/agent-logout/a'] button"))
        await browser.run(wait(f"{row} .badge.login"))
        assert not (live.config.paths.agent_claude("a") / LOGIN_FILE).exists()
    assert not browser.console_errors, browser.console_errors


RELATIVE_TIME = re.compile(r"\b\d+(?:\.\d+)?[smhd] ago")
SECTIONS = [
    "#containers",
    "#tombstones",
    "#approvals",
    "#jobs",
    "#messages",
    "#operator-inbox",
    "#meta-inputs",
]


async def test_a_dropped_stream_reconnects_and_misses_nothing(live: Daemon, browser: BrowserThread) -> None:
    base = live.dashboard_urls[0]
    with trio.fail_after(120):
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        page = await browser.new_page(base)
        await browser.run(lambda: page.wait_for_selector("#containers .row.running[data-name='coder']"))
        await browser.run(lambda: page.wait_for_selector("#status.live"))
        # the server ends every stream; the world changes while the page is away
        assert live.dashboard_app.hive_drop_streams() >= 1
        await ok(await host(live, {"cmd": "stop", "scope": {"agent_names": ["coder"]}}))
        await ok(await host(live, {"cmd": "spawn", "name": "scout"}))
        await live.broker.send("scout", "operator", "written while you were away")
        await browser.run(lambda: page.wait_for_selector("#containers .row.stopped[data-name='coder']"))
        await browser.run(lambda: page.wait_for_selector("#containers .row.running[data-name='scout']"))
        await browser.run(lambda: open_tab(page, "flow"))
        await browser.run(
            lambda: page.wait_for_selector("#operator-inbox .msg:has-text('while you were away')")
        )
        await browser.run(lambda: page.wait_for_selector("#status.live"))
        # its DOM equals a fresh load's
        fresh = await browser.new_page(base)
        await browser.run(lambda: fresh.wait_for_selector("#containers .row.running[data-name='scout']"))

        def texts(p: Page) -> dict[str, str]:
            return section_texts(p)

        assert await browser.run(lambda: texts(page)) == await browser.run(lambda: texts(fresh))
    assert browser.state_requests == [f"{base}/api/state"] * 2  # one per page session


def section_texts(p: Page) -> dict[str, str]:
    """Each section's text, with live relative times ("3s ago", "2m ago") normalised: two pages
    loaded a second apart may round the same instant differently. Each is read on its tab, shown (a
    hidden element's text has no layout: no tabs between table cells, no line breaks)."""
    texts = {}
    for s in SECTIONS:
        open_tab(p, tab_of(p, s.removeprefix("#")))
        texts[s] = RELATIVE_TIME.sub("<t> ago", p.inner_text(s))
    return texts


async def test_a_refetch_frame_reloads_the_snapshot_into_the_stores(
    live: Daemon, browser: BrowserThread
) -> None:
    from hivecore.wire.events import AgentNotice

    base = live.dashboard_urls[0]
    with trio.fail_after(120):
        page = await browser.new_page(base)
        await browser.run(lambda: page.wait_for_selector("#status.live"))
        await browser.run(lambda: page.evaluate("window.sameDocument = true"))
        # a burst the page's stream cannot hold: the server ends it with a refetch frame
        for i in range(3000):
            live.bus.publish(AgentNotice(event="burst", agent="nobody", note=str(i)))
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        await browser.run(lambda: page.wait_for_selector("#containers .row.running[data-name='coder']"))
        await browser.run(lambda: page.wait_for_selector("#status.live"))
        fresh = await browser.new_page(base)

        def texts(p: Page) -> dict[str, str]:
            return section_texts(p)

        assert await browser.run(lambda: texts(page)) == await browser.run(lambda: texts(fresh))
        # the first page loaded the snapshot twice (boot, refetch), without reloading the document
        assert await browser.run(lambda: page.evaluate("window.sameDocument")) is True
    assert browser.state_requests == [f"{base}/api/state"] * 3  # boot, refetch, the fresh page


async def test_without_a_session_the_page_goes_to_login(live: Daemon, browser: BrowserThread) -> None:
    base = live.dashboard_urls[0]
    await browser.run(lambda: None)

    def visit() -> str:
        page = browser.browser.new_context().new_page()
        page.goto(f"{base}/")
        page.wait_for_url(f"{base}/login", timeout=WAIT_MS)
        page.fill("#token", "wrong-token-0123456789")
        page.click("#login button[type=submit]")
        page.wait_for_selector("#login-error:has-text('wrong operator token')", timeout=WAIT_MS)
        return page.url

    with trio.fail_after(60):
        assert await trio.to_thread.run_sync(lambda: None) is None  # type: ignore[func-returns-value]
        assert (await browser.run(visit)).endswith("/login")


async def test_a_build_error_keeps_its_line_breaks_on_the_page(live: Daemon, browser: BrowserThread) -> None:
    """Issue 16 (honest signals): the rebuild queue and the approval history show nix's error as
    nix wrote it (its ``^`` under the column it means), folded to its first line when long,
    expandable, and the expanded state survives the re-renders the next events cause."""
    with trio.fail_after(240):
        page = await browser.new_page(live.dashboard_urls[0])

        def wait(selector: str) -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector)

        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        proposed = live.config.paths.agent_config("coder")
        bad = await commit(proposed, {"agent.nix": BROKEN_NIX}, "broken")
        asked = await ok(
            await call(
                live.config.manager_socket_path,
                {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": bad},
            )
        )
        answer = await host(live, {"cmd": "approve", "id": asked["approval_id"]})
        assert not answer["ok"]
        [failed] = [a for a in await live.coordinator.approvals() if a.id == asked["approval_id"]]
        assert failed.note is not None
        caret = next(line for line in failed.note.splitlines() if line.rstrip().endswith("^"))

        job = "#jobs .job.failed:has-text('apply_commit')"
        await browser.run(lambda: open_tab(page, "system"))  # the rebuild queue
        await browser.run(wait(f"{job} details.long-text"))
        await browser.run(lambda: page.click(f"{job} details.long-text summary"))
        shown = await browser.run(lambda: page.inner_text(f"{job} details.long-text pre"))
        assert caret in shown.splitlines(), shown  # the pointer on its own line, where nix put it
        assert "syntax error" in shown
        # another event re-renders the queue: the expanded error stays expanded
        await ok(await host(live, {"cmd": "restart", "name": "coder"}))
        await browser.run(wait("#jobs .job.done:has-text('restart')"))
        assert await browser.run(lambda: page.locator(f"{job} details.long-text").get_attribute("open")) == ""

        await browser.run(lambda: open_tab(page, "call"))
        await browser.run(lambda: page.click("#approvals-toggle"))
        card = f"#approvals .card.failed[data-id='{asked['approval_id']}']"
        await browser.run(wait(f"{card} details.long-text"))
        await browser.run(lambda: page.click(f"{card} details.long-text summary"))
        note = await browser.run(lambda: page.inner_text(f"{card} details.long-text pre"))
        assert caret in note.splitlines(), note


async def test_the_warning_strip_shows_alarms_live_and_releases_a_hold(
    live: Daemon, browser: BrowserThread
) -> None:
    """Issue 19 item 4: a hold raised before the page loads comes with the snapshot, its release
    button lifts it (the strip empties on ``alarm_cleared``), and an alarm raised later arrives on
    the stream; still one ``/api/state``."""
    from hivecore.alarms import Alarm

    with trio.fail_after(120):
        watch = live.alarm_watch
        watch.disk_paths = []  # (a full disk on the test machine would add its own line)
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        for _ in range(3):
            watch.record_crash("coder")  # what crash_watch reports (test_alarms crashes real processes)
        await eventually(lambda: [a.key for a in live.coordinator.alarms()] == ["crash_loop:coder"])
        page = await browser.new_page(live.dashboard_urls[0])
        held = "#warnings li.warning.crit:has-text('coder is held stopped')"
        await browser.run(lambda: page.wait_for_selector(held))
        await browser.run(lambda: page.click(f"{held} form[action='/release/coder'] button"))
        await browser.run(lambda: page.wait_for_selector("#warnings li", state="detached"))
        assert watch.holds.get("coder") is None
        late: list[Alarm] = [
            Alarm("notify", "notify", "warn", "notifications are not delivered (1 given up)")
        ]
        watch.add_source(lambda: list(late))
        watch.request_pass()
        await browser.run(
            lambda: page.wait_for_selector("#warnings li.warning.warn:has-text('not delivered')")
        )
        late.clear()
        watch.request_pass()
        await browser.run(lambda: page.wait_for_selector("#warnings li", state="detached"))
        assert len(browser.state_requests) == 1
        assert browser.console_errors == []


# --- the review's evaluation, port conflicts, notifications (issue 18 item 9) ----------------------

FAKE_NOTIFICATIONS = """
window.__notes = [];
window.__hidden = false;
Object.defineProperty(document, "hidden", { configurable: true, get: () => window.__hidden });
window.Notification = class {
  constructor(title, options) { window.__notes.push({ title, body: options.body, tag: options.tag }); }
  close() {}
};
window.Notification.permission = localStorage.getItem("fake-permission") || "default";
window.Notification.requestPermission = async () => {
  localStorage.setItem("fake-permission", "granted");
  window.Notification.permission = "granted";
  return "granted";
};
"""
"""A stand-in Notification API (the test sees each notification) and a document whose ``hidden``
the test sets: headless Chromium shows no notifications and is never in the background."""


async def test_evaluations_port_conflicts_and_notifications_on_the_page(
    live: Daemon, browser: BrowserThread
) -> None:
    with trio.fail_after(240):
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        page = await browser.new_page(live.dashboard_urls[0], FAKE_NOTIFICATIONS)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        # notifications: off until the operator turns them on; the choice survives a reload
        assert "off" in await browser.run(lambda: page.inner_text("#notify-toggle"))
        await browser.run(lambda: page.click("#notify-toggle"))
        await browser.run(wait("#notify-toggle[aria-pressed='true']"))
        assert await browser.run(lambda: page.evaluate("localStorage.getItem('hive-c0re.notify')")) == "on"

        # a proposal that evaluates, one that does not: each card says so, live (Y3R C4LL)
        await browser.run(lambda: open_tab(page, "call"))
        proposed = live.config.paths.agent_config("coder")
        good = await commit(proposed, {"agent.nix": sonnet()}, "use sonnet")
        await browser.run(lambda: page.evaluate("window.__hidden = true"))  # the tab goes to the background
        asked = await ok(
            await call(
                live.config.manager_socket_path,
                {
                    "cmd": "request_apply_commit",
                    "agent": "coder",
                    "commit_ref": good,
                    "description": "sonnet",
                },
            )
        )
        card = f"#approvals .card.pending[data-id='{asked['approval_id']}']"
        await browser.run(wait(f"{card} details.evaluation.ok"))
        table = await browser.run(lambda: page.inner_text(f"{card} table.runtime-changes"))
        assert "model" in table
        assert "haiku" in table
        assert "sonnet" in table
        notes = await browser.run(lambda: page.evaluate("window.__notes"))
        assert [(n["tag"], n["body"]) for n in notes] == [(f"approval:{asked['approval_id']}", "sonnet")]
        await browser.run(lambda: page.evaluate("window.__hidden = false"))  # in front: no notification
        bad = await commit(proposed, {"agent.nix": BROKEN_NIX}, "broken")
        asked2 = await ok(
            await call(
                live.config.manager_socket_path,
                {"cmd": "request_apply_commit", "agent": "coder", "commit_ref": bad},
            )
        )
        card2 = f"#approvals .card.pending[data-id='{asked2['approval_id']}']"
        await browser.run(wait(f"{card2} .evaluation.failed"))
        error = await browser.run(lambda: page.inner_text(f"{card2} .evaluation.failed"))
        assert "D0ES N0T EV4LU4TE" in error
        await browser.run(lambda: page.click(f"{card2} .evaluation.failed details.long-text summary"))
        nix = await browser.run(lambda: page.inner_text(f"{card2} .evaluation.failed details.long-text pre"))
        assert "syntax error" in nix
        assert "4NYW4Y" in await browser.run(lambda: page.inner_text(f"{card2} button.approve"))
        assert len(await browser.run(lambda: page.evaluate("window.__notes"))) == 1

        # the manager withdraws the first: the card leaves live
        await ok(
            await call(
                live.config.manager_socket_path, {"cmd": "cancel_approval", "id": asked["approval_id"]}
            )
        )
        await browser.run(wait(card, "detached"))

        # two agents on one web-UI port: the banner appears, and goes with one of them
        await ok(await host(live, {"cmd": "spawn", "name": "as"}))
        await ok(await host(live, {"cmd": "spawn", "name": "ht"}))
        await browser.run(wait("#port-conflicts .port-conflict", "visible"))
        banner = await browser.run(lambda: page.inner_text("#port-conflicts"))
        assert "as, ht" in banner
        await ok(await host(live, {"cmd": "destroy", "name": "ht"}))
        await browser.run(wait("#port-conflicts", "hidden"))

        # a reload keeps the choice; approvals pending at load never notify
        await browser.run(lambda: page.reload())
        await browser.run(wait("body[data-ready='1']"))
        await browser.run(wait("#notify-toggle[aria-pressed='true']"))
        assert await browser.run(lambda: page.evaluate("window.__notes.length")) == 0
    assert not browser.console_errors, browser.console_errors


async def test_the_viewers_show_agent_text_as_text_and_the_tree_puts_children_under_parents(
    live: Daemon, browser: BrowserThread
) -> None:
    """Issue 18 items 6 and 7: the row's 4G3NT.N1X and ST4T3 F1L3S viewers (loaded when opened; the
    agent's markup stays text; a refused path shows its reason), and an agent the manager asked
    for sits right under the manager's row."""
    base = live.dashboard_urls[0]
    with trio.fail_after(240):
        page = await browser.new_page(base)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        await ok(await host(live, {"cmd": "spawn", "name": "a"}))
        (live.config.paths.agent_state("a") / "notes.md").write_text("<b id=evil>hi</b>\n")
        row = "#containers .row[data-name='a']"
        await browser.run(wait(row))
        await browser.run(lambda: page.click(f"{row} details.config summary"))
        await browser.run(wait(f"{row} pre.agent-nix:has-text('hive.agent')"))
        assert "applied main" in await browser.run(lambda: page.inner_text(f"{row} pre.agent-nix"))

        await browser.run(lambda: page.click(f"{row} details.state-file summary"))
        await browser.run(lambda: page.fill(f"{row} input.state-path", "notes.md"))
        await browser.run(lambda: page.click(f"{row} .state-file-form button"))
        await browser.run(wait(f"{row} pre.state-file:has-text('hi</b>')"))
        assert await browser.run(lambda: page.query_selector("#evil")) is None
        await browser.run(lambda: page.fill(f"{row} input.state-path", "../config/agent.nix"))
        await browser.run(lambda: page.click(f"{row} .state-file-form button"))
        await browser.run(wait(f"{row} pre.state-file:has-text('component')"))
        # the viewer stays open, with its file, while events redraw the row
        await ok(await host(live, {"cmd": "set_paused", "name": "a", "paused": True}))
        await browser.run(wait(f"{row} .badge.paused"))
        assert await browser.run(lambda: page.input_value(f"{row} input.state-path")) == "../config/agent.nix"

        await live.coordinator.spawn("hm1nd")
        approval = await live.coordinator.request_spawn("kid", "a child", source="manager")
        await ok(await host(live, {"cmd": "approve", "id": approval.id}))
        await browser.run(wait("#containers .row.child[data-name='kid']"))
        order = await browser.run(
            lambda: page.eval_on_selector_all("#containers .row", "rows => rows.map(r => r.dataset.name)")
        )
        assert order.index("kid") == order.index("hm1nd") + 1, order
        assert len(browser.state_requests) == 1, browser.state_requests  # the viewers fetch only theirs
    assert not browser.console_errors, browser.console_errors


async def test_a_path_into_a_state_dir_in_a_message_opens_the_state_file_viewer(
    live: Daemon, browser: BrowserThread
) -> None:
    """Issue 18 item 9: a message naming a file of a live agent's state dir (the host's path or the
    container's ``/agents/<n>/state/…``) links to that agent's state-file viewer; a path of an agent
    that does not exist stays text; the link only opens the viewer (the server checks the path)."""
    base = live.dashboard_urls[0]
    with trio.fail_after(240):
        page = await browser.new_page(base)

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        await ok(await host(live, {"cmd": "spawn", "name": "a"}))
        (live.config.paths.agent_state("a") / "notes.md").write_text("the notes\n")
        host_path = live.config.paths.agent_state("a") / "notes.md"
        body = f"see {host_path}, /agents/a/state/notes.md. and /agents/zz/state/x.md"
        await ok(await host(live, {"cmd": "op_send", "to": "a", "body": body}))
        await browser.run(lambda: open_tab(page, "flow"))
        links = "#messages .msg .body a.state-link"
        await browser.run(wait(links))
        texts = "as => as.map(a => a.textContent)"
        shown = await browser.run(lambda: page.eval_on_selector_all(links, texts))
        assert shown == [str(host_path), "/agents/a/state/notes.md"]  # no trailing '.', no zz
        await browser.run(lambda: page.click(f"{links} >> nth=1"))
        row = "#containers .row[data-name='a']"
        await browser.run(wait("#tabpanel-swarm", "visible"))
        await browser.run(wait(f"{row} pre.state-file:has-text('the notes')"))
        assert len(browser.state_requests) == 1, browser.state_requests
    assert not browser.console_errors, browser.console_errors
