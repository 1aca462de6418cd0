"""The review's evaluation: does a proposal build, and what does it change at runtime?

When an ``apply_commit`` or a ``spawn`` is requested, its pinned commit is evaluated in the
background (:class:`actors.review_evals.ReviewEvals` runs :class:`ReviewEvaluator`, never a socket
handler's task), confined exactly as a build is (:mod:`hivecore.nixconfine`):

* a fresh ``<state>/.review-eval-*`` (0700, handed to the evaluator uid under a root daemon) holds
  a bare repo ``proposed.git`` with the pinned commit's history only (fetched by the daemon from
  its own applied repo, or the template commit written there) and ``current.git`` (applied
  ``main``, when the agent has one), a ``flake.nix`` that calls the base flake's ``mkAgent`` with
  the same arguments the meta flake renders for the agent, and a ``flake.lock`` holding the meta
  lock's ``hyperhive`` nodes (the base rev a build would use now);
* ``nix eval --json`` of ``proposed`` (then ``current``) runs with restrict-eval, allowed-uris =
  the base flake's locked inputs and those two repos, no import-from-derivation, no ``<nixpkgs>``,
  as the evaluator uid on its own store, with the memory and time limits of every evaluation.

The review then says ``ok`` with the runtime changes (:func:`runtime_changes`: command, model,
each ``env`` key agent.nix sets, every other ``hive.agent`` setting such as ``allowedTools``,
resource limits or packages), or ``failed`` with nix's error. An ``update_meta_inputs`` review
locks the chosen inputs in a copy of the meta flake (confined the same way) and lists each input's
current and proposed rev. Pure helpers here; the I/O is :class:`ReviewEvaluator`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from hivecore import agent_users
from hivecore.claude_turn import TurnSetupError
from hivecore.errors import HiveError
from hivecore.meta import (
    HYPERHIVE,
    AgentEntry,
    MetaRepo,
    _nix_attrs,
    applied_main,
    nix_str,
    parse_lock,
    read_lock_file,
    turn_env,
)
from hivecore.models import Approval, RuntimeChange
from hivecore.nixconfine import Evaluator, agent_allowed_uris, eval_options
from hivecore.repos import Repos, template_commit_sha

VALUE_CAP = 512
"""Characters of one value shown in a runtime change (longer ones are cut, marked ``…``)."""
MAX_CHANGES = 200
"""Runtime changes kept in one review (a summary line says how many more there were)."""
WORK_PREFIX = ".review-eval-"
MODEL_ENV = "HIVE_AGENT_MODEL"
TOOLS_ENV = "HIVE_ALLOWED_TOOLS"


class EvalFailed(HiveError):
    """The proposal does not evaluate; the message is nix's error (or what else broke)."""


# --- pure ---------------------------------------------------------------------------------------


def _cut(value: str) -> str:
    return value if len(value) <= VALUE_CAP else value[:VALUE_CAP] + "…"


def runtime_facts(data: Any, identity: Iterable[str] = ()) -> dict[str, str]:
    """What an evaluated ``hiveAgents.<n>`` (``{command, env, settings}``) runs, flat: ``command``,
    ``model``, ``env KEY`` for each variable agent.nix sets (not hive-c0re's ``identity`` keys,
    which win anyway), ``setting KEY`` (JSON) for every other ``hive.agent`` setting.
    :class:`EvalFailed` when it is not a valid agent (the same checks as a build)."""
    try:
        command = data["command"]
        env = data["env"]
        settings = data.get("settings") or {}
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise TypeError("command must be a non-empty list of strings")
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise TypeError("env must be an attribute set of strings")
        if not isinstance(settings, dict):
            raise TypeError("hive.agent must be an attribute set")
        turn_env(settings)  # raises on a model or allowedTools a build would refuse
    except (KeyError, TypeError, TurnSetupError) as exc:
        raise EvalFailed(f"it is not a valid agent: {exc}") from None
    skip = set(identity) | {MODEL_ENV, TOOLS_ENV}
    facts = {"command": _cut(shlex.join(command))}
    if isinstance(settings.get("model"), str):
        facts["model"] = _cut(settings["model"])
    elif MODEL_ENV in env:
        facts["model"] = _cut(env[MODEL_ENV])
    for key in sorted(env):
        if key not in skip:
            facts[f"env {key}"] = _cut(env[key])
    for key in sorted(settings):
        if key != "model":
            facts[f"setting {key}"] = _cut(json.dumps(settings[key], sort_keys=True))
    return facts


