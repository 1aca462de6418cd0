"""``/metrics`` (issue 19 item 2): Prometheus text read back with prometheus_client's own parser, the
counters moving by exactly the work a test did, the same gate as ``/api/*``, and the loopback
listener (``--metrics-listen``)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from actors.supervisor import ChildSpec, RestartPolicy
from hivecore import usage
from hivecore.alarms import Alarm
from hivecore.config import Config, parse_listen
from hivecore.daemon import Daemon, build, main
from hivecore.errors import HiveError, RuntimeFailure
from hivecore.meta import MetaRepo
from hivecore.metrics import AGENT_STATES, INBOX_QUERY, Metrics
from hivecore.nixconfine import EvalLimits
from hivecore.store import connect
from hivecore.wire.events import ActorCrashed
from tests.conftest import AUTH, make_config, write_test_token
from tests.test_crash_watch import killed
from tests.test_serve import _not_logging, _serve_failure
from tests.waiting import eventually
from tests.web_client import event_stream, http

Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: bytes) -> Samples:
    """Every sample of an exposition, by name and labels (the parser raises on malformed text)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(hive: Daemon) -> Samples:
    status, headers, body = await http(hive, "GET", "/metrics", headers=AUTH)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_counters_move_by_exactly_the_work_done(hive: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    c = hive.coordinator
    before = await scrape(hive)
    assert value(before, "hivecore_agents", state="running") == 0

    # two spawns, a stop, and a start that fails in the lane (the runtime refuses)
    await c.spawn("coder")
    await c.spawn("worker")
    await c.stop("coder")

    async def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeFailure("injected: the runtime refuses to start coder")

    monkeypatch.setattr(hive.runtime, "start", refuse)
    with pytest.raises(RuntimeFailure, match="injected"):
        await c.start("coder")
    monkeypatch.undo()

    # worker dies without a stop request: one crash, by agent
    pid = (await hive.runtime.list(["worker"]))["worker"].pid
    assert pid is not None
    await killed(pid)
    await eventually(lambda: hive.crash_watch.crashes_by_agent().get("worker") == 1, what="worker's crash")

    # a turn reported, a spawn approval pending
    assert hive.usage is not None
    turn = usage.Turn(
        duration_seconds=3.0, input_tokens=100, output_tokens=20, cache_read_tokens=5, cost_usd=0.25
    )
    await hive.usage.report("coder", turn)
    await c.request_spawn("newbie")

    await hive.crash_watch.tick()  # every helper event judged so far is in the manager's inbox
    # nobody reads the manager's inbox here (no manager runs): empty it, so the mail below is alone
    assert hive.broker.parked("manager") == 0
    drain = hive.broker.open_lease()
    while await hive.broker.recv("manager", lease=drain, max=32):
        await hive.broker.ack_turn("manager", lease=drain)
    hive.broker.close_lease(drain)
    middle = await scrape(hive)
    assert moved(before, middle, "hivecore_jobs_total", kind="spawn", outcome="done") == 2
    assert moved(before, middle, "hivecore_jobs_total", kind="stop", outcome="done") == 1
    assert moved(before, middle, "hivecore_jobs_total", kind="start", outcome="failed") == 1
    assert moved(before, middle, "hivecore_jobs_total", kind="start", outcome="done") == 0
    jobs = [k for k in middle if k[0] == "hivecore_jobs_total"]
    assert sum(moved(before, middle, "hivecore_jobs_total", **dict(labels)) for _, labels in jobs) == 4
    assert moved(before, middle, "hivecore_job_duration_seconds_count", kind="spawn") == 2
    assert moved(before, middle, "hivecore_job_duration_seconds_count", kind="start") == 1
    assert value(middle, "hivecore_job_duration_seconds_sum", kind="spawn") > 0
    # each spawn evaluates its agent once (nix eval of hiveAgents.<n>)
    assert moved(before, middle, "hivecore_nix_duration_seconds_count", operation="eval", outcome="ok") == 2
    assert (
        moved(before, middle, "hivecore_nix_duration_seconds_count", operation="eval", outcome="failed") == 0
    )
    assert value(middle, "hivecore_agent_crashes_total", agent="worker") == 1
    assert value(middle, "hivecore_agent_crashes_total", agent="coder") == 0
    assert value(middle, "hivecore_agents", state="stopped") == 1
    assert value(middle, "hivecore_agents", state="failed") == 1  # worker: died without a stop
    assert value(middle, "hivecore_agent_up", agent="coder") == 0
    assert value(middle, "hivecore_agent_turns_total", agent="coder") == 1
    assert value(middle, "hivecore_agent_tokens_total", agent="coder") == 125
    assert value(middle, "hivecore_agent_cost_usd_total", agent="coder") == 0.25
    assert value(middle, "hivecore_turn_reports_total", outcome="recorded") == 1
    assert value(middle, "hivecore_approvals_pending", kind="spawn") == 1
    assert value(middle, "hivecore_approvals_pending", kind="apply_commit") == 0
    assert value(middle, "hivecore_job_lane_jobs", state="queued") == 0

    # mail to the manager's inbox (nobody else reads it): 3 sent; 2 handed out and acked; 1 handed
    # out to a connection that goes away, then again (redelivered) and acked. (Not to an agent: a
    # stopped agent's last long-poll can still be parked on its dead connection and take a message.)
    ids = [await hive.broker.send("operator", "manager", f"message {i}") for i in range(3)]
    assert len(ids) == 3
    queued = await scrape(hive)
    assert value(queued, "hivecore_inbox_messages", recipient="manager", state="queued") == 3
    assert value(queued, "hivecore_inbox_oldest_unacked_age_seconds", recipient="manager") >= 0
    first = hive.broker.open_lease()
    assert len(await hive.broker.recv("manager", lease=first, max=2)) == 2
    flight = await scrape(hive)
    assert value(flight, "hivecore_inbox_messages", recipient="manager", state="queued") == 1
    assert value(flight, "hivecore_inbox_messages", recipient="manager", state="in_flight") == 2
    assert await hive.broker.ack_turn("manager", lease=first) == 2
    hive.broker.close_lease(first)
    second = hive.broker.open_lease()
    assert len(await hive.broker.recv("manager", lease=second)) == 1
    hive.broker.close_lease(second)  # gone without an ack
    third = hive.broker.open_lease()
    again = await hive.broker.recv("manager", lease=third)
    assert [m.redelivered for m in again] == [True]
    assert await hive.broker.ack_turn("manager", lease=third) == 1
    hive.broker.close_lease(third)

    after = await scrape(hive)
    assert moved(middle, after, "hivecore_broker_messages_total", event="sent") == 3
    assert moved(middle, after, "hivecore_broker_messages_total", event="delivered") == 4
    assert moved(middle, after, "hivecore_broker_messages_total", event="redelivered") == 1
    assert moved(middle, after, "hivecore_broker_messages_total", event="acked") == 3
    assert value(after, "hivecore_inbox_messages", recipient="manager", state="queued") == 0
    assert value(after, "hivecore_inbox_messages", recipient="manager", state="in_flight") == 0
    assert value(after, "hivecore_inbox_oldest_unacked_age_seconds", recipient="manager") == 0
    jobs_after = {k: v for k, v in after.items() if k[0] == "hivecore_jobs_total"}
    assert jobs_after == {k: v for k, v in middle.items() if k[0] == "hivecore_jobs_total"}


async def test_every_series_is_described_and_bounded(hive: Daemon) -> None:
    """One scrape: parses, every family has help text, the agent states are all present, and the
    actors are the supervisor's table."""
    await hive.coordinator.spawn("coder")
    status, _, body = await http(hive, "GET", "/metrics", headers=AUTH)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert all(f.documentation for f in families.values())
    assert all(name.startswith("hivecore_") for name in families)
    samples = parse(body)
    assert {dict(k[1])["state"] for k in samples if k[0] == "hivecore_agents"} == set(AGENT_STATES)
    actors = {dict(k[1])["actor"] for k in samples if k[0] == "hivecore_actor_restarts_total"}
    assert actors == {c.name for c in hive.supervisor.statistics()}
    assert value(samples, "hivecore_actor_running", actor="store") == 1
    assert value(samples, "hivecore_agent_up", agent="coder") == 1
    for name in (
        "hivecore_event_bus_lag_events",
        "hivecore_event_bus_dropped_subscribers_total",
        "hivecore_sse_clients",
        "hivecore_store_queue_depth",
        "hivecore_nix_duration_seconds_count",
    ):
        assert any(k[0] == name for k in samples), name


async def test_an_unauthenticated_scrape_is_refused_like_the_api(hive: Daemon) -> None:
    for headers in (
        "",
        "Authorization: Bearer not-the-token-0123456789\r\n",
        "Cookie: hive_session=forged\r\n",
    ):
        api = await http(hive, "GET", "/api/state", headers=headers)
        metrics = await http(hive, "GET", "/metrics", headers=headers)
        assert api[0] == metrics[0] == 401
        assert json.loads(metrics[2])["error"] == json.loads(api[2])["error"]
    status, _, _ = await http(hive, "GET", "/metrics", headers=AUTH)
    assert status == 200


async def test_sse_clients_and_bus_lag_are_read_at_scrape_time(hive: Daemon) -> None:
    def publish(n: int) -> None:
        for _ in range(n):
            hive.bus.publish(ActorCrashed(actor="test", error="injected", restarts=0))

    before = await scrape(hive)
    assert value(before, "hivecore_event_bus_lag_events") == 0
    with hive.bus.subscribe() as slow, hive.bus.subscribe(buffer=1):
        publish(3)  # slow holds 3 unread; the one with a buffer of 1 is dropped on the 2nd
        during = await scrape(hive)
        assert value(during, "hivecore_event_bus_lag_events") == 3
        assert moved(before, during, "hivecore_event_bus_dropped_subscribers_total") == 1
        assert moved(before, during, "hivecore_event_bus_subscribers") == 1
        assert moved(before, during, "hivecore_event_bus_events_total") == 3
        assert slow.backlog() == 3
    with trio.fail_after(20):
        async with event_stream(hive, "/api/dashboard/stream", AUTH) as sse:
            await sse.wait_connected()
            assert value(await scrape(hive), "hivecore_sse_clients") == 1
    await eventually(lambda: hive.metrics.sse_clients is not None and hive.metrics.sse_clients() == 0)
    assert value(await scrape(hive), "hivecore_sse_clients") == 0


@pytest.fixture
async def loopback_hive(state_dir: Path) -> AsyncIterator[Daemon]:
    from web.app import daemon_app

    write_test_token(state_dir)
    config = make_config(state_dir, metrics_listen="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


async def test_the_loopback_listener_serves_metrics_without_auth(loopback_hive: Daemon) -> None:
    hive = loopback_hive
    assert hive.metrics_urls
    assert hive.metrics_urls[0].startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=hive.metrics_urls[0], timeout=20.0) as client:
        ok = await client.get("/metrics")
        assert ok.status_code == 200
        assert value(parse(ok.content), "hivecore_actor_running", actor="metrics_listener") == 1
        assert (await client.get("/metrics", headers={"Host": "evil.example:9100"})).status_code == 403
        assert (await client.get("/api/state")).status_code == 404
        assert (await client.post("/metrics")).status_code == 405
        # a burst of requests costs one store read a second, not one each
        calls = hive.store.statistics().calls
        for _ in range(20):
            assert (await client.get("/metrics")).status_code == 200
        assert hive.store.statistics().calls - calls <= 2


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:9100", "localhost:9100", "192.168.1.2:9100", "[::]:9100", "127.0.0.1", "127.0.0.1:99999"],
)
def test_metrics_listen_takes_only_a_loopback_address(state_dir: Path, listen: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
        parse_listen(listen)
    with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
        Config(state_dir=state_dir, metrics_listen=listen)


def test_metrics_listen_parses_ipv4_and_ipv6_loopback() -> None:
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)


