"""The meta flake with real nix and git: rendering, locking, rebuilds through it, meta_update,
the operator's pronouns reaching agents byte for byte, staleness and recovery after a crash."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.errors import HiveError, Refused
from hivecore.meta import (
    HYPERHIVE,
    AgentEntry,
    nix_str,
    parse_lock,
    read_lock_file,
    render_flake,
)
from hivecore.repos import clean_env
from hivecore.runtime.base import AgentSpec
from hivecore.services.meta_update import SKIP_AUTO_UPDATE_ENV, affected_agents
from hivecore.verbs import bind
from hivecore.wire.events import AgentNotice, MetaInputsChanged, MetaUpdateRunning
from tests.conftest import Parts, make_config, start_parts
from tests.procs import as_owner, owner_git_env, write_as_owner
from tests.test_lifecycle import drain
from tests.waiting import eventually

# --- pure parts -----------------------------------------------------------------------------------


def nix_eval_json(*args: str) -> Any:
    out = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--json", *args],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def nix_eval_string(literal: str) -> str:
    value: str = nix_eval_json("--expr", literal)
    return value


@pytest.mark.parametrize(
    "value",
    [
        "they/them",
        '"quoted" \\ back',
        '${builtins.abort "x"}',
        "ël/ihr ✓ 日本",
        "$${x} $\\{ a\nb\tc",
        "\\${y}",
    ],
)
def test_nix_strings_round_trip_through_nix(value: str) -> None:
    assert nix_eval_string(nix_str(value)) == value


def test_parse_lock_walks_every_depth_once_skipping_follows_and_revless() -> None:
    lock = {
        "root": "root",
        "version": 7,
        "nodes": {
            "root": {
                "inputs": {"hyperhive": "hyperhive", "agent-b": "agent-b", "agent-a": "agent-a", "z": "z"}
            },
            "hyperhive": {
                "inputs": {"nixpkgs": "nixpkgs", "alias": ["agent-a"]},
                "locked": {"rev": "1" * 40, "lastModified": 5},
                "original": {"type": "git", "url": "file:///base"},
            },
            "agent-a": {
                "flake": False,
                "locked": {"rev": "a" * 40, "lastModified": 7},
                "original": {"url": "u"},
            },
            "agent-b": {"inputs": {"mcp": "mcp", "nixpkgs": "nixpkgs"}, "locked": {"rev": "b" * 40}},
            "mcp": {"inputs": {"deep": "deep"}, "locked": {"rev": "c" * 40}},
            "deep": {"locked": {"rev": "d" * 40}, "original": {"type": "path", "path": "/x"}},
            "nixpkgs": {"locked": {"rev": "e" * 40}},
            "z": {"locked": {"narHash": "sha256-none"}},
        },
    }
    views = parse_lock(lock)
    assert [v.name for v in views] == [
        "hyperhive",
        "agent-a",
        "agent-b",
        "agent-b/mcp",
        "agent-b/mcp/deep",
        "agent-b/nixpkgs",  # shared by hyperhive at the same depth: the first path alphabetically
    ]
    assert views[0].rev == "1" * 12
    assert views[0].last_modified == 5
    assert views[0].url == "file:///base"
    assert views[4].url == "path:/x"
    assert parse_lock(None) == []
    assert parse_lock({"nodes": 3}) == []


def test_affected_agents() -> None:
    agents = ["hm1nd", "a", "b"]
    assert affected_agents(["hyperhive"], agents) == agents
    assert affected_agents(["hyperhive/nixpkgs"], agents) == agents
    assert affected_agents(["agent-a"], agents) == ["a"]
    assert affected_agents(["agent-b/mcp", "agent-x"], agents) == ["b"]
    assert affected_agents(["other"], agents) == []


def test_render_is_deterministic_and_sorted() -> None:
    a = AgentEntry(name="a", applied=Path("/s/released/a"), command=("py",), identity={"K": "v"})
    b = AgentEntry(name="b", applied=Path("/s/released/b"), command=("py",), identity={"K": "w"})
    assert render_flake("git+file:///s/base", [b, a]) == render_flake("git+file:///s/base", [a, b])
    rendered = render_flake("x", [a])
    assert '"agent-a" = { url = "git+file:///s/released/a?ref=main"; flake = false; };' in rendered


# --- with a daemon's parts ------------------------------------------------------------------------


async def git(repo: Path, *args: str) -> str:
    """git in ``repo`` as its owner (a proposed repo: the manager's uid under a root daemon)."""
    result = await trio.run_process(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
        capture_stdout=True,
        capture_stderr=True,
        env={**clean_env(), **owner_git_env(repo)},
        **as_owner(repo),
    )
    return result.stdout.decode().strip()


async def commit_file(repo: Path, name: str, text: str, message: str = "change") -> str:
    write_as_owner(repo, name, text)
    await git(repo, "add", name)
    await git(repo, "commit", "-qm", message)
    return await git(repo, "rev-parse", "HEAD")


def agent_nix(env: dict[str, str] | None = None) -> str:
    extra = "".join(f" env.{k} = {nix_str(v)};" for k, v in (env or {}).items())
    return f'{{ ... }}: {{\n  hive.agent = {{ model = "haiku";{extra} }};\n}}\n'


def harness_pid(shim: int) -> int | None:
    try:
        children = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"hivecore.harness" in cmdline:
            return int(child)
    return None


def environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


async def agent_env(parts: Parts, name: str) -> dict[bytes, bytes]:
    """The environment of the agent's harness process (the shim's child), once it has exec'd."""
    found: dict[bytes, bytes] = {}

    def ready() -> bool:
        state = parts.runtime.list_nowait([name]).get(name)
        if state is None or state.pid is None or (pid := harness_pid(state.pid)) is None:
            return False
        try:
            env = environ(pid)
        except OSError:
            return False
        found.update(env)
        return b"HIVE_LABEL" in env

    await eventually(ready, timeout=20)
    return found


async def helper_events(parts: Parts, kind: str) -> list[dict[str, Any]]:
    rows = await parts.inbox("manager")
    events = [json.loads(body) for _, sender, body in rows if sender == "system"]
    return [e for e in events if e["event"] == kind]


@pytest.fixture
async def meta_parts(state_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Parts]:
    pronouns = getattr(request, "param", "she/her")
    async with trio.open_nursery() as nursery:
        parts = await start_parts(make_config(state_dir, operator_pronouns=pronouns), nursery)
        yield parts
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "meta_parts", ["they/them", '"quoted" \\ back', '${builtins.abort "x"}', "ël/ihr ✓ 日本"], indirect=True
)
async def test_operator_pronouns_reach_the_agent_byte_for_byte(meta_parts: Parts) -> None:
    parts = meta_parts
    await parts.coordinator.spawn("coder")
    env = await agent_env(parts, "coder")
    assert env[b"HIVE_OPERATOR_PRONOUNS"] == parts.config.operator_pronouns.encode()
    assert env[b"HIVE_LABEL"] == b"coder"
    assert b"HIVE_PORT" in env
    assert b"HIVE_DASHBOARD_PORT" in env
    assert b"HIVE_SOCKET" in env
    lock = read_lock_file(parts.config.paths.meta)
    rev = await git(parts.config.paths.applied("coder"), "rev-parse", "main")
    assert lock["nodes"]["agent-coder"]["locked"]["rev"] == rev
    assert await git(parts.config.paths.meta, "status", "--porcelain") == ""
    assert not parts.views.rows()["coder"].needs_update
    # the nixos runtime's output is there, lazily, without nixpkgs
    flake = f"{parts.config.paths.meta}#nixosConfigurations.coder._type"
    result = await trio.run_process(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--json", flake],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert json.loads(result.stdout) == "hive-placeholder"


async def test_an_approved_commit_changes_what_the_agent_runs(meta_parts: Parts) -> None:
    parts = meta_parts
    c = parts.coordinator
    await c.spawn("coder")
    before = await agent_env(parts, "coder")
    assert b"GREETING" not in before
    sha = await commit_file(
        parts.config.paths.agent_config("coder"), "agent.nix", agent_nix({"GREETING": "hi ✓"})
    )
    approval = await c.request_apply_commit("coder", sha)
    await c.approve(approval.id)
    after = await agent_env(parts, "coder")
    assert after[b"GREETING"] == "hi ✓".encode()
    assert after[b"HIVE_LABEL"] == b"coder"  # the identity wins over agent.nix
    [rebuilt] = await helper_events(parts, "rebuilt")
    assert rebuilt["ok"]
    assert rebuilt["sha"] == sha
    assert rebuilt["tag"] == f"deployed/{approval.id}"
    log = await git(parts.config.paths.meta, "log", "--format=%s")
    assert "lock update: agent-coder" in log.splitlines()
    assert not parts.views.rows()["coder"].needs_update


async def test_meta_update_of_one_agent_rebuilds_only_it(meta_parts: Parts) -> None:
    parts = meta_parts
    c = parts.coordinator
    await c.spawn("a")
    await c.spawn("b")
    await parts.nursery.start(parts.crash_watch.run)
    applied_a = parts.config.paths.applied("a")
    new = await commit_file(applied_a, "agent.nix", agent_nix({"X": "1"}))
    with parts.bus.subscribe(kinds=["agent_notice"]) as notices:
        await parts.views.rescan()
        assert parts.views.rows()["a"].needs_update
        assert not parts.views.rows()["b"].needs_update
        with trio.fail_after(10):
            notice = await notices.receive()
    assert isinstance(notice, AgentNotice)
    assert (notice.event, notice.agent) == ("needs_update", "a")
    assert c.any_stale()
    with parts.bus.subscribe(kinds=["meta_inputs_changed"]) as sub:
        job = await c.meta_update(["agent-a"])
        changed = [e for e in drain(sub) if isinstance(e, MetaInputsChanged)]
    assert job.kind == "meta_update"
    assert job.state == "done"
    children = [j for j in c.jobs() if j.parent_id == job.id]
    assert [(j.kind, j.agent, j.source) for j in children] == [("rebuild", "a", "meta_update")]
    rebuilt = await helper_events(parts, "rebuilt")
    assert [(e["agent"], e["ok"], e["sha"]) for e in rebuilt] == [("a", True, new)]
    assert changed
    assert {i.name: i.rev for i in changed[-1].inputs}["agent-a"] == new[:12]
    assert {i.name: i.rev for i in c.meta_inputs()}["agent-a"] == new[:12]
    assert (await agent_env(parts, "a"))[b"X"] == b"1"
    assert not c.any_stale()
    with pytest.raises(HiveError, match="unknown meta input"):
        await c.meta_update(["agent-zz"])
    with pytest.raises(HiveError, match="at least one"):  # the record's check (hivecore.verbs)
        await bind.call("meta_update", bind.Context(c, bind.OPERATOR_SOCK), {"inputs": [" ", ""]})


async def test_meta_update_of_hyperhive_rebuilds_all_one_at_a_time(meta_parts: Parts) -> None:
    parts = meta_parts
    c = parts.coordinator
    for name in ("a", "b", "c"):
        await c.spawn(name)
    paths = parts.config.paths
    base = paths.root / "base"
    flake = (base / "flake.nix").read_text()
    await commit_file(base, "flake.nix", flake + "# a new hyperhive\n", "bump base")
    new_a = await commit_file(paths.applied("a"), "agent.nix", agent_nix({"Y": "2"}))
    meta_head = await git(paths.meta, "rev-parse", "HEAD")
    await parts.views.rescan()
    assert all(v.needs_update for v in parts.views.rows().values())

    active = 0
    overlaps: list[str] = []
    order: list[str] = []
    gate = trio.Event()
    real_update = parts.runtime.update

    async def recorded_update(spec: AgentSpec) -> None:
        nonlocal active
        active += 1
        if active > 1:
            overlaps.append(spec.name)
        order.append(spec.name)
        await gate.wait()
        try:
            await real_update(spec)
        finally:
            active -= 1

    parts.runtime.update = recorded_update  # type: ignore[method-assign]
    running: list[bool] = []
    with parts.bus.subscribe(kinds=["meta_update_running", "meta_inputs_changed"]) as sub:
        job = await c.meta_update([HYPERHIVE, "agent-a"], wait=False)
        await eventually(lambda: bool(order), timeout=30)
        with pytest.raises(Refused, match="already running"):
            await c.meta_update(["agent-b"])
        gate.set()
        await parts.lane.wait(job.id)
        events = drain(sub)
        running = [e.running for e in events if isinstance(e, MetaUpdateRunning)]
        changed = [e for e in events if isinstance(e, MetaInputsChanged)]
    assert overlaps == []
    assert order == ["a", "b", "c"]
    assert running[-1] is False
    assert not c.meta_update_running()
    log = (await git(paths.meta, "log", "--format=%s", f"{meta_head}..HEAD")).splitlines()
    assert log == ["lock update: hyperhive, agent-a"]
    rebuilt = await helper_events(parts, "rebuilt")
    assert sorted(e["agent"] for e in rebuilt if e["ok"]) == ["a", "b", "c"]
    revs = {i.name: i.rev for i in c.meta_inputs()}
    assert {i.name: i.rev for i in changed[-1].inputs} == revs
    assert len(changed) >= 3  # the lock update, then one full snapshot per rebuild
    assert revs["hyperhive"] == (await git(base, "rev-parse", "HEAD"))[:12]
    assert revs["agent-a"] == new_a[:12]
    assert not c.any_stale()


async def test_destroy_drops_the_agent_from_the_meta_flake(meta_parts: Parts) -> None:
    parts = meta_parts
    await parts.coordinator.spawn("a")
    await parts.coordinator.spawn("b")
    await parts.coordinator.destroy("b")
    lock = read_lock_file(parts.config.paths.meta)
    assert "agent-b" not in lock["nodes"]
    assert "agent-a" in lock["nodes"]
    assert "agent-b" not in (parts.config.paths.meta / "flake.nix").read_text()


async def test_a_crash_mid_lock_update_recovers_at_the_next_start(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(state_dir)
    paths = config.paths
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        await parts.coordinator.spawn("a")
        await parts.coordinator.spawn("b")
        nursery.cancel_scope.cancel()
    # what a kill -9 mid-lock-update leaves: an index.lock, a lock file the commit never took, and
    # an applied main the lock does not pin yet
    new_a = await commit_file(paths.applied("a"), "agent.nix", agent_nix({"Z": "3"}))
    (paths.meta / ".git" / "index.lock").write_text("")
    (paths.meta / "flake.lock").write_text((paths.meta / "flake.lock").read_text() + "\n")
    monkeypatch.delenv(SKIP_AUTO_UPDATE_ENV, raising=False)
    config = make_config(state_dir, operator_pronouns="xe/xem")
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        assert not (paths.meta / ".git" / "index.lock").exists()
        await parts.views.rescan()
        rows = parts.views.rows()
        assert rows["a"].needs_update  # the new main is not running yet, and the row says so
        rebuilt = await parts.daemon.meta_updates.auto_update(parts.coordinator.rebuild)
        assert rebuilt == ["a"]
        assert await git(paths.meta, "status", "--porcelain") == ""
        assert not any(v.needs_update for v in parts.views.rows().values())
        env = await agent_env(parts, "a")
        # the changed flag reached the rebuilt agent; b runs on with the old one until its rebuild
        assert env[b"Z"] == b"3"
        assert env[b"HIVE_OPERATOR_PRONOUNS"] == b"xe/xem"
        assert (await agent_env(parts, "b"))[b"HIVE_OPERATOR_PRONOUNS"] == b"she/her"
        assert read_lock_file(paths.meta)["nodes"]["agent-a"]["locked"]["rev"] == new_a
        jobs = await parts.store.call(lambda c: st.recent_jobs(c, 10))
        assert {j.source for j in jobs if j.kind == "rebuild"} == {"auto_update"}
        nursery.cancel_scope.cancel()


async def test_meta_update_over_host_sock(hive: Daemon) -> None:
    from tests.test_host_socket import ok, refused

    sock = hive.config.host_socket_path
    await ok(sock, {"cmd": "spawn", "name": "a"})
    await ok(sock, {"cmd": "spawn", "name": "b"})
    new = await commit_file(hive.config.paths.applied("b"), "agent.nix", agent_nix({"W": "4"}))
    assert "unknown meta input(s): agent-zz" in await refused(
        sock, {"cmd": "meta_update", "inputs": ["agent-zz"]}
    )
    assert "inputs" in await refused(sock, {"cmd": "meta_update", "inputs": "agent-b"})
    await ok(sock, {"cmd": "meta_update", "inputs": ["agent-b"]})
    assert {i.name: i.rev for i in hive.coordinator.meta_inputs()}["agent-b"] == new[:12]
    [job] = [j for j in hive.coordinator.jobs() if j.kind == "meta_update"]
    assert [j.agent for j in hive.coordinator.jobs() if j.parent_id == job.id] == ["b"]


async def test_the_meta_actor_cancelled_mid_operation_leaves_a_repo_the_next_start_repairs(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.meta_lock import MetaLock, MetaLockClosed

    config = make_config(state_dir)
    paths = config.paths
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        await parts.coordinator.spawn("a")
        meta: MetaLock = parts.daemon.meta
        new = await commit_file(paths.applied("a"), "agent.nix", agent_nix({"Q": "5"}))
        entered = trio.Event()
        real = meta.repo.nix

        async def nix_then_hang(*args: str, **kw: Any) -> bytes:
            out = await real(*args, **kw)
            if "--update-input" in args or "update" in args:
                # the lock file is written, the commit not made; a git index.lock is left too
                (paths.meta / ".git" / "index.lock").write_text("")
                entered.set()
                await trio.sleep_forever()
            return out

        meta.repo.nix = nix_then_hang  # type: ignore[method-assign]

        async def update() -> None:
            with contextlib.suppress(MetaLockClosed):
                await meta.lock_update(["agent-a"])

        nursery.start_soon(update)
        await entered.wait()
        nursery.cancel_scope.cancel()  # the daemon dies mid-operation
    async with trio.open_nursery() as nursery:
        parts = await start_parts(config, nursery)
        assert not (paths.meta / ".git" / "index.lock").exists()
        await parts.views.rescan()
        assert parts.views.rows()["a"].needs_update
        assert await parts.daemon.meta_updates.auto_update(parts.coordinator.rebuild) == []  # skipped
        monkeypatch.delenv(SKIP_AUTO_UPDATE_ENV)
        assert await parts.daemon.meta_updates.auto_update(parts.coordinator.rebuild) == ["a"]
        assert await git(paths.meta, "status", "--porcelain") == ""
        assert not parts.views.rows()["a"].needs_update
        assert read_lock_file(paths.meta)["nodes"]["agent-a"]["locked"]["rev"] == new
        nursery.cancel_scope.cancel()


async def test_auto_update_repoints_a_changed_template_and_a_new_base(
    meta_parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hivecore.meta import read_deployed, write_deployed

    parts = meta_parts
    paths = parts.config.paths
    await parts.coordinator.spawn("a")
    await parts.coordinator.spawn("b")
    monkeypatch.delenv(SKIP_AUTO_UPDATE_ENV)
    auto_update = parts.daemon.meta_updates.auto_update
    assert await auto_update(parts.coordinator.rebuild) == []  # all up to date
    # a deployed by an older hivecore whose rendered flake differed
    old = read_deployed(paths, "a")
    assert old is not None
    write_deployed(paths, "a", attrs.evolve(old, template="older-hivecore"))
    assert await auto_update(parts.coordinator.rebuild) == ["a"]
    # a new base flake: every agent
    base = paths.root / "base"
    rev = await commit_file(base, "flake.nix", (base / "flake.nix").read_text() + "# newer\n", "bump base")
    await parts.views.rescan()
    assert all(v.needs_update for v in parts.views.rows().values())
    assert await auto_update(parts.coordinator.rebuild) == ["a", "b"]
    assert {i.name: i.rev for i in parts.coordinator.meta_inputs()}[HYPERHIVE] == rev[:12]
    assert not parts.coordinator.any_stale()


async def test_a_rebuild_during_a_spawn_keeps_the_new_agent_in_the_meta_flake(meta_parts: Parts) -> None:
    parts = meta_parts
    c = parts.coordinator
    await c.spawn("a")
    entered, gate = trio.Event(), trio.Event()
    real_create = parts.runtime.create

    async def gated_create(spec: AgentSpec) -> None:
        if spec.name == "x":
            entered.set()
            await gate.wait()
        await real_create(spec)

    parts.runtime.create = gated_create  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.spawn, "x")
        await entered.wait()  # x is rendered and evaluated, its container not created yet
        await c.rebuild("a")  # its sync must not drop x
        assert '"agent-x"' in (parts.config.paths.meta / "flake.nix").read_text()
        gate.set()
    assert parts.views.rows()["x"].running
    assert not parts.views.rows()["x"].needs_update


async def test_hivectl_meta_update(hive: Daemon) -> None:
    from tests.test_hivectl import hivectl

    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("a")
    done = await hivectl("meta-update", "agent-a", sock=sock)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "updated agent-a and rebuilt the affected agents\n"
    bad = await hivectl("meta-update", "nope", sock=sock)
    assert bad.returncode == 1
    assert "unknown meta input(s): nope" in bad.stderr.decode()


async def test_the_dashboard_answers_bad_meta_inputs_with_400(hive: Daemon) -> None:
    from tests.conftest import AUTH
    from tests.test_dashboard_actions import answer, http

    for form, words in (
        ({"inputs": "nope"}, "unknown meta input(s): nope"),
        ({"inputs": "../etc"}, "not a flake input name: '../etc'"),
        ({"inputs": " , "}, "name at least one meta input"),
    ):
        status, _, body = await http(hive, "POST", "/meta-update", form, headers=AUTH)
        assert status == 400, body
        assert str(answer(body)["error"]).startswith(words), body


async def test_a_failed_rebuild_reports_the_nix_error_and_keeps_the_agent_running(meta_parts: Parts) -> None:
    parts = meta_parts
    await parts.coordinator.spawn("a")
    pid = (await parts.runtime.list(["a"]))["a"].pid
    await commit_file(
        parts.config.paths.applied("a"), "agent.nix", "{ ... }: { hive.agent = { model = ; }; }\n"
    )
    with pytest.raises(HiveError, match=r"(?s)agent\.nix of a does not evaluate:.*syntax error"):
        await parts.coordinator.rebuild("a")
    [event] = await helper_events(parts, "rebuilt")
    assert event["ok"] is False
    assert "syntax error" in event["note"]
    assert (await parts.runtime.list(["a"]))["a"].pid == pid
    # still not running what applied main says: stale once the build's transient is gone and the
    # views have rescanned (a row under `rebuilding` is never stale)
    await eventually(lambda: parts.views.rows()["a"].needs_update, timeout=30, what="a needs_update")


async def test_a_build_while_the_meta_lock_is_down_fails_clearly_and_changes_nothing(
    meta_parts: Parts,
) -> None:
    """Issue 15: with the meta lock actor not running (restart backoff), a rebuild or spawn used to
    build the agent outside the meta flake, silently. Now it fails, naming why, and nothing moves."""
    from actors.meta_lock import MetaLock

    parts = meta_parts
    await parts.coordinator.spawn("a")
    before = (await parts.runtime.list(["a"]))["a"]
    spec_file = parts.config.paths.agent_run("a") / "spec.json"
    spec = spec_file.read_text()
    builder = parts.daemon.meta_build
    live = builder.meta
    builder.meta = MetaLock(parts.daemon.meta.repo)  # the same repo, its actor not running
    try:
        with pytest.raises(HiveError, match=r"the meta flake is not available .*nothing was built"):
            await parts.coordinator.rebuild("a")
        with pytest.raises(HiveError, match="the meta flake is not available"):
            await parts.coordinator.spawn("b")
    finally:
        builder.meta = live
    after = (await parts.runtime.list(["a"]))["a"]
    assert (after.pid, after.running) == (before.pid, True)
    assert spec_file.read_text() == spec
    assert "b" not in await parts.runtime.list()
    await parts.coordinator.rebuild("a")  # and once it is back, the build goes through it
    assert (await parts.runtime.list(["a"]))["a"].pid != before.pid
