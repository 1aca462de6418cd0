"""Dashboard auth and actions through a real hypercorn: login, sessions, CSRF, bearer, every POST
route, bad input on each (a clear 4xx JSON error, never a 500), the snapshot's new parts."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from hivecore.config import Config
from hivecore.daemon import Daemon
from tests.conftest import AUTH, TEST_TOKEN
from tests.web_client import http as http  # re-exported: the one HTTP client (tests/web_client.py)
from web import snapshot
from web.auth import ensure_token


def answer(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(body)
    return out


async def login(daemon: Daemon) -> tuple[str, str]:
    """A session cookie header line and its CSRF token."""
    status, headers, _ = await http(daemon, "POST", "/login", {"token": TEST_TOKEN})
    assert status == 200
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    pair = cookie.split(";", 1)[0]
    status, _, body = await http(daemon, "GET", "/api/state", headers=f"Cookie: {pair}\r\n")
    assert status == 200
    csrf = answer(body)["csrf"]
    assert isinstance(csrf, str)
    return f"Cookie: {pair}\r\n", csrf


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> object:
    yield None
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad[0].getMessage()


# --- auth -------------------------------------------------------------------------------------------


async def test_without_auth_the_api_the_stream_and_every_post_are_refused(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    for path in ("/api/state", "/api/dashboard/stream", "/api/logs/coder"):
        status, _, body = await http(hive, "GET", path)
        assert status == 401, path
        assert answer(body)["ok"] is False
    for path in ("/stop/coder", "/kill/coder", "/destroy/coder", "/request-spawn"):
        status, _, _ = await http(hive, "POST", path, {"name": "x2"})
        assert status == 401, path
    assert hive.coordinator.views()["coder"].running
    assert await hive.coordinator.approvals() == []
    status, _, _ = await http(
        hive, "POST", "/stop/coder", headers="Authorization: Bearer wrong-token-xxxxxxxx\r\n"
    )
    assert status == 401
    status, _, _ = await http(hive, "POST", "/login", {"token": "wrong-token-xxxxxxxxxx"})
    assert status == 403
    # the public shell still loads
    assert (await http(hive, "GET", "/"))[0] == 200
    assert (await http(hive, "GET", "/login"))[0] == 200


async def test_a_session_post_needs_the_csrf_token(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    cookie, csrf = await login(hive)
    status, _, body = await http(hive, "POST", "/stop/coder", headers=cookie)
    assert status == 403
    assert "CSRF" in str(answer(body)["error"])
    status, _, _ = await http(hive, "POST", "/stop/coder", {"csrf": "nope"}, headers=cookie)
    assert status == 403
    assert hive.coordinator.views()["coder"].running
    # a cross-origin page cannot post even with the browser's cookie and a guessed header
    status, _, _ = await http(
        hive,
        "POST",
        "/stop/coder",
        headers=cookie + f"X-CSRF-Token: {csrf}\r\nOrigin: http://evil.example\r\n",
    )
    assert status == 403
    status, _, body = await http(hive, "POST", "/stop/coder", headers=cookie + f"X-CSRF-Token: {csrf}\r\n")
    assert status == 200, body
    assert answer(body) == {"ok": True, "message": "coder stopped"}
    assert not hive.coordinator.views()["coder"].running
    status, _, _ = await http(hive, "POST", "/start/coder", {"csrf": csrf}, headers=cookie)
    assert status == 200
    # logging out ends the session
    status, _, _ = await http(hive, "POST", "/logout", headers=cookie + f"X-CSRF-Token: {csrf}\r\n")
    assert status == 200
    assert (await http(hive, "GET", "/api/state", headers=cookie))[0] == 401


async def test_the_token_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    token, created = ensure_token(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == (token, False)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(Exception, match="operator token"):
        ensure_token(link)
    path.write_text("short")
    with pytest.raises(Exception, match="malformed"):
        ensure_token(path)


def test_auth_none_needs_a_loopback_bind(tmp_path: Path) -> None:
    Config(state_dir=tmp_path, dashboard_auth="none", dashboard_host="127.0.0.1")
    with pytest.raises(ValueError, match="loopback"):
        Config(state_dir=tmp_path, dashboard_auth="none", dashboard_host="0.0.0.0")
    from hivecore.cli.daemon import build_parser, config_from_args
    from hivecore.errors import HiveError

    args = build_parser().parse_args(
        ["serve", "--state-dir", str(tmp_path), "--dashboard-auth", "none", "--dashboard-host", "::"]
    )
    with pytest.raises(HiveError, match="loopback"):
        config_from_args(args)


# --- actions ----------------------------------------------------------------------------------------


async def test_lifecycle_actions_with_a_bearer_token(hive: Daemon, no_errors_logged: object) -> None:
    await hive.coordinator.spawn("coder")
    for verb, running in (("stop", False), ("start", True), ("restart", True), ("kill", False)):
        status, _, body = await http(hive, "POST", f"/{verb}/coder", headers=AUTH)
        assert status == 200, (verb, body)
        assert hive.coordinator.views()["coder"].running is running, verb
    status, _, body = await http(hive, "POST", "/destroy/coder", {"purge": "0"}, headers=AUTH)
    assert status == 200, body
    assert [t.name for t in hive.coordinator.tombstones()] == ["coder"]
    status, _, body = await http(hive, "POST", "/purge-tombstone/coder", headers=AUTH)
    assert status == 200, body
    assert hive.coordinator.tombstones() == []


async def test_spawn_request_deny_and_approve(hive: Daemon, no_errors_logged: object) -> None:
    status, _, body = await http(
        hive, "POST", "/request-spawn", {"name": "scout", "description": "<b>look</b>"}, headers=AUTH
    )
    assert status == 200, body
    first = (await hive.coordinator.approvals())[0]
    status, _, body = await http(hive, "POST", f"/deny/{first.id}", {"note": "not now"}, headers=AUTH)
    assert status == 200, body
    denied = (await hive.coordinator.approvals())[0]
    assert (denied.status, denied.note) == ("denied", "not now")
    status, _, body = await http(hive, "POST", f"/deny/{first.id}", headers=AUTH)
    assert status == 409
    assert "already denied" in str(answer(body)["error"])
    await http(hive, "POST", "/request-spawn", {"name": "scout"}, headers=AUTH)
    second = max(a.id for a in await hive.coordinator.approvals())
    status, _, body = await http(hive, "POST", f"/approve/{second}", headers=AUTH)
    assert status == 200, body
    assert hive.coordinator.views()["scout"].running


async def test_op_send_reaches_the_inbox_and_the_snapshot(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    status, _, body = await http(
        hive, "POST", "/op-send", {"to": "@coder", "body": "hello <i>"}, headers=AUTH
    )
    assert status == 200, body
    rows = await hive.store.call(
        lambda c: c.execute("SELECT sender, recipient, body FROM messages WHERE sender='operator'").fetchall()
    )
    assert [tuple(r) for r in rows] == [("operator", "coder", "hello <i>")]
    await hive.broker.send("coder", "operator", "done")
    _, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    state = answer(body)
    mine = [m["body"] for m in state["messages"] if m["from"] != "system"]
    assert mine == ["hello <i>", "done"]
    assert [m["from"] for m in state["operator_inbox"]] == ["coder"]


BAD = [
    ("POST", "/start/nobody", None, 404),
    ("POST", "/stop/Bad..Name", None, 400),
    ("POST", "/start/..", None, 400),
    ("POST", "/start/%2e%2e%2fetc", None, 404),
    ("POST", "/destroy/hm1nd", None, 409),
    ("POST", "/approve/abc", None, 400),
    ("POST", "/approve/-1", None, 400),
    ("POST", "/approve/99999", None, 404),
    ("POST", "/deny/1" + "0" * 30, None, 400),
    ("POST", "/request-spawn", {}, 400),
    ("POST", "/request-spawn", {"name": "../x"}, 400),
    ("POST", "/op-send", {"to": "coder"}, 400),
    ("POST", "/op-send", {"to": "nobody", "body": "hi"}, 400),
    ("POST", "/op-send", {"body": "hi"}, 400),
    ("POST", "/meta-update", {}, 400),
    ("POST", "/meta-update", {"inputs": "../etc,a"}, 400),
    ("POST", "/purge-tombstone/coder", None, 409),
    ("POST", "/nope", None, 404),
    ("GET", "/start/coder", None, 405),
    ("GET", "/api/logs/nobody", None, 404),
    ("GET", "/api/logs/..", None, 400),
]


@pytest.mark.parametrize(("method", "path", "form", "want"), BAD)
async def test_bad_input_gets_a_clear_json_error(
    hive: Daemon, no_errors_logged: object, method: str, path: str, form: dict[str, str] | None, want: int
) -> None:
    await hive.coordinator.spawn("coder")
    status, headers, body = await http(hive, method, path, form if form is not None else b"", headers=AUTH)
    assert status == want, body
    assert headers["content-type"].startswith("application/json")
    error = answer(body)
    assert error["ok"] is False
    assert isinstance(error["error"], str)
    assert error["error"]
    assert "Traceback" not in error["error"]
    assert hive.coordinator.views()["coder"].running


async def test_an_oversized_body_is_a_413(hive: Daemon, no_errors_logged: object) -> None:
    await hive.coordinator.spawn("coder")
    status, _, body = await http(
        hive, "POST", "/op-send", {"to": "coder", "body": "x" * 400_000}, headers=AUTH
    )
    assert status == 413
    assert "too large" in str(answer(body)["error"])
    rows = await hive.store.call(
        lambda c: c.execute("SELECT count(*) FROM messages WHERE sender='operator'").fetchone()[0]
    )
    assert rows == 0


# --- snapshot ---------------------------------------------------------------------------------------


async def test_the_snapshot_has_every_section(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    await hive.coordinator.request_spawn("scout", "a scout")
    _, _, body = await http(hive, "GET", "/api/state", headers=AUTH)
    state = answer(body)
    for key in (
        "seq",
        "containers",
        "tombstones",
        "transients",
        "rebuild_queue",
        "meta_inputs",
        "meta_update_running",
        "any_stale",
        "approvals",
        "messages",
        "operator_inbox",
        "server_warnings",
        "actors",
        "event_kinds",
    ):
        assert key in state, key
    assert [a["agent"] for a in state["approvals"]] == ["scout"]
    assert state["csrf"] is None  # a bearer client needs none
    assert isinstance(state["server_warnings"], list)


def test_disk_warnings_levels(tmp_path: Path) -> None:
    assert snapshot.disk_warnings([("here", tmp_path)], warn_at=1.01, crit_at=1.02) == []
    [warn] = snapshot.disk_warnings([("here", tmp_path), ("again", tmp_path)], warn_at=0.0, crit_at=1.01)
    assert warn["level"] == "warn"
    assert warn["kind"] == "disk"
    assert "here" in warn["message"]
    [crit] = snapshot.disk_warnings([("here", tmp_path)], warn_at=0.0, crit_at=0.0)
    assert crit["level"] == "crit"
    assert snapshot.disk_warnings([("gone", tmp_path / "missing")], warn_at=0.0) == []


async def test_the_log_tail_reads_agent_log_and_never_a_symlink(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    await hive.coordinator.stop("coder")  # its shim writes agent.log no more
    run_dir = hive.config.paths.agent_run("coder")
    (run_dir / "agent.log").write_text("line one\nline two\n")
    status, _, body = await http(hive, "GET", "/api/logs/coder", headers=AUTH)
    assert status == 200
    assert answer(body)["lines"] == ["line one", "line two"]
    secret = hive.config.paths.root / "secret"
    secret.write_text("root only\n")
    os.unlink(run_dir / "agent.log")
    (run_dir / "agent.log").symlink_to(secret)
    status, _, body = await http(hive, "GET", "/api/logs/coder", headers=AUTH)
    assert status == 409
    assert b"root only" not in body


async def test_the_first_start_writes_the_token_and_logs_where_it_is(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from functools import partial

    from hivecore.daemon import main
    from tests.conftest import make_config
    from web.app import daemon_app

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, make_config(state_dir), web_factory=daemon_app))
        token_file = state_dir / "operator-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        logged = [r.getMessage() for r in caplog.records if "/login" in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].startswith(f"dashboard login: {daemon.dashboard_urls[0]}/login (first start")
        assert str(token_file) in logged[0]
        assert all(token not in r.getMessage() for r in caplog.records)  # the token is never logged
        status, _, _ = await http(daemon, "GET", "/api/state", headers=f"Authorization: Bearer {token}\r\n")
        assert status == 200
        nursery.cancel_scope.cancel()


async def test_auth_none_serves_loopback_names_only_and_still_wants_csrf(state_dir: Path) -> None:
    from functools import partial

    from hivecore.daemon import main
    from tests.conftest import make_config
    from web.app import daemon_app

    config = make_config(state_dir, dashboard_auth="none")
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        await daemon.coordinator.spawn("coder")
        assert not (state_dir / "operator-token").exists()
        status, _, body = await http(daemon, "GET", "/api/state", headers="X-Ignored: 1\r\n")
        assert status == 403  # Host: x is not a loopback name (a DNS-rebound page would send its own)
        local = "Host: 127.0.0.1\r\n"
        status, _, body = await http_host(daemon, "GET", "/api/state", local)
        assert status == 200
        csrf = answer(body)["csrf"]
        assert isinstance(csrf, str)
        status, _, _ = await http_host(daemon, "POST", "/stop/coder", local)
        assert status == 403
        assert daemon.coordinator.views()["coder"].running
        status, _, _ = await http_host(daemon, "POST", "/stop/coder", local + f"X-CSRF-Token: {csrf}\r\n")
        assert status == 200
        nursery.cancel_scope.cancel()


async def http_host(
    daemon: Daemon, method: str, path: str, headers: str
) -> tuple[int, dict[str, str], bytes]:
    """Like :func:`http`, with the caller's Host header (in ``headers``)."""
    return await http(daemon, method, path, headers=headers)
