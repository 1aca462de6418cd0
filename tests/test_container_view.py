"""container_view: pure row building; rescan emits only what changed."""

from __future__ import annotations

from hivecore.container_view import AgentFacts, build_view
from hivecore.models import Transient
from hivecore.runtime.base import AgentRuntimeState
from tests.conftest import Parts

RUNTIME = {
    "hm1nd": AgentRuntimeState(name="hm1nd", running=True),
    "coder": AgentRuntimeState(name="coder", running=True),
    "idle": AgentRuntimeState(name="idle", running=False, failed=True, exit_status=-9),
}
FACTS = {
    "coder": AgentFacts(
        logged_in=True,
        status_text="writing tests",
        status_set_at="2026-11-25T10:00:00Z",
        deployed_sha="0123456789abcdef0123",
    ),
    "idle": AgentFacts(status_text="stale text", status_set_at="2026-11-25T09:00:00Z", paused=True),
}
TRANSIENTS = {"coder": Transient(kind="rebuilding", since_unix=5)}


def test_build_view_rows() -> None:
    views = {
        n: build_view(s, FACTS.get(n, AgentFacts()), TRANSIENTS.get(n), "hive.example")
        for n, s in RUNTIME.items()
    }
    m, c, i = views["hm1nd"], views["coder"], views["idle"]
    # no agent serves a web UI yet: no row shows a port nothing listens on (issue 16)
    assert (m.container, m.is_manager, m.port) == ("hm1nd", True, 0)
    assert (c.container, c.is_manager, c.port) == ("h-coder", False, 0)
    assert c.pending == "rebuilding"
    assert c.deployed_sha == "0123456789ab"
    assert not c.needs_login
    assert m.needs_login  # no facts: no claude creds
    assert c.status_text == "writing tests"
    assert c.url == "https://hive.example/agent/coder/"
    # status only while running
    assert i.status_text is None
    assert i.status_set_at is None
    assert i.failed
    assert i.paused


async def test_rescan_emits_nothing_for_unchanged_rows(parts: Parts) -> None:
    await parts.coordinator.spawn("alpha")
    await parts.coordinator.spawn("beta")
    with parts.bus.subscribe() as sub:
        await parts.views.rescan()
        await parts.coordinator.stop("alpha")
        parts.bus.close()
        events = [e async for e in sub]
    changed = [e.container.name for e in events if e.KIND == "container_state_changed"]  # type: ignore[attr-defined]
    assert set(changed) == {"alpha"}  # beta never re-emitted
