"""Notifications (issue 19 item 5): what is sent for which event (pure), and delivery through httpx to
a loopback HTTP server in the test (a small trio server: real sockets, real HTTP/1.1): JSON and
ntfy-style bodies, retries with backoff, a dead endpoint raising the ``notify`` alarm and clearing
it, a full queue dropping its oldest notice without ever blocking the publisher, and the daemon's
flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from actors.event_bus import EventBus
from actors.webhooks import Webhooks
from hivecore import webhook as wh
from hivecore.errors import BadInput
from hivecore.wire.events import (
    AgentNotice,
    AlarmCleared,
    AlarmRaised,
    ApprovalAdded,
    MessageSent,
    QuestionAdded,
)
from tests.waiting import eventually


@attrs.define
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class LoopbackServer:
    """HTTP/1.1 on 127.0.0.1: records each request and answers ``status()`` (then closes)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.status: Callable[[Request], int] = lambda r: 200
        self.hold = trio.Event()
        self.hold.set()
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        async with stream:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive_some(65536)
            request = Request(method, path, headers, body)
            await self.hold.wait()
            self.requests.append(request)
            status = self.status(request)
            await stream.send_all(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self.handle, listeners)

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def approval(seq: int = 0) -> ApprovalAdded:
    return ApprovalAdded(id=7, agent="coder", approval_kind="apply_commit", description="add tests", seq=seq)


def alarm() -> AlarmRaised:
    return AlarmRaised(
        key="crash_loop:coder", alarm_kind="crash_loop", level="crit", message="coder is held", agent="coder"
    )


def test_notices_for_each_kind() -> None:
    every = frozenset(wh.KINDS)
    n = wh.notice_of(approval(seq=3), every)
    assert n is not None
    assert n.document(5.0) == {
        "kind": "approval_added",
        "title": "hive: approval 7 for coder",
        "text": "approval 7: apply_commit for coder: add tests",
        "agent": "coder",
        "level": "info",
        "ref": 7,
        "seq": 3,
        "at": 5.0,
    }
    q = QuestionAdded(id=2, asker="coder", question="which\nbranch?", asked_at=1)
    assert (notice := wh.notice_of(q, every)) is not None
    assert notice.text == "coder asks: which branch?"  # one line
    assert (
        wh.notice_of(attrs.evolve(q, target="peer"), every) is None
    )  # a peer's question: not the operator's
    crash = wh.notice_of(AgentNotice(event="container_crash", agent="coder"), every)
    assert crash is not None
    assert crash.kind == "container_crash"
    assert wh.notice_of(AgentNotice(event="needs_login", agent="coder"), every) is None
    raised = wh.notice_of(alarm(), every)
    assert raised is not None
    assert raised.ntfy_headers() == {
        "Title": "hive alarm: crash_loop:coder",
        "Priority": "high",
        "Tags": "alarm_raised",
    }
    assert (
        wh.notice_of(AlarmCleared(key="k", alarm_kind="disk"), frozenset(wh.DEFAULT_KINDS)) is None
    )  # not by default
    assert wh.notice_of(MessageSent(id=1, from_="a", to="b", body="x", at=1), every) is None
    assert len(wh.one_line("x" * 1000)) == wh.MAX_TEXT


def test_endpoints_and_kinds_are_checked() -> None:
    e = wh.parse_endpoint("ntfy+https://ntfy.example.org/topic?auth=SECRET")
    assert (e.url, e.format, e.shown) == (
        "https://ntfy.example.org/topic?auth=SECRET",
        "ntfy",
        "ntfy+https://ntfy.example.org/…",
    )
    assert (
        wh.parse_endpoint("http://user:pw@127.0.0.1:8080/x").shown == "http://127.0.0.1:8080/…"
    )  # no credentials
    for bad in (
        "ftp://x/",
        "file:///etc/passwd",
        "https://",
        "ntfy+gopher://x/",
        "http://x/a b",
        "/relative",
        "http://user:SECRET@x:abc/",  # a port that is not a number: one clear answer, no traceback
        "ntfy+https://x:99999/topic",
    ):
        with pytest.raises(BadInput, match="--notify-url") as refused:
            wh.parse_endpoint(bad)
        assert "SECRET" not in str(refused.value)
    assert wh.parse_kinds(["alarm_raised,container_crash", "approval_added"]) == {
        "alarm_raised",
        "container_crash",
        "approval_added",
    }
    with pytest.raises(BadInput, match="unknown kind"):
        wh.parse_kinds(["alarm_raised,everything"])
    assert [wh.backoff(a, 2.0, 60.0) for a in (1, 2, 3, 6, 9)] == [2.0, 4.0, 8.0, 60.0, 60.0]
    assert wh.retryable(503) and wh.retryable(429) and not wh.retryable(404)  # noqa: PT018


async def start(nursery: trio.Nursery, hooks: Webhooks) -> Webhooks:
    started: Webhooks = await nursery.start(hooks.run)
    return started


