"""Lifecycle verbs through the coordinator, on real agent processes."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from actors.event_bus import Subscription
from hivecore.errors import Busy, InvalidName, Refused, UnknownAgent
from hivecore.verbs import bind
from hivecore.wire.events import Event
from hivecore.wire.helper import helper_from_body
from tests.conftest import Parts
from tests.waiting import eventually


def drain(sub: Subscription) -> list[Event]:
    return list(sub._backlog) + [
        sub._recv.receive_nowait() for _ in range(sub._recv.statistics().current_buffer_used)
    ]


async def test_spawn_start_stop_restart_and_events(parts: Parts) -> None:
    c = parts.coordinator
    with parts.bus.subscribe() as sub:
        await c.spawn("coder")
        assert c.views()["coder"].running
        assert c.views()["coder"].container == "h-coder"
        assert c.views()["coder"].pending is None
        kinds = [e.KIND for e in drain(sub) if e.KIND not in ("rebuild_queue_changed", "meta_inputs_changed")]
    assert kinds[:2] == ["transient_set", "container_state_changed"]
    assert "transient_cleared" in kinds
    env = parts.config.paths.agent_state("coder")
    await eventually((env / "env.json").exists)  # a real process writes it
    assert json.loads((env / "env.json").read_text())["HIVE_LABEL"] == "coder"

    await c.stop("coder")
    assert not c.views()["coder"].running
    assert not c.views()["coder"].failed
    await c.start("coder")
    assert c.views()["coder"].running
    pid_before = (await parts.runtime.list())["coder"].pid
    await c.restart("coder")
    pid_after = (await parts.runtime.list())["coder"].pid
    assert pid_after != pid_before
    assert c.views()["coder"].running


async def test_start_and_restart_kick_but_stop_kill_destroy_do_not(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.stop("coder")
    await c.start("coder")
    await c.restart("coder")
    await c.kill("coder")
    await c.destroy("coder")
    kicks = [body.splitlines()[0] for _, sender, body in await parts.inbox("coder")]
    assert kicks == ["container started", "container restarted"]
    events = [helper_from_body(b).EVENT for _, _, b in await parts.inbox("manager")]
    assert events == ["spawned", "killed", "killed", "destroyed"]


async def test_unknown_and_invalid_names_are_refused(parts: Parts) -> None:
    c = parts.coordinator
    with pytest.raises(UnknownAgent, match='agent "ghost" is not managed by this hive'):
        await c.start("ghost")
    # set_paused finds an unknown agent in its own job (the marker's thread hop), writing nothing
    with pytest.raises(UnknownAgent, match='agent "ghost" is not managed by this hive'):
        await c.set_paused("ghost", True)
    assert not (parts.config.paths.agents / "ghost").exists()
    with pytest.raises(InvalidName):
        await c.set_paused("../x", True)
    for bad in ["..", ".", "a/b", "/etc", "toolongname", "Caps", ""]:
        with pytest.raises(InvalidName):
            await c.stop(bad)
    # manager protections are the request records' checks, run by every surface (hivecore.verbs)
    operator = bind.Context(c, bind.OPERATOR_SOCK)
    with pytest.raises(Refused, match="refusing to destroy the manager"):
        await bind.call("destroy", operator, {"name": "hm1nd"})
    with pytest.raises(Refused, match="refusing to destroy the manager"):
        await bind.call("destroy", operator, {"name": "manager"})


async def test_manager_cannot_be_killed(parts: Parts) -> None:
    await parts.coordinator.spawn("hm1nd", source="internal")
    for caller in (bind.OPERATOR_SOCK, bind.DASHBOARD, bind.MANAGER):
        with pytest.raises(Refused, match="refusing to kill the manager"):
            await bind.call("kill", bind.Context(parts.coordinator, caller), {"name": "hm1nd"})
    assert parts.coordinator.views()["hm1nd"].running
    assert parts.coordinator.views()["hm1nd"].is_manager


async def test_a_second_verb_while_one_is_in_flight_is_refused_naming_the_job(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    release = trio.Event()

    async def slow_build(name: str) -> None:
        await release.wait()

    parts.daemon.lifecycle.build = slow_build
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.rebuild, "coder")
        await eventually(lambda: c.views()["coder"].pending == "rebuilding")
        job = parts.lane.busy_with("coder")
        assert job is not None
        with pytest.raises(Busy, match=rf'agent "coder" is rebuilding \(job {job.id}, 0 s\)'):
            await c.restart("coder")
        with pytest.raises(Busy, match="is rebuilding"):
            await c.stop("coder")
        release.set()
    assert c.views()["coder"].running
    assert not parts.lane.intent.stopped_on_purpose("coder")  # the refused stop left no mark


async def test_destroy_keeps_state_as_tombstone_and_fails_pending_approvals(parts: Parts) -> None:
    from hivecore import store as st

    c = parts.coordinator
    await c.spawn("coder")
    (parts.config.paths.agent_claude("coder") / "creds.json").write_text("{}")
    approval = await parts.store.call(lambda conn: st.insert_approval(conn, "coder", "spawn"))
    with parts.bus.subscribe(kinds=["tombstones_changed", "container_removed"]) as sub:
        await c.destroy("coder")
        events = drain(sub)
    assert "coder" not in c.views()
    assert [e.KIND for e in events] == ["container_removed", "tombstones_changed"]
    tomb = events[-1].tombstones  # type: ignore[attr-defined]
    assert [t.name for t in tomb] == ["coder"]
    assert tomb[0].claude_creds_kept
    assert tomb[0].state_bytes >= 2
    rows = await c.approvals()
    assert rows[0].id == approval.id
    assert rows[0].status == "failed"
    assert rows[0].note == "coder was destroyed while this approval was pending; nothing was deployed"
    # respawning consumes the tombstone
    await c.spawn("coder")
    assert c.tombstones() == []
    assert (parts.config.paths.agent_claude("coder") / "creds.json").exists()


async def test_destroy_with_purge_removes_state(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.destroy("coder", purge=True)
    assert not parts.config.paths.agent_dir("coder").exists()
    assert c.tombstones() == []


async def test_set_paused_is_idempotent_and_works_when_stopped(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    await c.stop("coder")
    await c.set_paused("coder", True)
    await c.set_paused("coder", True)
    assert c.views()["coder"].paused
    await c.set_paused("coder", False)
    await c.set_paused("coder", False)
    assert not c.views()["coder"].paused


async def test_spawn_refuses_an_existing_agent(parts: Parts) -> None:
    await parts.coordinator.spawn("coder")
    with pytest.raises(Refused, match='agent "coder" already exists'):
        await parts.coordinator.spawn("coder")
    assert parts.coordinator.views()["coder"].running


async def test_a_runtime_failure_names_the_verb_and_leaves_no_transient(parts: Parts) -> None:
    from hivecore.errors import RuntimeFailure

    c = parts.coordinator
    await c.spawn("coder")
    (parts.config.paths.agent_run("coder") / "spec.json").write_text("not json")  # a corrupted spec
    await c.stop("coder")
    with pytest.raises(RuntimeFailure, match='agent "coder" has an unreadable spec'):
        await c.start("coder")
    assert parts.transients.snapshot() == {}
    assert not c.views()["coder"].running