async def test_overlapping_scrapes_share_one_gather() -> None:
    metrics = Metrics()
    gathers = 0
    release = trio.Event()

    async def gather() -> object:
        nonlocal gathers
        gathers += 1
        await release.wait()
        return None

    metrics._gather = gather
    bodies: list[bytes] = []

    async def one() -> None:
        bodies.append(await metrics.scrape())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert gathers == 1
    assert len(bodies) == 5
    assert len(set(bodies)) == 1
    assert value(parse(bodies[0]), "hivecore_jobs_total", kind="spawn", outcome="done") == 0


async def test_nix_children_are_timed_by_operation_and_outcome(state_dir: Path) -> None:
    """A stand-in nix (a script: the outcome is what is tested, not nix) that succeeds, fails and
    overruns its time limit; ``--version`` is not timed."""
    fake = state_dir / "nix"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in eval) exit 3;; update) exit 0;; slow) exec sleep 30;; esac; done\n'
        "echo 'nix (Nix) 2.8.1'\n"
    )
    fake.chmod(0o755)
    seen: list[tuple[str, str]] = []
    repo = MetaRepo(
        Config(state_dir=state_dir).paths,
        nix=str(fake),
        eval_limits=EvalLimits(time=1.0),
        timings=lambda operation, outcome, seconds: seen.append((operation, outcome)),
    )
    assert b"2.8.1" in await repo.nix("--version", what="version")
    await repo.nix("flake", "update", "x", what="update")
    with pytest.raises(HiveError, match="does not eval"):
        await repo.nix("eval", "--json", "x", what="does not eval")
    with pytest.raises(HiveError, match="did not finish"):
        await repo.nix("flake", "lock", "slow", what="lock")
    assert seen == [("update", "ok"), ("eval", "failed"), ("lock", "timeout")]
    metrics = Metrics()
    for operation, outcome in seen:
        metrics.nix_ran(operation, outcome, 0.5)
    samples = parse(await metrics.scrape())
    assert value(samples, "hivecore_nix_duration_seconds_count", operation="lock", outcome="timeout") == 1
    assert value(samples, "hivecore_nix_duration_seconds_sum", operation="eval", outcome="failed") == 0.5
    bucket = partial(
        value, samples, "hivecore_nix_duration_seconds_bucket", operation="eval", outcome="failed"
    )
    assert (bucket(le="0.25"), bucket(le="0.5"), bucket(le="1.0"), bucket(le="+Inf")) == (0, 1, 1, 1)
    assert value(samples, "hivecore_nix_duration_seconds_count", operation="build", outcome="ok") == 0


