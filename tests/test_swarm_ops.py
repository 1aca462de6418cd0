"""Operator reach across hives (issue 20 item 4; docs/swarm.md "Operator reach"): the pure parts, the
far side's refusals, and two real ``hive-c0re serve`` processes over a real ``nats-server -js``:
refused without ``--swarm-operator-hives``, the far agent really stops with it, both hives audit it,
a forged payload cannot pick the asking hive, and a hive that is down or hung is a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.swarm_link import SwarmLink
from actors.swarm_ops import SwarmOps
from hivecore import swarm as sw
from hivecore import swarm_ops as so
from hivecore.audit import Actor
from hivecore.daemon import Daemon
from hivecore.errors import BadInput, HiveError, Refused
from hivecore.models import ContainerView
from hivecore.sockets.client import Unreachable
from hivecore.verbs import spec
from tests.nats_server import NatsServer, nats_auth_server  # noqa: F401
from tests.procs import kill_everything_under
from tests.test_dashboard_browser import BrowserThread, browser, chromium  # noqa: F401
from tests.test_dashboard_browser import pytestmark as needs_browser
from tests.test_kill9 import ROOT, ask
from tests.test_swarm_auth import nursery  # noqa: F401
from tests.test_swarm_browser import TTL as BROWSER_TTL
from tests.test_swarm_browser import alpha  # noqa: F401
from tests.test_swarm_link import RowsStandIn, roots, running  # noqa: F401
from tests.test_swarm_serve import TTL, hivectl, swarm
from tests.test_verb_table import _mcp
from tests.waiting import eventually
from tests.worker import AGENT_UID_BASE

# --- the pure half ---------------------------------------------------------------------------------------


def test_subjects_and_the_asking_hive_come_from_the_subject_only() -> None:
    assert so.subject("beta", "alpha") == "hive.beta.ops.alpha"
    assert so.listen_subject("beta") == "hive.beta.ops.*"
    assert so.asking_hive("hive.beta.ops.alpha", "beta") == "alpha"
    for bad in ("hive.gamma.ops.alpha", "hive.beta.mail.alpha", "hive.beta.ops.Alpha", "hive.beta.ops", "x"):
        assert so.asking_hive(bad, "beta") is None, bad
    assert so.reply_ok("_INBOX.alpha.abc.def", "alpha")
    assert not so.reply_ok(None, "alpha")
    for reply in ("", "_INBOX.alphabet.x", "_INBOX.beta.x", "hive.gamma.mail.alpha", "_INBOX.alpha"):
        assert not so.reply_ok(reply, "alpha"), reply


def test_a_call_is_checked_against_the_allowlist_and_its_target() -> None:
    who = so.RemoteOperator(via="host_sock", uid=0, user="root")
    stop = so.check_call(so.OpCall(op="stop", name="coder", graceful=False, operator=who))
    assert so.verb_of(stop) == ("stop", {"scope": {"agent_names": ["coder"]}, "graceful": False})
    pause = so.OpCall(op="pause", name="coder", operator=who)
    assert so.verb_of(pause) == ("set_paused", {"name": "coder", "paused": True})
    assert so.verb_of(so.OpCall(op="deny", id=7, note="no", operator=who)) == (
        "deny",
        {"id": 7, "note": "no"},
    )
    with pytest.raises(Refused, match="not an operation other hives may run"):
        so.check_call(so.OpCall(op="destroy", name="coder", operator=who))
    with pytest.raises(BadInput, match="needs an approval id"):
        so.check_call(so.OpCall(op="approve", name="coder", operator=who))
    with pytest.raises(HiveError):
        so.check_call(so.OpCall(op="kill", name="../etc", operator=who))
    with pytest.raises(BadInput, match="needs an agent name"):
        so.check_call(so.OpCall(op="kill", operator=who))


def test_the_wire_records_decode_defensively() -> None:
    good = {"op": "stop", "name": "coder", "operator": {"via": "dashboard", "session": "s:ab"}}
    call = sw.decode(json.dumps(good).encode(), so.OpCall)
    assert call is not None
    assert call.operator.session == "s:ab"
    # a forged "from" is not a field: ignored (the asking hive is the subject's)
    forged = sw.decode(json.dumps({**good, "from": "alpha", "from_hive": "alpha"}).encode(), so.OpCall)
    assert forged == call
    for bad in (
        {**good, "operator": {"via": "manager_sock"}},
        {**good, "operator": {"via": "host_sock", "uid": -1}},
        {**good, "operator": {"via": "host_sock", "user": "x" * 65}},
        {**good, "operator": {"via": "host_sock", "user": "a\nb"}},
        {"op": "stop", "name": "coder"},
        [1, 2],
    ):
        assert sw.decode(json.dumps(bad).encode(), so.OpCall) is None, bad


def test_the_far_actor_says_operator_via_the_asking_hive_and_who() -> None:
    local = Actor("operator", "dashboard", session="s:0123", client="10.0.0.1")
    far = so.far_actor("alpha", so.RemoteOperator.of(local))
    assert (far.principal, far.via, far.session, far.client) == (
        "operator",
        "hive:alpha/dashboard",
        "s:0123",
        "10.0.0.1",
    )
    assert far.label().startswith("operator via hive:alpha/dashboard (")
    assert so.RemoteOperator.of(None).via == "host_sock"


def test_targets_parse_by_op_and_hivectl_routes_name_at_hive() -> None:
    assert so.parse_target("stop", "coder@beta") == ("beta", "coder", None)
    assert so.parse_target("approve", "7@beta") == ("beta", None, 7)
    with pytest.raises(BadInput, match="ID@HIVE"):
        so.parse_target("approve", "coder@beta")
    with pytest.raises(BadInput):
        so.parse_target("stop", "7x!@beta")
    assert spec.swarm_route("stop", {"scope": {"agent_names": ["coder@beta"]}, "graceful": False}) == (
        "swarm_op",
        {"op": "stop", "target": "coder@beta", "graceful": False},
    )
    assert spec.swarm_route("set_paused", {"name": "c@b", "paused": False}) == (
        "swarm_op",
        {"op": "resume", "target": "c@b"},
    )
    assert spec.swarm_route("approve", {"id": "7@beta"}) == (
        "swarm_op",
        {"op": "approve", "target": "7@beta", "note": None},
    )
    assert spec.swarm_route("approve", {"id": 7}) is None
    assert spec.swarm_route("stop", {"scope": {"agent_names": ["coder"]}}) is None
    with pytest.raises(BadInput, match="one NAME@HIVE at a time"):
        spec.swarm_route("stop", {"scope": {"agent_names": ["a", "c@b"]}})
    with pytest.raises(BadInput, match=r"destroy does not reach another hive .*; run it on hive 'b'"):
        spec.swarm_route("destroy", {"name": "c@b", "purge": True})
    assert spec.swarm_route("destroy", {"name": "c", "purge": True}) is None
    from hivecore.cli import hivectl as cli

    args = cli.build_parser().parse_args(["stop", "a", "coder@beta"])
    with pytest.raises(SystemExit, match="hivectl: stop: name one NAME@HIVE at a time"):
        args.build(args)
    assert so.timeout_for("rebuild", None) == so.REBUILD_TIMEOUT
    assert so.timeout_for("stop", 2.0) == 2.0


def test_operator_hives_flag_and_token_bucket() -> None:
    assert so.operator_hives("alpha, beta,alpha") == ("alpha", "beta")
    assert so.operator_hives(None) == ()
    with pytest.raises(HiveError, match="--swarm-operator-hives"):
        so.operator_hives("alpha,Bad")
    now = [0.0]
    bucket = so.TokenBucket(3, 1.0, lambda: now[0])
    assert [bucket.take("a") for _ in range(4)] == [True, True, True, False]
    assert bucket.take("b")
    now[0] = 1.0
    assert bucket.take("a")
    assert not bucket.take("a")


def test_the_manager_and_agents_cannot_reach_remote_ops() -> None:
    row = spec.BY_KEY["swarm_op"]
    assert row.principals == {"operator"}
    assert row.surfaces == {"host_sock", "hivectl", "dashboard"}


async def test_manager_and_agent_sockets_answer_swarm_op_as_unknown(hive: Daemon) -> None:
    from hivecore.verbs.bind import records

    assert "swarm_op" not in records("manager_sock").values()
    assert "swarm_op" not in records("agent_sock").values()
    request = {"cmd": "swarm_op", "id": 1, "op": "stop", "target": "coder@beta"}
    got = await _mcp(hive.config.manager_socket_path, request)
    assert got["error"].startswith('unknown cmd "swarm_op"'), got


class _Nursery:
    """Records what :meth:`SwarmOps._take` starts (it only admits; the tasks are not run here)."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start_soon(self, fn: Any, *args: Any) -> None:
        self.started.append((getattr(fn, "__name__", ""), *args))