def runtime_changes(before: Mapping[str, str] | None, after: Mapping[str, str]) -> list[RuntimeChange]:
    """Each fact that differs (``before`` ``None``: a new agent, every fact is new), in a stable
    order: command, model, env, settings; at most :data:`MAX_CHANGES`."""
    old = before or {}
    keys = sorted(set(old) | set(after), key=lambda k: (_order(k), k))
    out = [
        RuntimeChange(what=k, before=old.get(k), after=after.get(k))
        for k in keys
        if old.get(k) != after.get(k)
    ]
    if len(out) > MAX_CHANGES:
        more = len(out) - MAX_CHANGES
        out = [*out[:MAX_CHANGES], RuntimeChange(what=f"… and {more} more changes")]
    return out


def _order(key: str) -> int:
    if key == "command":
        return 0
    if key == "model":
        return 1
    return 2 if key.startswith("env ") else 3


def base_lock(lock: Any) -> dict[str, Any] | None:
    """The part of the meta ``flake.lock`` a review evaluation needs: a root whose only input is
    ``hyperhive`` and every node reachable from it; ``None`` when the lock has none."""
    if not isinstance(lock, Mapping) or not isinstance(lock.get("nodes"), Mapping):
        return None
    nodes: Mapping[str, Any] = lock["nodes"]
    root = nodes.get(lock.get("root", "root"))
    inputs = root.get("inputs") if isinstance(root, Mapping) else None
    key = inputs.get(HYPERHIVE) if isinstance(inputs, Mapping) else None
    if not isinstance(key, str) or key not in nodes:
        return None
    kept: dict[str, Any] = {}
    queue = [key]
    while queue:
        k = queue.pop()
        if k in kept or not isinstance(nodes.get(k), Mapping):
            continue
        kept[k] = nodes[k]
        children = nodes[k].get("inputs")
        if isinstance(children, Mapping):
            queue += [v for v in children.values() if isinstance(v, str)]
    kept["root"] = {"inputs": {HYPERHIVE: key}}
    return {"nodes": kept, "root": "root", "version": lock.get("version", 7)}


def render_review_flake(hyperhive_url: str, entry: AgentEntry, sources: Mapping[str, Path]) -> str:
    """A flake whose outputs ``proposed`` (and ``current``) are ``mkAgent`` of the repos in
    ``sources``, with exactly the arguments :func:`hivecore.meta.render_flake` gives the agent."""
    inputs = [f"    {HYPERHIVE}.url = {nix_str(hyperhive_url)};"]
    outputs = []
    command = " ".join(nix_str(c) for c in entry.command)
    for key, repo in sources.items():
        url = nix_str(f"git+file://{repo}?ref=main")
        inputs.append(f"    {nix_str(key)} = {{ url = {url}; flake = false; }};")
        outputs.append(
            f"    {nix_str(key)} = mkAgent {{\n"
            f"      name = {nix_str(entry.name)};\n"
            f"      source = inputs.{nix_str(key)};\n"
            f"      command = [ {command} ];\n"
            f"      identity = {_nix_attrs(entry.identity, '      ')};\n"
            "    };"
        )
    return (
        "# Rendered by hive-c0re to evaluate a proposal for its review; removed afterwards.\n"
        "{\n  inputs = {\n" + "\n".join(inputs) + "\n  };\n"
        "  outputs = { self, hyperhive, ... }@inputs:\n"
        "    let mkAgent = hyperhive.lib.mkAgent; in {\n" + "\n".join(outputs) + "\n  };\n}\n"
    )


