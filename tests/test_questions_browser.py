"""The question cards in a real Chromium (issue 18 item 1): the manager asks over its socket, the
operator answers on the page (an option button, checkboxes of a multi question, free text) or
cancels; each answer reaches the manager's ``recv`` and the card leaves live, on the page's one
``/api/state`` snapshot. An agent's row shows it waiting on the operator while its question is open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    shot,
)
from tests.test_e2e_approval import host


async def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


async def answers_to_manager(hive: Daemon) -> list[tuple[int, str]]:
    sock = hive.config.manager_socket_path
    got = await ok(await call(sock, {"cmd": "recv", "wait_seconds": 5, "max": 32}))
    await ok(await call(sock, {"cmd": "ack_turn"}))
    bodies = [json.loads(m["body"]) for m in got["messages"] if m["sender"] == "system"]
    return [(b["id"], b["answer"]) for b in bodies if b["event"] == "operator_answered"]


async def test_the_operator_answers_questions_on_the_page(
    live: Daemon,  # noqa: F811 (a fixture imported above)
    browser: BrowserThread,  # noqa: F811
    tmp_path: Path,
) -> None:
    msock = live.config.manager_socket_path
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with trio.fail_after(240):
        page = await browser.new_page(live.dashboard_urls[0])

        def wait(selector: str, state: str = "attached") -> Callable[[], object]:
            return lambda: page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]

        async def ask(**fields: Any) -> int:
            answer = await ok(await call(msock, {"cmd": "ask_operator", **fields}))
            qid: int = answer["question_id"]
            await browser.run(wait(f"#questions .card.question[data-id='{qid}']"))
            return qid

        # an option button; the TTL counts down on the card; the pill counts the question
        evil = "<img src=x onerror=window.pwned=1> deploy now?"
        await browser.run(lambda: open_tab(page, "call"))
        one = await ask(question=evil, options=["yes", "no"], ttl_seconds=600)
        card = f"#questions .card[data-id='{one}']"
        assert await browser.run(lambda: page.inner_text(f"{card} .question-text")) == evil
        assert (
            await browser.run(lambda: page.evaluate("document.querySelectorAll('#questions img').length"))
            == 0
        )
        ttl = await browser.run(lambda: page.inner_text(f"{card} .ttl"))
        assert ttl.startswith(("⏳ 10:00", "⏳ 09:5")), ttl
        assert await browser.run(lambda: page.inner_text("#call-count")) == "1"
        await browser.run(lambda: shot(page, shots, "call"))
        await browser.run(lambda: page.click(f"{card} button.option:has-text('yes')"))
        await browser.run(wait(card, "detached"))
        assert await answers_to_manager(live) == [(one, "yes")]
        assert await browser.run(lambda: page.inner_text("#call-count")) == "0"

        # a multi question: checkboxes, answered comma-joined
        two = await ask(question="which?", options=["alpha", "beta", "gamma"], multi=True)
        card = f"#questions .card[data-id='{two}']"
        await browser.run(lambda: page.check(f"{card} input[name=opt][value=alpha]"))
        await browser.run(lambda: page.check(f"{card} input[name=opt][value=gamma]"))
        await browser.run(lambda: page.click(f"{card} form.multi button[type=submit]"))
        await browser.run(wait(card, "detached"))
        assert await answers_to_manager(live) == [(two, "alpha, gamma")]

        # free text, always offered
        three = await ask(question="anything else?", options=["no"])
        card = f"#questions .card[data-id='{three}']"
        await browser.run(lambda: page.fill(f"{card} form.free input[name=answer]", "ship it friday"))
        await browser.run(lambda: page.click(f"{card} form.free button[type=submit]"))
        await browser.run(wait(card, "detached"))
        assert await answers_to_manager(live) == [(three, "ship it friday")]

        # cancel (confirmed): the manager hears [cancelled]
        four = await ask(question="lunch?")
        card = f"#questions .card[data-id='{four}']"
        await browser.run(lambda: page.click(f"{card} button.danger"))
        await browser.run(wait(card, "detached"))
        assert await answers_to_manager(live) == [(four, "[cancelled]")]
        assert any("is answered [cancelled]" in m for m in browser.dialog_messages)

        # answered elsewhere (hivectl, host.sock): the card leaves live too
        five = await ask(question="from the terminal?")
        await ok(await host(live, {"cmd": "answer", "id": five, "answer": "yes"}))
        await browser.run(wait(f"#questions .card[data-id='{five}']", "detached"))

        # an agent waiting on the operator: its row says so until the question is answered
        await ok(await host(live, {"cmd": "spawn", "name": "coder"}))
        await browser.run(lambda: open_tab(page, "swarm"))
        await browser.run(wait("#containers .row.running[data-name='coder']"))
        asked = await ok(
            await call(live.config.agent_socket_path("coder"), {"cmd": "ask_operator", "question": "may I?"})
        )
        await browser.run(wait("#containers .row[data-name='coder'] .badge.waiting"))
        badge = await browser.run(
            lambda: page.inner_text("#containers .row[data-name='coder'] .badge.waiting")
        )
        assert badge.startswith("⏳ waiting on you"), badge
        await ok(await host(live, {"cmd": "answer", "id": asked["question_id"], "answer": "go"}))
        await browser.run(wait("#containers .row[data-name='coder'] .badge.waiting", "detached"))

        assert len(browser.state_requests) == 1, browser.state_requests
        assert browser.console_errors == []
        assert browser.failed_responses == []