class _Msg:
    def __init__(self, subject: str, reply: str | None) -> None:
        self.subject, self.reply, self.data = subject, reply, b"{}"


def test_admission_drops_forged_replies_and_caps_one_hives_requests_in_flight() -> None:
    ops = SwarmOps(_Link(), ("alpha",), facade=None, clock=lambda: 0.0)
    starts = _Nursery()
    ops._take(starts, None, None, _Msg("hive.beta.ops.alpha", "_INBOX.gamma.x"))  # type: ignore[arg-type]
    ops._take(starts, None, None, _Msg("hive.beta.ops.Alpha", "_INBOX.Alpha.x"))  # type: ignore[arg-type]
    assert (ops.dropped, starts.started) == (2, [])
    for _ in range(so.MAX_IN_FLIGHT + 1):
        ops._take(starts, None, None, _Msg("hive.beta.ops.alpha", "_INBOX.alpha.r"))  # type: ignore[arg-type]
    assert [s[0] for s in starts.started] == ["_serve_one"] * so.MAX_IN_FLIGHT + ["_reply"]
    busy = starts.started[-1][-1]
    assert (busy.ok, busy.status) == (False, 409)
    assert busy.error == "busy: hive beta is carrying out 4 requests from hive alpha"
    assert ops.in_flight == {"alpha": so.MAX_IN_FLIGHT}