async def test_json_and_ntfy_delivery_of_the_selected_kinds() -> None:
    bus = EventBus()
    server = LoopbackServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        hooks = Webhooks(
            bus,
            [wh.parse_endpoint(server.url("/json")), wh.parse_endpoint(server.url("/topic", "ntfy+http"))],
            frozenset(wh.DEFAULT_KINDS),
        )
        await start(nursery, hooks)
        bus.publish(MessageSent(id=1, from_="a", to="b", body="not notified", at=1))
        bus.publish(approval())
        bus.publish(alarm())
        bus.publish(AgentNotice(event="container_crash", agent="coder", note="exit 1"))
        await eventually(lambda: [s.delivered for s in hooks.statistics()] == [3, 3], what="6 POSTs answered")
        assert len(server.requests) == 6
        by_path: dict[str, list[Request]] = {}
        for r in server.requests:
            by_path.setdefault(r.path, []).append(r)
        docs = [r.json() for r in by_path["/json"]]
        assert [d["kind"] for d in docs] == ["approval_added", "alarm_raised", "container_crash"]
        assert all(
            r.method == "POST" and r.headers["content-type"] == "application/json" for r in by_path["/json"]
        )
        assert docs[1]["level"] == "crit"
        assert docs[2]["text"] == "coder crashed: exit 1"
        texts = [r.body.decode() for r in by_path["/topic"]]
        assert texts == [
            "approval 7: apply_commit for coder: add tests",
            "coder is held",
            "coder crashed: exit 1",
        ]
        assert by_path["/topic"][1].headers["title"] == "hive alarm: crash_loop:coder"
        assert by_path["/topic"][1].headers["priority"] == "high"
        assert by_path["/topic"][0].headers["content-type"].startswith("text/plain")
        nursery.cancel_scope.cancel()


async def test_retries_with_backoff_then_delivers() -> None:
    bus = EventBus()
    server = LoopbackServer()
    answers = iter([503, 429, 200])
    server.status = lambda r: next(answers)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        hooks = Webhooks(bus, [wh.parse_endpoint(server.url())], frozenset(wh.KINDS), initial_backoff=0.05)
        await start(nursery, hooks)
        started = trio.current_time()
        bus.publish(approval())
        await eventually(lambda: hooks.statistics()[0].delivered == 1, what="delivered after retries")
        assert trio.current_time() - started >= 0.05 + 0.1  # two backoffs, doubling
        assert len(server.requests) == 3
        [stats] = hooks.statistics()
        assert (stats.retries, stats.failed, stats.failing) == (2, 0, False)
        assert hooks.alarms() == []
        nursery.cancel_scope.cancel()


async def test_a_failing_endpoint_raises_the_alarm_and_a_delivery_clears_it() -> None:
    bus = EventBus()
    server = LoopbackServer()
    server.status = lambda r: 404  # final: no retry
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        dead = wh.parse_endpoint("http://127.0.0.1:9/unreachable?token=SECRET")  # discard port: refused
        hooks = Webhooks(
            bus,
            [wh.parse_endpoint(server.url()), dead],
            frozenset(wh.KINDS),
            attempts=3,
            initial_backoff=0.01,
        )
        await start(nursery, hooks)
        bus.publish(approval())
        await eventually(lambda: [s.failed for s in hooks.statistics()] == [1, 1], what="both gave up")
        assert len(server.requests) == 1  # a 404 is not retried
        [raised] = hooks.alarms()
        assert raised.key == "notify"
        assert "HTTP 404" in raised.message
        assert "ConnectError" in raised.message
        assert "SECRET" not in raised.message  # the URL's secret never shows
        assert hooks.statistics()[1].retries == 2
        server.status = lambda r: 200
        bus.publish(approval())
        await eventually(lambda: hooks.statistics()[0].delivered == 1, what="delivers again")
        assert "HTTP 404" not in hooks.alarms()[0].message  # the dead one still fails
        nursery.cancel_scope.cancel()


async def test_a_full_queue_drops_the_oldest_and_never_blocks_the_publisher() -> None:
    bus = EventBus()
    server = LoopbackServer()
    server.hold = trio.Event()  # the endpoint hangs until released
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        hooks = Webhooks(bus, [wh.parse_endpoint(server.url())], frozenset(wh.KINDS), queue=3)
        await start(nursery, hooks)
        bus.publish(ApprovalAdded(id=0, agent="coder", approval_kind="apply_commit"))
        await eventually(lambda: hooks.statistics()[0].queued == 0, what="the first in flight")
        for i in range(1, 11):  # the publisher never awaits
            bus.publish(ApprovalAdded(id=i, agent="coder", approval_kind="apply_commit"))
        # 10 offered behind the one in flight, 3 kept
        await eventually(lambda: hooks.statistics()[0].dropped == 7, what="7 dropped")
        assert hooks.statistics()[0].queued == 3
        server.hold.set()
        await eventually(lambda: hooks.statistics()[0].delivered == 4, what="the rest delivered")
        assert [r.json()["ref"] for r in server.requests] == [0, 8, 9, 10]
        nursery.cancel_scope.cancel()