def meta_input_changes(
    current: Any, proposed: Any, inputs: Sequence[str], overrides: Mapping[str, str] | None = None
) -> list[RuntimeChange]:
    """``input NAME`` with its current and proposed rev (12 characters) for each of ``inputs``, from
    two parsed ``flake.lock`` files; ``overrides`` name proposed revs known without a lock (an
    agent input moves to its applied main)."""
    now = {v.name: v.rev for v in parse_lock(current)}
    then = {v.name: v.rev for v in parse_lock(proposed)}
    then.update({k: v[:12] for k, v in (overrides or {}).items()})
    return [
        RuntimeChange(what=f"input {n}", before=now.get(n), after=then.get(n, now.get(n))) for n in inputs
    ]


# --- I/O ----------------------------------------------------------------------------------------


def _make_work(root: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))


def _hand_to(work: Path, uid: int) -> None:
    """Give ``work`` and everything in it (the daemon made it all; no link is followed) to ``uid``."""
    for dirpath, dirnames, filenames in os.walk(work, followlinks=False):
        for entry in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, entry), uid, uid, follow_symlinks=False)
    os.chown(work, uid, uid, follow_symlinks=False)


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def clear_leftovers(root: Path) -> int:
    """Remove the ``.review-eval-*`` dirs a crash left under ``root`` (blocking); how many."""
    count = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        if e.name.startswith(WORK_PREFIX) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
            count += 1
    return count