class _Link:
    me = "beta"
    state = "connected"
    error = None
    ops: Any = None


async def test_the_far_side_refuses_before_any_verb_runs() -> None:
    ops = SwarmOps(_Link(), ("alpha",), facade=None)
    call = {"op": "stop", "name": "coder", "operator": {"via": "host_sock"}}
    not_listed = await ops.run("gamma", json.dumps(call).encode())
    assert not not_listed.ok
    assert not_listed.status == 409
    assert "operator commands from hive gamma are not taken here" in (not_listed.error or "")
    big = await ops.run("alpha", b"{" + b" " * so.MAX_CALL_BYTES + b"}")
    assert (big.ok, big.status) == (False, 400)
    junk = await ops.run("alpha", b"\xff not json")
    assert (junk.ok, junk.error) == (False, "malformed operator request")
    destroy = await ops.run("alpha", json.dumps({**call, "op": "destroy"}).encode())
    assert not destroy.ok
    assert "not an operation other hives may run" in (destroy.error or "")
    assert ops.refused == 4
    assert ops.served == 0
    [family] = list(ops.families())
    got = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert got == {"served": 0, "refused": 4, "limited": 0, "dropped": 0, "asked": 0}


# --- two real hives ---------------------------------------------------------------------------------------


async def _serve(state_dir: Path, log: Path, nats: NatsServer, name: str, *extra: str) -> trio.Process:
    cmd = [sys.executable, "-m", "hivecore.cli.daemon", "serve", "--state-dir", str(state_dir)]
    cmd += ["--dashboard-port", "0", "--crash-watch-interval", "3600", "--no-ensure-manager"]
    cmd += ["--agent-uid-base", str(AGENT_UID_BASE)]
    cmd += ["--swarm", nats.url, "--hive-name", name, "--swarm-heartbeat-ttl", str(TTL), *extra]
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.DEVNULL, stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )

    async def answers() -> bool:
        assert proc.poll() is None, f"serve exited early; see {log}"
        try:
            return bool((await ask(state_dir, {"cmd": "list"}, 5.0))["ok"])
        except (Unreachable, OSError, ValueError):
            return False

    await eventually(answers, 30, interval=0.05)
    return proc


def _audit(state_dir: Path, verb: str) -> list[dict[str, Any]]:
    out = hivectl(state_dir, "--json", "audit")
    rows: list[dict[str, Any]] = json.loads(out.stdout)["audit"]
    return [r for r in rows if r["verb"] == verb]


async def _running(state_dir: Path, name: str) -> bool | None:
    rows = (await ask(state_dir, {"cmd": "agent_status"}))["agent_statuses"] or []
    return next((bool(r["running"]) for r in rows if r["name"] == name), None)