def test_the_inbox_count_walks_only_the_open_rows(state_dir: Path) -> None:
    """Every scrape counts the unacked rows per inbox: through the partial index of open rows, not
    a walk over every message kept for 30 days."""
    conn = connect(state_dir / "db.sqlite")
    try:
        plan = " ".join(str(tuple(r)) for r in conn.execute("EXPLAIN QUERY PLAN " + INBOX_QUERY))
    finally:
        conn.close()
    assert "USING INDEX messages_open" in plan


async def test_raised_alarms_are_counted_by_kind_and_level(hive: Daemon) -> None:
    """An alarm another part raises (an alarm source, as the webhooks use) shows in the gauge while
    it holds, and the raised/cleared counters move by one each."""
    raised: list[Alarm] = [Alarm("notify:test", "notify", "warn", "injected: an endpoint fails")]
    hive.alarm_watch.add_source(lambda: list(raised))
    before = await scrape(hive)
    assert value(before, "hivecore_alarms_active", kind="notify", level="warn") == 0
    hive.alarm_watch.request_pass()
    await eventually(lambda: any(a.key == "notify:test" for a in hive.alarm_watch.alarms()), what="raised")
    during = await scrape(hive)
    assert value(during, "hivecore_alarms_active", kind="notify", level="warn") == 1
    assert moved(before, during, "hivecore_alarms_raised_total") == 1
    raised.clear()
    hive.alarm_watch.request_pass()
    await eventually(
        lambda: not any(a.key == "notify:test" for a in hive.alarm_watch.alarms()), what="cleared"
    )
    after = await scrape(hive)
    assert value(after, "hivecore_alarms_active", kind="notify", level="warn") == 0
    assert moved(during, after, "hivecore_alarms_cleared_total") == 1
    assert value(after, "hivecore_agents_held") == 0


