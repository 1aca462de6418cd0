"""Issue 17 end to end with the real ``claude`` CLI (the model is the loopback stand-in of
tests/model_api.py, reached through ``ANTHROPIC_BASE_URL`` from the agent env file): an agent
without credentials stays ``needs_login`` with its mail queued and unacked, ``hivectl login`` wakes
it, and its turn's usage (reported by the harness with ``report_turn``) shows on its row and in
``hivectl usage``. Skipped when the CLI is not installed (``.ci/setup.sh`` installs it)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from hivecore import claude_turn as ct
from hivecore.daemon import Daemon
from tests.conftest import make_config, write_test_token
from tests.model_api import API_KEY, ModelApi
from tests.test_hivectl import _env, err, hivectl, out
from tests.waiting import eventually

CLAUDE = ct.find_claude({"PATH": ""})
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="the claude CLI is not installed (.ci/setup.sh)")


@pytest.fixture
def model() -> Iterator[ModelApi]:
    with ModelApi() as api:
        yield api


@pytest.fixture
async def hive_no_key(state_dir: Path, tmp_path: Path, model: ModelApi) -> AsyncIterator[Daemon]:
    """A daemon whose agent env file points every agent at the stand-in model, without a key."""
    from hivecore.daemon import main
    from web.app import daemon_app

    env = {k: v for k, v in model.env().items() if k != "ANTHROPIC_API_KEY"}
    file = tmp_path / "agents.env"
    file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    file.chmod(0o600)
    write_test_token(state_dir)
    config = make_config(state_dir, agent_env_file=file, turn_limit=60.0)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(partial(main, config, web_factory=daemon_app))
        yield daemon
        nursery.cancel_scope.cancel()


async def test_mail_waits_for_a_login_and_the_turn_shows_its_usage(
    hive_no_key: Daemon, model: ModelApi
) -> None:
    d = hive_no_key
    sock = d.config.host_socket_path
    assert (await hivectl("spawn", "coder", sock=sock)).returncode == 0
    assert d.views.rows()["coder"].needs_login
    [message_id] = await d.coordinator.op_send("coder", "hello, are you there?")
    sql = "SELECT delivered_at, acked_at FROM messages WHERE id=?"

    async def state() -> tuple[object, object]:
        row = await d.store.call(lambda c: c.execute(sql, (message_id,)).fetchone())
        return row[0], row[1]

    async def held_unacked() -> bool:
        delivered, acked = await state()
        return delivered is not None and acked is None

    # the harness took the batch and holds it, unacked, waiting for credentials; the model is untouched
    await eventually(held_unacked, timeout=60, what="the batch held while logged out")
    await trio.sleep(2)
    assert await held_unacked()
    with model.lock:
        assert model.requests == []
    assert d.views.rows()["coder"].needs_login
    assert d.views.rows()["coder"].stuck is None  # waiting for a login is not stuck

    result = await trio.run_process(
        [sys.executable, "-m", "hivecore.cli.hivectl", "--socket", str(sock), "login", "coder"],
        stdin=API_KEY.encode(), capture_stdout=True, capture_stderr=True, check=False, env=_env(),
    )  # fmt: skip
    assert (result.returncode, out(result)) == (0, "coder is logged in (login file)\n"), err(result)

    async def acked() -> bool:
        return (await state())[1] is not None

    await eventually(acked, timeout=180, what="the turn after the login, acked")
    with model.lock:
        assert any("hello, are you there?" in json.dumps(r.get("messages")) for r in model.requests)
    await eventually(lambda: d.views.rows()["coder"].turns_today >= 1, timeout=30, what="usage on the row")
    row = d.views.rows()["coder"]
    assert not row.needs_login
    assert row.tokens_today > 0
    assert row.cost_today_usd > 0
    assert row.last_turn_at is not None
    usage = json.loads(out(await hivectl("--json", "usage", "coder", sock=sock)))["usage"][0]
    assert usage["turns_total"] >= 1
    assert usage["last_status"] == "ok"
    # what the harness reported is what the CLI said
    turns = [
        json.loads(line)
        for line in (d.config.paths.agent_state("coder") / ct.TURNS_FILE).read_text().splitlines()
    ]
    assert usage["turns_total"] == len(turns)
    assert usage["tokens_total"] == sum(
        t["input_tokens"]
        + t["output_tokens"]
        + t["cache_read_input_tokens"]
        + t["cache_creation_input_tokens"]
        for t in turns
    )