async def _raw_request(url: str, subject: str, payload: dict[str, Any], inbox: str) -> dict[str, Any] | None:
    """A bare NATS client (a hostile hive on a shared account, on its own asyncio loop in a thread):
    its answer, or None (no answer in 2 s)."""
    import asyncio

    import nats
    import nats.errors

    async def go() -> dict[str, Any] | None:
        nc = await nats.connect(servers=[url], inbox_prefix=inbox)
        try:
            msg = await nc.request(subject, json.dumps(payload).encode(), timeout=2.0)
            answer: dict[str, Any] = json.loads(msg.data)
            return answer
        except nats.errors.TimeoutError:
            return None
        finally:
            await nc.close()

    return await trio.to_thread.run_sync(lambda: asyncio.run(go()))


async def _raw_flood(url: str, subject: str, payload: dict[str, Any], inbox: str, n: int) -> list[str]:
    """``n`` requests at once from one bare client; each answer's error (or ``no answer``)."""
    import asyncio

    import nats
    import nats.errors

    async def one(nc: Any) -> str:
        try:
            msg = await nc.request(subject, json.dumps(payload).encode(), timeout=5.0)
        except nats.errors.TimeoutError:
            return "no answer"
        return str(json.loads(msg.data).get("error"))

    async def go() -> list[str]:
        nc = await nats.connect(servers=[url], inbox_prefix=inbox)
        try:
            return list(await asyncio.gather(*(one(nc) for _ in range(n))))
        finally:
            await nc.close()

    return await trio.to_thread.run_sync(lambda: asyncio.run(go()))


async def _dashboard_post(state_dir: Path, path: str) -> tuple[int, dict[str, Any]]:
    """POST ``path`` to a serve process's dashboard as a bearer client (its operator token)."""
    import httpx

    token = (state_dir / "operator-token").read_text().strip()
    home = (await ask(state_dir, {"cmd": "urls"}))["urls"]["home"]
    async with httpx.AsyncClient(base_url=home, timeout=30) as client:
        resp = await client.post(path, headers={"Authorization": f"Bearer {token}"}, data={})
    answer: dict[str, Any] = resp.json()
    return resp.status_code, answer


async def _metrics(state_dir: Path) -> str:
    import httpx

    token = (state_dir / "operator-token").read_text().strip()
    home = (await ask(state_dir, {"cmd": "urls"}))["urls"]["home"]
    async with httpx.AsyncClient(base_url=home, timeout=30) as client:
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    return resp.text