class ReviewEvaluator:
    """Evaluates approvals' proposals (one call at a time is the caller's business:
    :class:`actors.review_evals.ReviewEvals` bounds them). ``entry(name)`` is how the meta flake
    renders the agent (:meth:`hivecore.services.meta_build.MetaBuild.entry`)."""

    def __init__(self, meta: MetaRepo, repos: Repos, entry: Any) -> None:
        self.meta = meta
        self.repos = repos
        self.paths = meta.paths
        self._entry = entry

    async def evaluate(self, approval: Approval) -> list[RuntimeChange]:
        """The runtime changes of ``approval`` (apply_commit, spawn, update_meta_inputs);
        :class:`EvalFailed` (or another :class:`HiveError`) when it does not evaluate."""
        if approval.kind == "update_meta_inputs":
            return await self.meta_update_changes(json.loads(approval.commit_ref or "[]"))
        if approval.kind not in ("apply_commit", "spawn"):
            return []
        if approval.fetched_sha is None:
            raise EvalFailed("the proposal was never pinned")
        return await self._agent_changes(approval)

    async def _agent_changes(self, approval: Approval) -> list[RuntimeChange]:
        name, sha = approval.agent, approval.fetched_sha
        assert sha is not None
        entry: AgentEntry = self._entry(name)
        try:
            user = await trio.to_thread.run_sync(agent_users.evaluator, self.paths)
        except OSError as exc:
            raise EvalFailed(f"cannot prepare the evaluator: {exc}") from None
        work = await trio.to_thread.run_sync(_make_work, self.paths.root)
        try:
            sources = {"proposed": work / "proposed.git"}
            await self._source(approval, sources["proposed"], sha)
            has_current = approval.kind == "apply_commit" and await self.repos.applied_seeded(name)
            if has_current:
                sources["current"] = work / "current.git"
                await self._fetch(name, sources["current"], "refs/heads/main")
            lock = base_lock(await self.meta.lock_data())
            text = render_review_flake(self.meta.hyperhive_url, entry, sources)

            def write() -> None:
                _write(work / "flake.nix", text)
                if lock is not None:
                    _write(work / "flake.lock", json.dumps(lock))
                if user is not None:
                    _hand_to(work, user[0].uid)

            await trio.to_thread.run_sync(write)
            uris = [self.meta.hyperhive_url.removeprefix("git+")]
            if lock is not None:
                uris += agent_allowed_uris(lock, "-", HYPERHIVE)
            uris += [f"file://{p}" for p in sources.values()]
            after = runtime_facts(await self._eval(work, "proposed", name, uris, user), entry.identity)
            before = None
            if has_current:
                try:
                    data = await self._eval(work, "current", name, uris, user)
                    before = runtime_facts(data, entry.identity)
                except HiveError:
                    before = {}  # what runs now no longer evaluates: show every fact as new
            return runtime_changes(before, after)
        finally:
            await trio.to_thread.run_sync(partial(shutil.rmtree, work, ignore_errors=True))

    async def _source(self, approval: Approval, repo: Path, sha: str) -> None:
        """``repo``: a bare repo whose ``main`` is exactly ``sha`` (the pinned commit)."""
        name = approval.agent
        what = f"preparing the review evaluation of approval {approval.id}"
        if (
            approval.kind == "spawn"
            and sha == template_commit_sha()
            and not await self.repos.applied_seeded(name)
        ):
            await self.repos.git(
                repo.parent, "init", "-q", "--bare", "--template=", "-b", "main", str(repo), what=what
            )
            written = await self.repos._template_commit(repo, what=what)
            await self.repos.git(repo, "update-ref", "refs/heads/main", written, what=what)
        else:
            tag = f"refs/tags/proposal/{approval.id}"
            ref = tag if await self.repos.resolve(name, tag) is not None else "refs/heads/main"
            await self._fetch(name, repo, ref)
        got = await self.repos.resolve_in(repo, "refs/heads/main")
        if got != sha:
            raise EvalFailed(f"{what}: the pinned commit is {sha[:12]}, the repo holds {str(got)[:12]}")

    async def _fetch(self, name: str, repo: Path, ref: str) -> None:
        """A bare ``repo`` whose ``main`` is ``ref`` of the applied repo (its history only)."""
        what = f"copying {ref} of {name} for its review evaluation"
        if not await trio.to_thread.run_sync((repo / "HEAD").exists):
            await self.repos.git(
                repo.parent, "init", "-q", "--bare", "--template=", "-b", "main", str(repo), what=what
            )
        source = str(self.repos.applied(name) / ".git")
        await self.repos.git(
            repo,
            "fetch",
            "-q",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            source,
            f"+{ref}:refs/heads/main",
            what=what,
        )

    async def _eval(self, work: Path, attr: str, name: str, uris: list[str], user: Evaluator | None) -> Any:
        out = await self.meta.nix(
            "eval",
            "--json",
            "--no-write-lock-file",
            f"path:{work}#{attr}",
            what=f"agent.nix of {name} does not evaluate",
            error=EvalFailed,
            options=eval_options(uris),
            user=user,
            cwd=work,
        )
        try:
            return json.loads(out)
        except ValueError:
            raise EvalFailed(f"agent.nix of {name}: nix printed no JSON") from None

    async def meta_update_changes(self, inputs: Sequence[str]) -> list[RuntimeChange]:
        """Each input's current and proposed rev: ``agent-<n>`` moves to applied ``main``; the
        others are updated in a confined lock of a copy of the meta flake (nothing is written to
        ``meta/``)."""
        current = await trio.to_thread.run_sync(read_lock_file, self.paths.meta)
        names = list(inputs) or [v.name for v in parse_lock(current) if "/" not in v.name]
        overrides: dict[str, str] = {}
        nix_inputs: list[str] = []
        for n in names:
            if n.startswith("agent-") and "/" not in n:
                main = await trio.to_thread.run_sync(applied_main, self.paths, n.removeprefix("agent-"))
                if main is not None:
                    overrides[n] = main
                    continue
            nix_inputs.append(n)
        proposed = current
        if nix_inputs:
            proposed = await self.meta.lock_preview(await self.meta._update_args(nix_inputs))
        return meta_input_changes(current, proposed, names, overrides)