def test_serve_flags() -> None:
    from hivecore.cli.daemon import build_parser, config_from_args
    from hivecore.errors import HiveError

    def config(*flags: str) -> Any:
        return config_from_args(build_parser().parse_args(["serve", "--runtime", "process", *flags]))

    assert config().notify_urls == ()
    assert config().notify_on == tuple(sorted(wh.DEFAULT_KINDS))
    c = config(
        "--notify-url",
        "ntfy+https://n.example/t",
        "--notify-url",
        "https://h.example/x",
        "--notify-on",
        "alarm_raised",
    )
    assert c.notify_urls == ("ntfy+https://n.example/t", "https://h.example/x")
    assert c.notify_on == ("alarm_raised",)
    with pytest.raises(HiveError, match="--notify-url"):
        config("--notify-url", "smtp://mail.example/")
    with pytest.raises(HiveError, match="--notify-on"):
        config("--notify-on", "nope")


async def scraped(daemon: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await daemon.metrics.scrape()).decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a series family appears twice"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_daemon_notifies_and_a_failing_endpoint_is_an_alarm(state_dir: Any) -> None:
    from hivecore.daemon import main
    from tests.conftest import make_config

    server = LoopbackServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        config = make_config(state_dir, notify_urls=(server.url("/hive"),), notify_on=("approval_added",))
        daemon = await nursery.start(main, config)
        hooks = daemon.webhooks
        assert hooks is not None
        assert "notifications" in [c.name for c in daemon.supervisor.statistics()]
        hooks.attempts = 1
        daemon.bus.publish(approval())
        await eventually(lambda: hooks.statistics()[0].delivered == 1, what="delivered")
        assert server.requests[0].json()["kind"] == "approval_added"
        server.status = lambda r: 500
        daemon.bus.publish(approval())
        await eventually(lambda: hooks.statistics()[0].failed == 1, what="given up")
        daemon.alarm_watch.request_pass()

        def notify_alarms() -> list[str]:  # (a full disk here would raise its own)
            return [a.key for a in daemon.coordinator.alarms() if a.kind == "notify"]

        await eventually(lambda: notify_alarms() == ["notify"], what="notify alarm")
        # the series metrics scrapes (prometheus_client's own parser)
        series = await scraped(daemon)
        assert series[("hivecore_alarms_active", (("kind", "notify"), ("level", "warn")))] == 1
        assert series[("hivecore_alarms_active", (("kind", "crash_loop"), ("level", "crit")))] == 0
        assert series[("hivecore_notifications_total", (("outcome", "delivered"),))] == 1
        assert series[("hivecore_notifications_total", (("outcome", "failed"),))] == 1
        assert series[("hivecore_agents_held", ())] == 0
        assert series[("hivecore_alarms_raised_total", ())] >= 1
        server.status = lambda r: 200
        daemon.bus.publish(approval())
        await eventually(lambda: hooks.statistics()[0].delivered == 2, what="delivers again")
        daemon.alarm_watch.request_pass()
        await eventually(lambda: notify_alarms() == [], what="notify alarm cleared")
        nursery.cancel_scope.cancel()


def test_notify_url_file(tmp_path: Any) -> None:
    import os

    from hivecore.cli.daemon import build_parser, config_from_args
    from hivecore.errors import HiveError

    def config(*flags: str) -> Any:
        return config_from_args(build_parser().parse_args(["serve", "--runtime", "process", *flags]))

    urls = tmp_path / "urls"
    urls.write_text("# the team's topic\nntfy+https://n.example/t?auth=SECRET\n\nhttps://h.example/x\n")
    urls.chmod(0o600)
    c = config("--notify-url", "http://a.example/", "--notify-url-file", str(urls))
    assert c.notify_urls == (
        "http://a.example/",
        "ntfy+https://n.example/t?auth=SECRET",
        "https://h.example/x",
    )
    urls.chmod(0o640)  # others may read it: refused, and the message names the fix
    with pytest.raises(HiveError, match="chmod 600"):
        config("--notify-url-file", str(urls))
    urls.chmod(0o600)
    link = tmp_path / "link"
    os.symlink(urls, link)
    with pytest.raises(HiveError, match="symlink"):
        config("--notify-url-file", str(link))
    bad = tmp_path / "bad"
    bad.write_text("https://ok.example/\nsmtp://mail.example/?pw=SECRET\n")
    bad.chmod(0o600)
    with pytest.raises(HiveError, match="URL 2") as caught:
        config("--notify-url-file", str(bad))
    assert "SECRET" not in str(caught.value)
    with pytest.raises(HiveError, match="cannot open"):
        config("--notify-url-file", str(tmp_path / "missing"))