async def test_operator_reach_between_two_real_hives(
    nats_server: NatsServer, state_dir: Path, tmp_path: Path
) -> None:
    a_dir, b_dir = state_dir / "a", state_dir / "b"
    os.chmod(state_dir, 0o755)  # the confined nix evaluation (another uid) traverses to b's state dir
    a = await _serve(a_dir, tmp_path / "a.log", nats_server, "alpha")
    b = await _serve(b_dir, tmp_path / "b.log", nats_server, "beta", "--swarm-operator-hives", "alpha")
    try:

        async def connected() -> bool:
            return [(await swarm(d))["state"] for d in (a_dir, b_dir)] == ["connected"] * 2

        await eventually(connected, 30, interval=0.05)
        spawned = await ask(b_dir, {"cmd": "spawn", "name": "coder"})
        assert spawned["ok"], spawned
        await eventually(lambda: _running(b_dir, "coder"), 60, interval=0.05)

        # a lists no operator hives: b's request is refused there, clearly, and a audits the attempt
        out = hivectl(b_dir, "stop", "x@alpha")
        assert out.returncode == 1, out
        assert "hive alpha: operator commands from hive beta are not taken here" in out.stderr
        refused = _audit(a_dir, "stop")
        assert [(r["via"], r["outcome"], r["uid"]) for r in refused] == [
            ("hive:beta/host_sock", "refused", 0)
        ]

        # b lists a: the far agent really stops; hivectl answers as for a local stop
        out = hivectl(a_dir, "stop", "coder@beta")
        assert (out.returncode, out.stdout.strip()) == (0, "stopped coder@beta"), out
        assert await _running(b_dir, "coder") is False
        # audited on both sides: a names the remote target, b says operator via hive alpha and who
        [mine] = _audit(a_dir, "swarm_op")
        assert (mine["subject"], mine["outcome"], mine["via"], mine["uid"]) == (
            "coder@beta",
            "ok",
            "host_sock",
            os.getuid(),
        )
        [theirs] = _audit(b_dir, "stop")
        assert (theirs["principal"], theirs["via"], theirs["uid"], theirs["outcome"]) == (
            "operator",
            "hive:alpha/host_sock",
            os.getuid(),
            "ok",
        )
        assert theirs["subject"] == "coder"
        assert 'hivecore_swarm_ops_total{outcome="served"} 1.0' in await _metrics(b_dir)
        assert 'hivecore_swarm_ops_total{outcome="asked"} 1.0' in await _metrics(a_dir)
        assert theirs["jobs"]
        # the dashboard's button on a remote row: the same path, as the logged-in dashboard client
        status, body = await _dashboard_post(a_dir, "/swarm-op/beta/pause/coder")
        assert (status, body) == (200, {"ok": True, "message": "paused coder@beta"})
        [paused] = _audit(b_dir, "set_paused")
        assert paused["via"] == "hive:alpha/dashboard"
        assert (paused["token"] or "").startswith("operator-token sha256:")
        status, body = await _dashboard_post(a_dir, "/swarm-op/beta/destroy/coder")
        assert status == 400
        assert "op must be one of" in body["error"]
        # the verb's own errors come back as that verb's answer
        out = hivectl(a_dir, "restart", "ghost@beta")
        assert out.returncode == 1
        assert out.stderr.strip() == 'hivectl: hive beta: agent "ghost" is not managed by this hive'

        # approvals stay local, decided from the operator hive b trusts
        requested = await ask(b_dir, {"cmd": "request_spawn", "name": "newbie"})
        approval = requested["approval_id"]
        out = hivectl(a_dir, "deny", f"{approval}@beta", "--note", "not now")
        assert (out.returncode, out.stdout.strip()) == (0, f"denied {approval}@beta"), out
        rows = (await ask(b_dir, {"cmd": "approval", "id": approval}))["approvals"]
        assert rows[0]["status"] == "denied"
        assert rows[0]["resolved_by"].startswith("operator via hive:alpha/host_sock uid ")
        [denied] = _audit(b_dir, "deny")
        assert (denied["via"], denied["approvals"]) == ("hive:alpha/host_sock", [approval])

        # a forged payload "from" is ignored: the subject says gamma, and gamma is not listed
        forged = {"op": "stop", "name": "coder", "from": "alpha", "operator": {"via": "host_sock"}}
        answer = await _raw_request(nats_server.url, "hive.beta.ops.gamma", forged, "_INBOX.gamma")
        assert answer is not None
        assert not answer["ok"]
        assert "from hive gamma" in answer["error"]
        # posing as alpha on the subject with a reply subject outside alpha's inbox: no answer at all
        assert await _raw_request(nats_server.url, "hive.beta.ops.alpha", forged, "_INBOX.gamma") is None

        # a flood from one hive: past its bucket each request is answered "rate limited" at once,
        # without a verb, a job or an audit row
        answers = await _raw_flood(nats_server.url, "hive.beta.ops.gamma", forged, "_INBOX.gamma", 60)
        # (and past its 4 requests in flight, "busy")
        limited = [e for e in answers if e.startswith("rate limited: hive beta takes 30 requests")]
        busy = [e for e in answers if e == "busy: hive beta is carrying out 4 requests from hive gamma"]
        not_listed = [e for e in answers if "operator commands from hive gamma are not taken here" in e]
        assert len(limited) + len(busy) + len(not_listed) == 60, answers
        assert len(limited) >= 20, answers
        gamma_rows = [r for r in _audit(b_dir, "stop") if r["via"].startswith("hive:gamma/")]
        assert len(gamma_rows) == 1 + len(not_listed) <= 40

        # b hung (SIGSTOP): a clear timeout; b gone (kill -9): a clear "not connected"
        b.send_signal(signal.SIGSTOP)
        try:
            hung = await ask(
                a_dir, {"cmd": "swarm_op", "op": "resume", "target": "coder@beta", "timeout": 1.5}
            )
        finally:
            b.send_signal(signal.SIGCONT)
        assert not hung["ok"]
        assert hung["error"].startswith("hive beta did not answer within 1.5 s"), hung
        b.send_signal(signal.SIGKILL)
        await b.wait()

        async def gone() -> bool:
            answer = await ask(a_dir, {"cmd": "swarm_op", "op": "resume", "target": "coder@beta"})
            return "not connected to the swarm now" in str(answer.get("error"))

        await eventually(gone, 10, interval=0.1)
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for d in (a_dir, b_dir):
            kill_everything_under(d / "run" / "process")


