"""The middle layer's shape (issue 15): who imports whom, and the job registry.

The import graph is read from the source (``ast``), so it covers imports inside functions too (they
run when called); only ``if TYPE_CHECKING:`` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivecore.jobkinds import REGISTRY, Intent, spec_of
from hivecore.models import JOB_KINDS, TRANSIENT_KINDS, Job

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "hivecore")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str], package: str) -> Iterator[str]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (name for child in node.orelse for name in _imports(child, modules, package))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:  # ``from hivecore.services import broker`` imports a module
                if f"{base}.{alias.name}" in modules:
                    yield f"{base}.{alias.name}"
        yield from _imports(node, modules, package)


def import_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports (at run time)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for target in _imports(ast.parse(path.read_text(), str(path)), modules, package):
            # ``import a.b.c`` also imports a.b and a; keep the first-party ones
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules
        found.discard(name)
        graph[name] = found
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def in_actors(module: str) -> bool:
    return module == "actors" or module.startswith("actors.")


def in_services(module: str) -> bool:
    return module == "hivecore.services" or module.startswith("hivecore.services.")


def test_the_import_walk_sees_the_known_edges() -> None:
    """The walker itself: edges that exist are found (so an empty answer below means something)."""
    graph = import_graph()
    assert "actors.event_bus" in graph["actors.rebuild_queue"]
    assert "hivecore.jobkinds" in graph["actors.rebuild_queue"]
    assert "hivecore.services.context" in graph["hivecore.services.lifecycle"]
    assert "actors.rebuild_queue" in graph["hivecore.daemon"]  # the daemon wires both sides


def test_no_import_cycle_between_actors_and_services() -> None:
    """No chain of imports runs actors -> services -> actors (through any module in between)."""
    graph = import_graph()
    cycles = []
    for actor in sorted(m for m in graph if in_actors(m)):
        for service in sorted(m for m in reachable(graph, actor) if in_services(m)):
            back = sorted(m for m in reachable(graph, service) if in_actors(m))
            if back:
                cycles.append(f"{actor} -> {service} -> {back[0]}")
    assert cycles == []


def test_services_import_no_actor() -> None:
    """Services get the actors' handles through protocols (hivecore/services/handles.py)."""
    graph = import_graph()
    found = {
        service: sorted(m for m in reachable(graph, service) if in_actors(m))
        for service in graph
        if in_services(service)
    }
    assert {s: a for s, a in found.items() if a} == {}


def test_actors_import_no_service() -> None:
    """crash_watch and agent_sockets take callables/protocols, not services.notify/broker."""
    graph = import_graph()
    found = {
        actor: sorted(m for m in reachable(graph, actor) if in_services(m))
        for actor in graph
        if in_actors(actor)
    }
    assert {a: s for a, s in found.items() if s} == {}


# --- the job registry -------------------------------------------------------------------------------


def test_every_job_kind_has_exactly_one_row() -> None:
    assert sorted(REGISTRY) == sorted(JOB_KINDS)
    for kind, row in REGISTRY.items():
        assert row.kind == kind
        assert row.transient is None or row.transient in TRANSIENT_KINDS
        assert row.busy


def test_the_lane_reads_its_rules_only_from_the_registry() -> None:
    """No other kind table left behind (the six places issue 15 named)."""
    import actors.rebuild_queue as lane
    import hivecore.models as models
    import hivecore.services.jobs as jobs

    assert not hasattr(lane, "_DOING")
    assert not hasattr(models, "BUILD_JOB_KINDS")
    assert not hasattr(models, "APPROVAL_JOB_KINDS")
    source = Path(jobs.__file__).read_text()
    assert '"approval_id"' not in source  # the approved-spawn routing is the registry row's


@pytest.mark.parametrize(
    ("kind", "args", "service"),
    [
        ("spawn", {}, "lifecycle"),
        ("spawn", {"approval_id": 3}, "approvals"),
        ("apply_commit", {"approval_id": 3}, "approvals"),
        ("rebuild", {}, "lifecycle"),
        ("meta_update", {"inputs": ["hyperhive"]}, "meta_update"),
    ],
)
def test_routing_is_explicit(kind: str, args: dict[str, object], service: str) -> None:
    assert spec_of(kind).service_for(args) == service  # type: ignore[arg-type]


def test_build_class_singleton_and_intent_rows() -> None:
    assert {k for k, r in REGISTRY.items() if r.build} == {"rebuild", "apply_commit", "meta_update"}
    assert {k for k, r in REGISTRY.items() if r.singleton} == {"meta_update"}
    assert {k for k, r in REGISTRY.items() if r.intent == "stops"} == {"stop", "kill", "destroy"}
    # a build keeps the agent as the operator left it (issue 16 item 3): no intent of its own
    assert {k for k, r in REGISTRY.items() if r.intent == "starts"} == {"spawn", "start", "restart"}
    assert {k for k, r in REGISTRY.items() if r.power_loss_moot} == {
        "start",
        "stop",
        "kill",
        "restart",
        "set_paused",
    }
    intent = Intent()
    intent.record(Job(id=1, kind="kill", agent="coder", queued_at=0.0))
    assert intent.stopped_on_purpose("coder")
    intent.record(Job(id=2, kind="set_paused", agent="coder", queued_at=0.0))
    assert intent.stopped_on_purpose("coder")
    intent.record(Job(id=3, kind="rebuild", agent="coder", queued_at=0.0))
    assert intent.stopped_on_purpose("coder")
    intent.record(Job(id=4, kind="start", agent="coder", queued_at=0.0))
    assert not intent.stopped_on_purpose("coder")