async def test_actor_restarts_are_counted_per_actor(state_dir: Path) -> None:
    """A supervised actor that crashes three times (injected) shows three restarts, then running."""
    config = make_config(state_dir)
    config.paths.create_layout()
    daemon = build(config)
    daemon.supervisor.policy = RestartPolicy(initial_backoff=0.01, max_backoff=0.01)
    runs = 0

    async def flaky(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs <= 3:
            raise RuntimeError("injected: the actor crashes")
        await trio.sleep_forever()

    def restarted() -> bool:
        status = {c.name: c for c in daemon.supervisor.statistics()}["flaky"]
        return status.restarts == 3 and status.state == "running"

    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.store.run)
        await nursery.start(daemon.supervisor.run, [ChildSpec("flaky", flaky)])
        await eventually(restarted, what="three restarts")
        samples = parse(await daemon.metrics.scrape())
        nursery.cancel_scope.cancel()
    assert value(samples, "hivecore_actor_restarts_total", actor="flaky") == 3
    assert value(samples, "hivecore_actor_running", actor="flaky") == 1


def test_serve_refuses_a_non_loopback_metrics_listener(state_dir: Path) -> None:
    result = _serve_failure(state_dir, "--dashboard-port", "0", "--metrics-listen", "0.0.0.0:9464")
    assert result.returncode == 1
    assert _not_logging(result.stderr) == [
        "hive-c0re: --metrics-listen '0.0.0.0:9464': the metrics listener has no auth, so it binds only a "
        "loopback address (127.0.0.1:PORT or [::1]:PORT); scrape the dashboard's /metrics with the token "
        "otherwise"
    ]


def test_a_busy_metrics_port_is_one_line_naming_the_flag(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve_failure(
            state_dir, "--dashboard-port", "0", "--no-ensure-manager", "--metrics-listen", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert _not_logging(result.stderr) == [
        f"hive-c0re: cannot bind --metrics-listen 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in result.stderr