# --- the dashboard's buttons on a remote row (Chromium) ---------------------------------------------------


@needs_browser
async def test_a_remote_rows_button_asks_that_hive_and_shows_its_answer(
    alpha: Daemon,  # noqa: F811
    browser: BrowserThread,  # noqa: F811
    nats_server: NatsServer,
    roots: Callable[[], Path],  # noqa: F811
) -> None:
    """alpha's page, beta a bare link whose SwarmOps lists no operator hive: ST0P on beta's row posts
    /swarm-op/beta/stop/coder, beta refuses (it does not list alpha), the toast says so."""
    views = RowsStandIn()
    views.set("coder", ContainerView(name="coder", container="h-coder", running=True))
    settings = sw.SwarmSettings(url=nats_server.url, hive_name="beta", heartbeat_ttl=BROWSER_TTL)
    beta = SwarmLink(settings, views, roots())  # type: ignore[arg-type]
    far = SwarmOps(beta, (), facade=None)
    row = "#swarm-hives [data-hive='beta'] .row[data-name='coder']"
    button = f"{row} form[action='/swarm-op/beta/stop/coder'] button"
    async with trio.open_nursery() as n:
        with trio.fail_after(120):
            await running(n, beta)
            link = alpha.swarm
            assert link is not None
            await eventually(lambda: link.state == "connected" and beta.state == "connected", 20)
            page = await browser.new_page(alpha.dashboard_urls[0])
            await browser.run(lambda: page.click(button))
            await browser.run(lambda: page.wait_for_selector("#toasts .toast.err"))
            text = await browser.run(lambda: page.inner_text("#toasts .toast.err"))
            assert text == (
                "hive beta: operator commands from hive alpha are not taken here (add alpha to "
                "beta's --swarm-operator-hives to allow them)"
            )
            assert far.refused == 1
            assert browser.console_errors == []
        n.cancel_scope.cancel()


# --- under per-hive NATS users (docs/swarm.md production setup) -------------------------------------------


async def test_operator_requests_work_under_per_hive_users_and_one_cannot_ask_as_another(
    nats_auth_server: NatsServer,  # noqa: F811
    roots: Callable[[], Path],  # noqa: F811
    nursery: trio.Nursery,  # noqa: F811
) -> None:
    """alpha asks gamma over their own users (the reply crosses by allow_responses into alpha's
    inbox); beta's user can neither ask as alpha nor take replies meant for alpha."""
    from hivecore.wire.host import SwarmOpRequest
    from tests.test_swarm_auth import nats, start_hive

    server = nats_auth_server
    # each SwarmOps attaches before its link's first checkpoint (as the daemon builds them)
    a = await start_hive(nursery, server.url, "alpha", roots(), creds=server.creds("alpha"))
    asking = SwarmOps(a.link, (), facade=None)
    g = await start_hive(nursery, server.url, "gamma", roots(), creds=server.creds("gamma"))
    far = SwarmOps(g.link, (), facade=None)
    try:
        await eventually(lambda: asking._conn is not None and far._conn is not None, 30)
    except AssertionError:  # say why
        links = [(h.link.state, h.link.error, h.link.denied) for h in (a, g)]
        raise AssertionError(f"serving: {asking._conn, far._conn}; links: {links}") from None
    with pytest.raises(Refused, match="hive gamma: operator commands from hive alpha are not taken here"):
        await asking.ask(SwarmOpRequest(op="stop", target="coder@gamma"), None)
    assert far.refused == 1
    password = server.secrets["beta"].partition(":")[2]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    async def as_alpha(nc: Any) -> None:
        import asyncio

        await nc.publish("hive.gamma.ops.alpha", b'{"op":"stop","name":"coder"}', reply="_INBOX.beta.x")
        await nc.subscribe("_INBOX.alpha.>")
        await nc.flush()
        await asyncio.sleep(0.3)

    await nats(
        as_alpha, server.url, user="beta", password=password, inbox_prefix="_INBOX.beta", error_cb=on_error
    )
    text = "\n".join(errors)
    assert 'permissions violation for publish to "hive.gamma.ops.alpha"' in text, text
    assert 'permissions violation for subscription to "_inbox.alpha.>"' in text, text
    assert (far.refused, far.dropped, far.served) == (1, 0, 0)
