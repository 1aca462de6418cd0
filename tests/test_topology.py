"""Issue 18 item 7: ``hyperhive.allowedRecipients`` in an approved ``agent.nix`` limits whom an agent
may ``send`` to (the manager and the operator always allowed), learnt from the agent's confined
evaluation (never from the nix text); each agent's parent (who requested its spawn) is recorded
and shown on its row."""

from __future__ import annotations

import pytest

from hivecore import topology
from hivecore.errors import HiveError
from hivecore.names import MANAGER_NAME
from tests.conftest import Parts
from tests.test_approvals import commit, repos
from tests.waiting import eventually


def limited(names: str) -> str:
    return (
        "{ ... }:\n{\n  hive.agent = { model = \"haiku\"; };\n"
        f"  hyperhive.allowedRecipients = {names};\n}}\n"
    )


async def apply(parts: Parts, name: str, agent_nix: str) -> None:
    proposed, _ = repos(parts, name)
    sha = await commit(proposed, {"agent.nix": agent_nix}, "topology")
    approval = await parts.coordinator.request_apply_commit(name, sha, "limit recipients", source="manager")
    await parts.coordinator.approve(approval.id)


async def inbox_bodies(parts: Parts, name: str) -> list[tuple[str, str]]:
    return [(sender, body) for _, sender, body in await parts.inbox(name)]


async def test_allowed_recipients_limit_send_and_name_the_rule(parts: Parts) -> None:
    c = parts.coordinator
    broker = parts.daemon.broker
    for name in ("alice", "bob", "carol"):
        await c.spawn(name)
    await broker.send("alice", "carol", "before the limit")  # no list: anyone
    await apply(parts, "alice", limited('[ "bob" ]'))
    assert await parts.store.call(lambda conn: topology.allowed(conn, "alice")) == ("bob",)

    with pytest.raises(topology.RecipientNotAllowed) as refused:
        await broker.send("alice", "carol", "hello carol")
    assert str(refused.value) == (
        "alice may not address carol: hyperhive.allowedRecipients in the agent.nix of alice allows "
        "bob (the manager and the operator are always allowed)"
    )
    assert ("alice", "hello carol") not in await inbox_bodies(parts, "carol")  # nothing written
    await broker.send("alice", "bob", "hello bob")
    await broker.send("alice", "manager", "hello manager")
    await broker.send("alice", "operator", "hello operator")
    assert ("alice", "hello bob") in await inbox_bodies(parts, "bob")
    # a broadcast reaches only whom it may address (the manager too, when it runs)
    await broker.send("alice", "*", "to all")
    assert ("alice", "to all") in await inbox_bodies(parts, "bob")
    assert ("alice", "to all") not in await inbox_bodies(parts, "carol")
    # the others are not limited by alice's list
    await broker.send("carol", "alice", "from carol")
    # another hive's agent is addressed as name@hive: the same list holds (nothing reaches the outbox)
    outbox: list[tuple[str, str, str]] = []

    async def remote(sender: str, to: str, body: str) -> int:
        outbox.append((sender, to, body))
        return 1

    broker.remote = remote
    with pytest.raises(topology.RecipientNotAllowed, match="alice may not address dave@far"):
        await broker.send("alice", "dave@far", "hello")
    await broker.send("carol", "dave@far", "hello")
    assert outbox == [("carol", "dave@far", "hello")]
    broker.remote = None

    # an empty list: only the manager and the operator
    await apply(parts, "alice", limited("[ ]"))
    with pytest.raises(topology.RecipientNotAllowed, match="allows nobody else"):
        await broker.send("alice", "bob", "again")
    # dropping the option lifts the limit
    await apply(parts, "alice", limited("null"))
    await broker.send("alice", "carol", "free again")


async def test_a_malformed_list_fails_the_build_with_the_rule(parts: Parts) -> None:
    await parts.coordinator.spawn("alice")
    with pytest.raises(HiveError, match=r"hyperhive\.allowedRecipients must be a list of agent names"):
        await apply(parts, "alice", limited('"bob"'))
    assert await parts.store.call(lambda conn: topology.allowed(conn, "alice")) is None


async def test_the_parent_is_who_requested_the_spawn(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("direct")  # the operator's privileged spawn
    by_manager = await c.request_spawn("kid", "a child", source="manager")
    await c.approve(by_manager.id)
    by_operator = await c.request_spawn("mine", None)
    await c.approve(by_operator.id)

    def parents() -> dict[str, str | None]:
        rows = c.views()
        return {n: rows[n].parent for n in ("direct", "kid", "mine") if n in rows}

    await eventually(lambda: parents() == {"direct": "operator", "kid": MANAGER_NAME, "mine": "operator"})
    # a purge forgets it; a new agent of the name gets its own
    await c.destroy("kid", purge=True)
    assert await parts.store.call(lambda conn: topology.parents(conn, ["kid"])) == {}


def test_refusal_is_pure_and_always_allows_manager_and_operator() -> None:
    assert topology.refusal("a", "b", None) is None
    assert topology.refusal("a", "manager", ()) is None
    assert topology.refusal("a", "operator", ()) is None
    assert topology.refusal("a", "b", ("b",)) is None
    assert topology.refusal("a", "c", ("b",)) is not None
    assert topology.parse_allowed(["b", "b", "c"]) == ("b", "c")
    for bad in ("b", [1], {"b": 1}):
        with pytest.raises(TypeError):
            topology.parse_allowed(bad)
