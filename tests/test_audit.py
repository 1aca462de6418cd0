"""The audit trail (issue 19 items 1 and 6): who did what on every surface, the hash chain and its
``--verify``, redaction, the approval history's "who", and retention with a checkpoint.

The end-to-end test drives a real daemon: hivectl over host.sock as root and as ``nobody`` with the
admin group, the dashboard with a session and with the bearer token, and the manager socket.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import sqlite3
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore import audit as au
from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.models import Job, JobState
from hivecore.wire.events import ApprovalAttributed
from tests.conftest import TEST_TOKEN, call, make_config, write_test_token
from tests.test_dashboard_actions import login
from tests.waiting import eventually
from tests.web_client import http

ADMIN_GROUP = "daemon"
"""A group every test machine has: host.sock's group here, so ``nobody`` with it may connect."""
NOBODY = 65534


# --- the chain, on a bare database -----------------------------------------------------------------


def _db(tmp_path: Path) -> sqlite3.Connection:
    return st.connect(tmp_path / "hive.db")


def _add(conn: sqlite3.Connection, verb: str, at: float, **args: Any) -> int:
    actor = au.Actor("operator", "host_sock", uid=0, user="root")
    return au.append(conn, au.content_of(actor, verb, args, "ok", at=at))


def test_an_edited_row_is_named_by_verify(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    seqs = [_add(conn, "destroy", 1000.0 + i, name=f"a{i}") for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    good = au.verify(conn)
    assert (good.ok, good.rows) == (True, 5)
    conn.execute("UPDATE audit SET subject = 'someone-else' WHERE seq = 3")
    bad = au.verify(conn)
    assert (bad.ok, bad.bad_seq) == (False, 3)
    assert "edited" in (bad.reason or "")


def test_a_removed_row_and_a_rewritten_hash_are_caught(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    for i in range(4):
        _add(conn, "stop", 1000.0 + i, name="coder")
    conn.execute("DELETE FROM audit WHERE seq = 2")
    assert au.verify(conn).bad_seq == 3  # its link points at the removed row
    conn2 = _db(tmp_path / "b")
    for i in range(3):
        _add(conn2, "stop", 1000.0 + i, name="coder")
    conn2.execute("UPDATE audit SET verb = 'start', hash = 'f00' WHERE seq = 2")
    assert au.verify(conn2).bad_seq == 2
    conn3 = _db(tmp_path / "c")
    for i in range(3):
        _add(conn3, "stop", 1000.0 + i, name="coder")
    conn3.execute("DELETE FROM audit WHERE seq = 1")
    found = au.verify(conn3)
    assert found.bad_seq == 2
    assert "removed" in (found.reason or "")


def test_retention_keeps_a_verifiable_chain_from_a_checkpoint(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    for i in range(6):
        _add(conn, "restart", 1000.0 + i, name="coder")
    last_hash = au.verify(conn).last_hash
    done = au.vacuum(conn, cutoff=1003.5)  # rows 1-4 are older
    assert done.audit_rows == 4
    rows = conn.execute("SELECT seq, checkpoint FROM audit ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [(4, 1), (5, 0), (6, 0)]
    kept = au.verify(conn)
    assert (kept.ok, kept.checkpoint_seq, kept.last_hash) == (True, 4, last_hash)
    # a later row still chains on, a second vacuum folds the checkpoint into a new one
    _add(conn, "kill", 2000.0, name="coder")
    assert au.vacuum(conn, cutoff=1010.0).audit_rows == 2
    checkpoint = au.read(conn)[0]
    assert checkpoint.checkpoint
    assert checkpoint.args == {"dropped_rows": 6, "through_seq": 6}
    assert au.verify(conn).ok
    assert au.vacuum(conn, cutoff=1010.0).audit_rows == 0  # nothing more to drop: unchanged
    assert au.verify(conn).ok
    # an edit after a vacuum is still caught; so is dropping the checkpoint
    conn.execute("UPDATE audit SET outcome = 'refused' WHERE seq = 7")
    assert au.verify(conn).bad_seq == 7
    conn.execute("UPDATE audit SET outcome = 'ok' WHERE seq = 7")
    assert au.verify(conn).ok
    conn.execute("DELETE FROM audit WHERE checkpoint = 1")
    assert au.verify(conn).bad_seq == 7


def test_retention_drops_old_finished_jobs_only(tmp_path: Path) -> None:
    conn = _db(tmp_path)

    def job(id_: int, state: JobState, finished: float | None) -> None:
        st.journal_job(
            conn,
            Job(
                id=id_,
                kind="restart",
                agent="coder",
                source="host_sock",
                state=state,
                queued_at=100.0,
                finished_at=finished,
            ),
        )

    job(1, "done", 100.0)
    job(2, "running", None)
    job(3, "failed", 5000.0)
    job(4, "done", 200.0)  # old, but the newest row: kept (job ids continue from it)
    assert au.vacuum(conn, cutoff=1000.0).jobs == 1
    assert [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY id")] == [2, 3, 4]


def test_secrets_are_redacted() -> None:
    from hivecore.wire.host import AgentEnvRequest, LoginRequest

    login_args = au.redacted_args(LoginRequest(name="coder", secret="sk-ant-secret-value"))
    assert login_args == {"name": "coder", "secret": au.REDACTED}
    env = au.redacted_args(AgentEnvRequest(name="coder", set={"API_KEY": "hunter2"}, unset=["OLD"]))
    assert env == {"name": "coder", "set": {"API_KEY": au.REDACTED}, "unset": ["OLD"]}
    assert "hunter2" not in json.dumps(env)


# --- end to end ----------------------------------------------------------------------------------------


@pytest.fixture
async def admin_hive(state_dir: Path) -> AsyncIterator[Daemon]:
    """A running daemon whose host.sock (and state root) belong to :data:`ADMIN_GROUP`."""
    from hivecore.daemon import main
    from web.app import daemon_app

    write_test_token(state_dir)
    config = make_config(state_dir, admin_group=ADMIN_GROUP)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


async def hivectl(hive: Daemon, *args: str, uid: int | None = None) -> tuple[int, str, str]:
    """Run hivectl (as ``uid`` with the admin group, when given): exit code, stdout, stderr."""
    extra: dict[str, Any] = {}
    if uid is not None:
        extra = {"user": uid, "group": uid, "extra_groups": [grp.getgrnam(ADMIN_GROUP).gr_gid]}
    done = await trio.run_process(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(hive.config.host_socket_path), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        **extra,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def ok(hive: Daemon, *args: str, uid: int | None = None) -> str:
    code, out, err = await hivectl(hive, *args, uid=uid)
    assert code == 0, (args, out, err)
    return out


def approval_id(out: str) -> int:
    return int(out.rsplit("(approval ", 1)[1].split(")")[0])


async def dash(hive: Daemon, path: str, headers: str, form: dict[str, str] | None = None) -> dict[str, Any]:
    status, _, body = await http(hive, "POST", path, form or {}, headers=headers)
    answer: dict[str, Any] = json.loads(body)
    assert status == 200, (path, answer)
    return answer


def dash_approval(answer: dict[str, Any]) -> int:
    return int(str(answer["message"]).rsplit("(approval ", 1)[1].split(")")[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="plays a second local uid (root only)")
async def test_every_surface_names_its_principal_and_verify_names_an_edited_row(
    admin_hive: Daemon,
) -> None:
    hive = admin_hive
    nobody = pwd.getpwuid(NOBODY).pw_name
    attributed = hive.coordinator.subscribe(["approval_attributed"])  # the live "by", checked below
    # host.sock as root and as nobody (the admin group): spawn, approve a requested spawn, deny one,
    # destroy
    for _who, uid, tag in (("root", None, "r"), (nobody, NOBODY, "n")):
        await ok(hive, "spawn", f"{tag}sp", uid=uid)
        first = approval_id(await ok(hive, "request-spawn", f"{tag}ap", uid=uid))
        await ok(hive, "approve", str(first), uid=uid)
        second = approval_id(await ok(hive, "request-spawn", f"{tag}dn", uid=uid))
        await ok(hive, "deny", str(second), "--note", "not now", uid=uid)
        await ok(hive, "destroy", f"{tag}sp", uid=uid)
        await ok(hive, "list", uid=uid)  # a read: not audited
    # the dashboard with a session, and with the bearer token
    cookie, csrf = await login(hive)
    session = cookie + f"X-CSRF-Token: {csrf}\r\n"
    bearer = f"Authorization: Bearer {TEST_TOKEN}\r\n"
    for headers, tag in ((session, "s"), (bearer, "b")):
        first = dash_approval(await dash(hive, "/request-spawn", headers, {"name": f"{tag}ap"}))
        await dash(hive, f"/approve/{first}", headers)
        second = dash_approval(await dash(hive, "/request-spawn", headers, {"name": f"{tag}dn"}))
        await dash(hive, f"/deny/{second}", headers, {"note": "no"})
        await dash(hive, f"/destroy/{tag}ap", headers)
    # the manager socket (this test plays the manager: as root)
    asked = await call(hive.config.manager_socket_path, {"cmd": "request_spawn", "name": "mgr"})
    assert asked["ok"], asked
    await ok(hive, "approve", str(asked["approval_id"]))
    refused = await call(hive.config.manager_socket_path, {"cmd": "kill", "name": "nosuch"})
    assert not refused["ok"]
    # a secret never reaches the trail
    await hivectl(hive, "env", "rap", "API_TOKEN=hunter2-secret")

    code, out, err = await hivectl(hive, "--json", "audit", "--limit", "1000")
    assert code == 0, err
    document = json.loads(out)  # one JSON document
    rows: list[dict[str, Any]] = document["audit"]
    assert "hunter2-secret" not in out
    by = {(r["verb"], r.get("subject")): r for r in rows}

    def row(verb: str, subject: str) -> dict[str, Any]:
        found = by.get((verb, subject))
        assert found is not None, f"no {verb} {subject} row in {sorted(by)}"
        assert found["outcome"] == "ok", found
        return found

    for tag, uid, user in (("r", 0, "root"), ("n", NOBODY, nobody)):
        for verb, subject in (("spawn", f"{tag}sp"), ("request_spawn", f"{tag}ap"), ("destroy", f"{tag}sp")):
            r = row(verb, subject)
            who = (r["principal"], r["via"], r["uid"], r.get("user"))
            assert who == ("operator", "host_sock", uid, user), r
            assert isinstance(r["uid"], int)
        assert row("spawn", f"{tag}sp").get("jobs"), "a spawn produced a job"
    approves = [r for r in rows if r["verb"] == "approve"]
    denies = [r for r in rows if r["verb"] == "deny"]
    assert [r.get("uid") for r in approves if r["via"] == "host_sock"] == [0, NOBODY, 0]
    assert [r.get("uid") for r in denies if r["via"] == "host_sock"] == [0, NOBODY]
    assert all(r.get("approvals") and r.get("jobs") for r in approves), approves
    session_rows = [
        r
        for r in rows
        if r["via"] == "dashboard" and r.get("session") and not r["verb"].startswith("dashboard_")
    ]
    bearer_rows = [r for r in rows if r["via"] == "dashboard" and r.get("token")]
    assert sorted(r["verb"] for r in session_rows) == [
        "approve",
        "deny",
        "destroy",
        "request_spawn",
        "request_spawn",
    ]
    assert sorted(r["verb"] for r in bearer_rows) == [
        "approve",
        "deny",
        "destroy",
        "request_spawn",
        "request_spawn",
    ]
    assert [r["verb"] for r in rows if r["verb"].startswith("dashboard_")] == ["dashboard_login"]
    login_row = next(r for r in rows if r["verb"] == "dashboard_login")
    assert login_row["session"] == session_rows[0]["session"]
    for r in session_rows:
        assert r["session"].startswith("s:")
        assert r.get("session_login")
        assert r.get("client")
    assert len({r["session"] for r in session_rows}) == 1
    assert csrf not in out
    assert cookie.split("=", 1)[1].strip() not in out
    assert all(r["token"].startswith("operator-token sha256:") and r.get("client") for r in bearer_rows)
    assert TEST_TOKEN not in out
    manager = row("request_spawn", "mgr")
    assert (manager["principal"], manager["via"], manager["uid"]) == ("manager", "manager_sock", 0)
    assert manager["approvals"] == [asked["approval_id"]]
    kill = by[("kill", "nosuch")]
    assert (kill["principal"], kill["outcome"]) == ("manager", "refused")
    env = by[("agent_env", "rap")]
    assert env["args"]["set"] == {"API_TOKEN": au.REDACTED}
    assert not [r for r in rows if r["verb"] in ("list", "pending", "agent_status", "audit")]
    # the approval history says who approved or denied
    history = json.loads((await hivectl(hive, "--json", "pending", "--all"))[1])["approvals"]
    resolved = {a["agent"]: a.get("resolved_by") or "" for a in history}
    assert f"uid {NOBODY} {nobody}" in resolved["nap"]
    assert "host_sock" in resolved["nap"]
    assert "session s:" in resolved["sdn"]
    assert "operator-token sha256:" in resolved["bap"]
    assert "uid 0 root" in resolved["rdn"]
    # the live event said the same as the reload, for every approve and deny (each once)
    decided = {a["id"]: a["resolved_by"] for a in history if a["status"] != "pending"}
    live: dict[int, str] = {}
    with attributed, trio.fail_after(10):
        while len(live) < len(decided):
            event = await attributed.receive()
            assert isinstance(event, ApprovalAttributed)
            assert event.id not in live, event
            live[event.id] = event.resolved_by
    assert live == decided
    # the chain verifies; one edited row makes --verify exit non-zero naming it
    code, out, err = await hivectl(hive, "audit", "--verify")
    assert code == 0, err
    assert "verified" in out
    target = denies[1]["seq"]  # nobody's, over host.sock
    db = sqlite3.connect(hive.config.paths.db)
    try:
        db.execute("UPDATE audit SET uid = 0, user = 'root' WHERE seq = ?", (target,))
        db.commit()
    finally:
        db.close()
    code, out, err = await hivectl(hive, "audit", "--verify")
    assert code == 1
    assert f"row {target} does not match" in err
    # the dashboard's paged read says the same, and only with credentials
    status, _, body = await http(hive, "GET", "/api/audit?verify=1", headers=bearer)
    assert status == 200
    verified = json.loads(body)["verified"]
    assert (verified["ok"], verified["bad_seq"]) == (False, target)
    status, _, body = await http(hive, "GET", "/api/audit?limit=5", headers=bearer)
    page = json.loads(body)
    assert [r["seq"] for r in page["rows"]] == [r["seq"] for r in rows[-5:]]
    status, _, body = await http(hive, "GET", f"/api/audit?limit=5&before={page['before']}", headers=bearer)
    assert [r["seq"] for r in json.loads(body)["rows"]] == [r["seq"] for r in rows[-10:-5]]
    assert (await http(hive, "GET", "/api/audit"))[0] == 401
    assert (await http(hive, "GET", "/api/audit?limit=0", headers=bearer))[0] == 400
    # the table view and --agent
    code, out, err = await hivectl(hive, "audit", "--agent", "nsp")
    assert code == 0, err
    assert "spawn" in out
    assert "destroy" in out
    assert "rsp" not in out


async def test_the_hourly_sweep_keeps_the_retention_and_a_replay_is_recorded(state_dir: Path) -> None:
    """Old rows before a start: the broker's sweep (at start, then hourly) drops them behind a
    checkpoint; a job a stop interrupted is replayed and recorded as the daemon's own action."""
    from hivecore.daemon import main

    config = make_config(state_dir, retention_days=30.0)
    config.paths.create_layout()
    conn = st.connect(config.paths.db)
    for i in range(3):
        _add(conn, "restart", 1000.0 + i, name="old")
    interrupted = Job(id=7, kind="stop", agent="ghost", source="host_sock", state="running", queued_at=1.0)
    st.journal_job(conn, interrupted)
    conn.close()
    async with trio.open_nursery() as nursery:
        hive: Daemon = await nursery.start(partial(main, config))
        assert hive.audit is not None
        audit_log = hive.audit

        async def both() -> bool:
            got = await audit_log.read()
            return any(r.checkpoint for r in got) and any(r.verb == "crash_recover" for r in got)

        await eventually(both, what="the checkpoint and the crash_recover row")
        kept = await audit_log.read()
        assert kept[0].checkpoint
        assert kept[0].args == {"dropped_rows": 3, "through_seq": 3}
        replay = next(r for r in kept if r.verb == "crash_recover")
        assert (replay.principal, replay.via, replay.subject) == ("daemon", "daemon", "ghost")
        assert replay.jobs[0] == 7
        assert len(replay.jobs) == 2
        assert (await audit_log.verify()).ok
        # the alarms actor's raises, clears and holds reach the trail through its hook
        assert hive.alarm_watch.record is not None
        await hive.alarm_watch.record("alarm_raised", {"key": "test", "agent": "ghost"})
        alarm = (await audit_log.read(agent="ghost"))[-1]
        assert (alarm.verb, alarm.principal) == ("alarm_raised", "daemon")
        nursery.cancel_scope.cancel()


async def test_a_flooding_agent_is_counted_not_kept(tmp_path: Path) -> None:
    """A manager or agent socket past its row budget leaves one ``audit_suppressed`` row with the
    count, not a row per request; the operator's rows are never budgeted."""
    from hivecore.services.audit import AuditLog
    from hivecore.store import Store
    from hivecore.wire.agent import SetStatusRequest

    now = [1000.0]
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path / "hive.db").run)
        log = AuditLog(store, clock=lambda: now[0], budget=(5, 1.0))
        agent = au.Actor("agent", "agent_sock", uid=1234, agent="coder")
        for i in range(12):
            await log.verb(agent, "set_status", SetStatusRequest(text=f"busy {i}"), None, None, [])
        operator = au.Actor("operator", "host_sock", uid=0, user="root")
        for _ in range(12):
            await log.append(operator, "stop", {"name": "coder"}, "ok")
        assert log.suppressed == 7
        now[0] += 2.0  # two rows' worth of budget back
        await log.verb(agent, "set_status", SetStatusRequest(text="later"), None, None, [])
        rows = await log.read(agent="coder", limit=1000)
        by_agent = [r for r in rows if r.principal == "agent"]
        assert [r.verb for r in by_agent] == ["set_status"] * 5 + ["audit_suppressed", "set_status"]
        assert by_agent[5].args["rows"] == 7
        assert by_agent[-1].args == {"text": "later"}
        assert len([r for r in rows if r.principal == "operator"]) == 12
        assert (await log.verify()).ok
        nursery.cancel_scope.cancel()


async def test_a_spent_budget_cannot_hide_an_action(tmp_path: Path) -> None:
    """A socket that spent its row budget on cheap calls (``recv``) still leaves a row for every
    call that did something the operator must be able to trace (it produced a job or acted on an
    approval): a hostile manager cannot flood first and ``kill`` an agent unrecorded. Refused calls
    stay budgeted, and the ``audit_suppressed`` row says which verbs were left out."""
    from hivecore.errors import Refused
    from hivecore.services.audit import AuditLog
    from hivecore.store import Store
    from hivecore.wire.agent import SetStatusRequest

    now = [1000.0]
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path / "hive.db").run)
        log = AuditLog(store, clock=lambda: now[0], budget=(3, 1.0))
        manager = au.Actor("manager", "manager_sock", uid=1234, agent="hm1nd")
        for i in range(5):
            await log.verb(manager, "set_status", SetStatusRequest(text=f"spam {i}"), None, None, [])
        await log.verb(manager, "kill", SetStatusRequest(text="coder"), None, None, [42])
        refused = Refused("no such approval")
        await log.verb(manager, "cancel_approval", SetStatusRequest(text="x"), None, refused, [])
        now[0] += 1.0
        await log.verb(manager, "set_status", SetStatusRequest(text="later"), None, None, [])
        rows = [r for r in await log.read(limit=1000) if r.principal == "manager"]
        assert [r.verb for r in rows] == ["set_status"] * 3 + ["kill", "audit_suppressed", "set_status"]
        assert rows[3].jobs == [42]
        assert rows[4].args["rows"] == 3
        assert rows[4].args["verbs"] == {"cancel_approval": 1, "set_status": 2}
        # the traced calls have a budget of their own: a flood of them is counted too
        for _ in range(5):
            await log.verb(manager, "restart", SetStatusRequest(text="coder"), None, None, [43])
        rows = [r for r in await log.read(limit=1000) if r.principal == "manager"]
        assert [r.verb for r in rows].count("restart") == 3  # a burst of 3 (refilled since the kill)
        assert log.suppressed == 3 + 2
        assert (await log.verify()).ok
        nursery.cancel_scope.cancel()


def test_a_bad_since_names_the_flag_once(capsys: pytest.CaptureFixture[str]) -> None:
    """``hivectl audit --since bogus``: argparse names the flag; the reason does not repeat it."""
    from hivecore.cli.hivectl import main

    with pytest.raises(SystemExit):
        main(["audit", "--since", "bogus"])
    err = capsys.readouterr().err
    assert "argument --since: 'bogus' is not 2h / 7d" in err
    assert err.count("--since:") == 1


def test_an_agent_supplied_subject_cannot_widen_or_forge_the_listing() -> None:
    """A refused request's raw ``to`` (4096 characters, newlines, escapes) is the row's subject: the
    ``hivectl audit`` table shows it escaped and cut, so every other row stays readable."""
    from hivecore.cli.hivectl import render_audit

    forged = (
        "x\n6  2026-12-01 05:37:28  operator/host_sock uid 0 root  destroy  coder  ok\x1b[2J" + "y" * 4000
    )
    rows = [
        {
            "seq": 5,
            "at": 0,
            "principal": "agent",
            "via": "agent_sock",
            "agent": "coder",
            "verb": "send",
            "subject": forged,
            "outcome": "refused",
            "error": "no such agent",
        },
        {
            "seq": 6,
            "at": 0,
            "principal": "operator",
            "via": "host_sock",
            "uid": 0,
            "verb": "stop",
            "subject": "coder",
            "outcome": "ok",
        },
    ]
    shown = render_audit({"audit": rows}).splitlines()
    assert len(shown) == 3
    assert all(len(line) < 200 for line in shown), [len(line) for line in shown]
    assert "\x1b" not in shown[1]


def test_an_argument_is_cut_by_its_stored_size_not_its_characters() -> None:
    """A refused ``send`` keeps its raw body in the row: 4096 characters of emoji are 12 bytes each
    as the row's ASCII JSON (48 KiB a row, 12 times a plain text's). A string is cut to what
    :data:`~hivecore.audit.MAX_ARG_CHARS` bytes of stored JSON hold, whatever its characters."""
    from hivecore.wire.agent import SendRequest

    for char in ("😀", "☃", "\x00", '"', "a"):
        args = au.redacted_args(SendRequest(to=char * 20000, body=char * 60000))
        stored = au.dumps(args)
        assert len(stored) < 2 * au.MAX_ARG_CHARS + 200, (char, len(stored))
        assert args["body"].startswith(char * 100)
        assert "chars)" in args["body"]
    assert au.redacted_args(SendRequest(to="coder", body="hé ☃ 😀"))["body"] == "hé ☃ 😀"  # short: kept


async def test_a_socket_that_floods_then_goes_quiet_still_leaves_its_count(tmp_path: Path) -> None:
    """The ``audit_suppressed`` row of a flood is written at the next read (``hivectl audit``) or
    hourly sweep, not only before the flooder's next kept row, which may never come."""
    from hivecore.services.audit import AuditLog
    from hivecore.store import Store
    from hivecore.wire.agent import SetStatusRequest

    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(tmp_path / "hive.db").run)
        log = AuditLog(store, clock=lambda: 1000.0, budget=(2, 1.0))
        agent = au.Actor("agent", "agent_sock", uid=1234, agent="coder")
        for i in range(6):
            await log.verb(agent, "set_status", SetStatusRequest(text=f"busy {i}"), None, None, [])
        rows = await log.read()
        assert [r.verb for r in rows] == ["set_status", "set_status", "audit_suppressed"]
        assert rows[-1].args["verbs"] == {"set_status": 4}
        assert [r.verb for r in await log.read()] == [r.verb for r in rows]  # written once
        assert (await log.verify()).ok
        nursery.cancel_scope.cancel()


def test_only_an_approvals_id_is_recorded_as_an_approval() -> None:
    """``hivectl answer 1 yes`` showed ``approval 1`` in the audit's PRODUCED column (and joined
    approval 1's trail): a question's, reminder's or schedule's id is not an approval's."""
    from hivecore.services.audit import approvals_of

    assert approvals_of({"id": 3}, None, "approve") == [3]
    assert approvals_of({"id": 3, "note": "no"}, None, "deny") == [3]
    assert approvals_of({"id": 3}, None, "cancel_approval") == [3]
    for verb in ("answer", "cancel_question", "cancel_reminder", "unschedule", "release"):
        assert approvals_of({"id": 3}, None, verb) == [], verb
