"""The dashboard's own gate (issue 14, findings 10 and 14): ``--dashboard-auth none`` serves only a
loopback IP literal or exactly ``localhost`` as Host and is refused with the nixos runtime; the
operator token never reaches the log; failed logins are logged and rate-limited per client."""

from __future__ import annotations

import logging
import stat
from functools import partial
from pathlib import Path

import pytest
import trio

from hivecore.cli.daemon import build_parser, config_from_args
from hivecore.cli.daemon import main as daemon_cli
from hivecore.config import Config, is_loopback
from hivecore.daemon import Daemon, main
from hivecore.errors import HiveError
from tests.conftest import TEST_TOKEN, make_config
from tests.test_dashboard_actions import http_host
from tests.web_client import http
from web.app import daemon_app
from web.auth import MAX_FAILED_LOGINS, LoginThrottle

# --- auth none: which Host names are loopback ------------------------------------------------------

HOSTS = [
    ("127.0.0.1", True),
    ("127.1.2.3", True),
    ("::1", True),
    ("[::1]", True),
    ("localhost", True),
    ("LocalHost", True),
    # DNS names that merely look local: a rebinding attacker controls what they resolve to
    ("127.0.0.1.evil.example", False),
    ("127.evil.example", False),
    ("127.0.0.1.nip.io", False),
    ("localhost.evil.example", False),
    ("localhost.", False),
    ("ip6-localhost", False),
    ("evil-localhost", False),
    ("0.0.0.0", False),
    ("10.0.0.1", False),
    ("[::1].evil", False),
    ("", False),
]


@pytest.mark.parametrize(("host", "loopback"), HOSTS)
def test_only_loopback_literals_and_localhost_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_auth_none_refuses_a_rebound_host_name(state_dir: Path) -> None:
    config = make_config(state_dir, dashboard_auth="none")
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        port = daemon.dashboard_urls[0].rsplit(":", 1)[1]
        for host, loopback in HOSTS:
            if not host or (":" in host and not host.startswith("[")):
                continue  # not a Host header (a bare IPv6 address needs its brackets there)
            header = f"Host: {host}:{port}\r\n"
            status, _, body = await http_host(daemon, "GET", "/api/state", header)
            assert status == (200 if loopback else 403), (host, status, body)
        nursery.cancel_scope.cancel()


def test_auth_none_is_refused_with_the_nixos_runtime(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every local process"):
        Config(state_dir=tmp_path, runtime="nixos", dashboard_auth="none")
    args = build_parser().parse_args(
        ["serve", "--state-dir", str(tmp_path), "--runtime", "nixos", "--dashboard-auth", "none"]
    )
    with pytest.raises(HiveError, match="refused with --runtime nixos"):
        config_from_args(args)
    # token auth with nixos, and none with the process runtime, are still fine
    Config(state_dir=tmp_path, runtime="nixos", dashboard_auth="token")
    Config(state_dir=tmp_path, runtime="process", dashboard_auth="none")


# --- the operator token stays out of the log ----------------------------------------------------------


async def _serve_once(config: Config) -> Daemon:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        nursery.cancel_scope.cancel()
    return daemon


@pytest.mark.parametrize("start", ["first start", "restart", "rotation (token deleted)"])
async def test_the_token_is_never_logged(
    state_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], start: str
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(state_dir)
    token_file = state_dir / "operator-token"
    if start != "first start":
        await _serve_once(config)
        if start.startswith("rotation"):
            token_file.unlink()
        caplog.clear()
    daemon = await _serve_once(config)
    token = token_file.read_text().strip()
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if token in m]
    [hint] = [m for m in logged if "/login" in m]
    assert str(token_file) in hint  # where to find it, instead
    assert "hive-c0re login-url" in hint
    # the operator who can read the file gets a login URL on request
    base = daemon.dashboard_urls[0]
    assert daemon_cli(["login-url", "--state-dir", str(state_dir), "--url", base]) == 0
    assert capsys.readouterr().out == f"{base}/login#token={token}\n"


def test_login_url_needs_the_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon_cli(["login-url", "--state-dir", str(tmp_path)]) == 1
    assert "cannot read the operator token" in capsys.readouterr().err
    secret = tmp_path / "elsewhere"
    secret.write_text("a-secret-that-is-long-enough\n")
    (tmp_path / "operator-token").symlink_to(secret)  # never followed
    assert daemon_cli(["login-url", "--state-dir", str(tmp_path)]) == 1
    assert "a-secret" not in capsys.readouterr().out


# --- failed logins: logged, rate-limited per address ----------------------------------------------------


def test_the_throttle_counts_per_address_in_a_sliding_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=3, window=60.0, max_clients=2, clock=lambda: now[0])
    assert [throttle.failed("a") for _ in range(3)] == [1, 2, 3]
    assert throttle.retry_after("a") == 60
    assert throttle.retry_after("b") == 0  # another address is not affected
    now[0] += 59.5
    assert throttle.retry_after("a") == 1
    now[0] += 0.5
    assert throttle.retry_after("a") == 0  # the oldest failure left the window
    throttle.failed("b")
    throttle.failed("c")  # past max_clients: the oldest address is forgotten, memory stays bounded
    assert len(throttle._failures) == 2


LOGINS = [
    ("POST /login form", "/login", "form"),
    ("POST /login bearer", "/login", "bearer"),
    ("bearer on the API", "/api/state", "bearer"),
]


@pytest.mark.parametrize(("how", "path", "kind"), LOGINS, ids=[x[0] for x in LOGINS])
async def test_failed_logins_are_logged_and_limited(
    hive: Daemon, caplog: pytest.LogCaptureFixture, how: str, path: str, kind: str
) -> None:
    caplog.set_level(logging.INFO)
    wrong = "not-the-token-but-a-guess-0123456789"

    async def attempt(secret: str) -> tuple[int, dict[str, str], bytes]:
        method = "POST" if path == "/login" else "GET"
        if kind == "form":
            return await http(hive, method, path, {"token": secret})
        return await http(hive, method, path, headers=f"Authorization: Bearer {secret}\r\n")

    for _ in range(MAX_FAILED_LOGINS):
        status, _, _ = await attempt(wrong)
        assert status in (401, 403)
    status, headers, body = await attempt(wrong)
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 60
    assert b"too many failed logins" in body
    # while limited, wrong tokens stay refused (429, not counted again as new attempts to log)
    status, _, _ = await attempt(wrong)
    assert status == 429
    # ... and the right one is never throttled: an agent on the same loopback address failing on
    # purpose cannot lock the operator out (a 256-bit token is not guessed; the limit slows noise)
    status, headers, body = await attempt(TEST_TOKEN)
    assert status == 200, body
    if path == "/login":
        assert "hive_session=" in headers.get("set-cookie", "")
    failures = [r for r in caplog.records if "failed login from" in r.getMessage()]
    assert len(failures) == MAX_FAILED_LOGINS
    assert all("127.0.0.1" in r.getMessage() for r in failures)
    assert not [r for r in caplog.records if wrong in r.getMessage() or TEST_TOKEN in r.getMessage()]


# --- the runtime dir -------------------------------------------------------------------------------------


async def test_a_missing_runtime_dir_is_created_0751(state_dir: Path) -> None:
    runtime = state_dir / "r" / "run"
    config = make_config(state_dir, runtime_dir=runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(main, config))
        nursery.cancel_scope.cancel()
    for directory in (state_dir / "r", runtime, runtime / "manager", runtime / "agents"):
        if directory.exists():
            assert stat.S_IMODE(directory.stat().st_mode) == 0o751, directory
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o751
