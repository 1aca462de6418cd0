"""Identities cannot be borrowed (issue 14, finding 9): every sender or recipient word the daemon
uses is refused as an agent name on every surface that names a new agent; ``hm1nd`` keeps working
as the manager's own name."""

from __future__ import annotations

import pytest

from hivecore.daemon import Daemon
from hivecore.errors import InvalidName
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.services.broker import OPERATOR
from tests.conftest import AUTH, call
from tests.test_dashboard_actions import answer
from tests.test_host_socket import ask as host_ask
from tests.web_client import http

WORDS = ["manager", "operator", "reminder", "system"]
"""The daemon's own words (RESERVED_NAMES but the manager's own name), spelled out: the test must
fail where the list is missing."""


def test_the_list_holds_every_word_the_daemon_uses() -> None:
    from hivecore.names import RESERVED_NAMES

    assert {"system", "operator", "manager", "hm1nd", "reminder"} <= RESERVED_NAMES
    assert OPERATOR in RESERVED_NAMES


@pytest.mark.parametrize("word", WORDS)
def test_a_reserved_word_is_not_an_agent_name(word: str) -> None:
    with pytest.raises(InvalidName, match="reserved for the daemon's own identities"):
        validate_name(word)


def test_the_manager_keeps_its_own_name() -> None:
    assert validate_name(MANAGER_NAME) == MANAGER_NAME


async def _host_sock(hive: Daemon, cmd: str, word: str) -> str:
    got = await host_ask(hive.config.host_socket_path, {"cmd": cmd, "name": word})
    assert got["ok"] is False, got
    return str(got["error"])


async def _manager_sock(hive: Daemon, cmd: str, word: str) -> str:
    got = await call(hive.config.manager_socket_path, {"cmd": cmd, "name": word})
    assert got["ok"] is False, got
    return str(got["error"])


async def _dashboard(hive: Daemon, _cmd: str, word: str) -> str:
    status, _, body = await http(hive, "POST", "/request-spawn", {"name": word}, headers=AUTH)
    assert status in (400, 409), body
    return str(answer(body)["error"])


SURFACES = [
    ("host.sock spawn", _host_sock, "spawn"),
    ("host.sock request_spawn", _host_sock, "request_spawn"),
    ("manager request_spawn", _manager_sock, "request_spawn"),
    ("manager request_init_config", _manager_sock, "request_init_config"),
    ("dashboard request-spawn", _dashboard, ""),
]


@pytest.mark.parametrize(("surface", "ask", "cmd"), SURFACES, ids=[s[0] for s in SURFACES])
async def test_every_surface_refuses_every_reserved_word(
    hive: Daemon, surface: str, ask: object, cmd: str
) -> None:
    assert callable(ask)
    for word in WORDS:
        error = await ask(hive, cmd, word)
        assert "reserved for the daemon's own identities" in error, (surface, word, error)
    # nothing was created or queued under any of them
    assert not set(WORDS) & set(hive.views.rows())
    assert [a for a in await hive.coordinator.approvals() if a.agent in WORDS] == []
    # and the manager's own name is still refused as a new agent, with its own reason
    error = await ask(hive, cmd, MANAGER_NAME)
    assert "manager" in error
