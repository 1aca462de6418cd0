"""The meta flake (reference §3): ``<state>/meta/``, a git repo whose ``flake.nix`` is rendered from
the agent set, and the base flake ``<state>/base/`` that provides ``mkAgent``.

* ``flake.nix`` has the input ``hyperhive`` (the base flake: ``git+file://<state>/base`` seeded from
  ``hivecore/templates/base/``, or ``--hyperhive-flake``) and one ``agent-<n>`` per agent
  (``git+file://<state>/applied/<n>``, ``flake = false``: the applied repo holds ``agent.nix``).
  Outputs: ``hiveAgents.<n>`` (``command``, ``env``, ``settings``: what the process runtime runs,
  read with ``nix eval --json``) and ``nixosConfigurations.<n>`` (a lazy placeholder that never
  forces nixpkgs).
* Everything is offline: no nixpkgs, no remote input; nix runs with the flakes feature enabled.

:class:`MetaRepo` does the git and nix work (``trio.run_process`` children with capped output and a
wall-clock ``timeout``); only :class:`actors.meta_lock.MetaLock` calls it, one operation at a time.
Deployed records (``<state>/deployed/<n>.json``: the agent and base revs an agent runs) live beside
it and feed the views' ``needs_update``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import trio

from hivecore import agent_users, gitlocks, proc
from hivecore.atomic import write_text_atomic
from hivecore.claude_turn import TurnSetupError, allowed_tools, valid_model
from hivecore.config import StatePaths
from hivecore.errors import HiveError
from hivecore.models import MetaInputView
from hivecore.nixconfine import (
    EvalLimits,
    Evaluator,
    agent_allowed_uris,
    eval_env,
    eval_options,
    evaluator_options,
    lock_options,
    node_uris,
)
from hivecore.repos import BuildFailed, Repos, nix_binary, useful_lines
from hivecore.runtime.base import AgentSpec
from hivecore.topology import parse_allowed

log = logging.getLogger(__name__)

HYPERHIVE = "hyperhive"
FLAKE_FILES = ("flake.nix", "flake.lock")
NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
BASE_TEMPLATE_FILES = ("flake.nix",)
DEPLOYED_DIR = "deployed"
TEMPLATE_MARKER = "# hivecore meta template"
STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+")
STORE_DRV = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+\.drv")
BUILD_TIME_LIMIT = 3600.0
"""Seconds a container system's build (``nix-store --realise``) may take."""
"""The first line of every rendered flake.nix."""


class MetaFailure(HiveError):
    """A meta repo operation failed; the message names the operation and the useful error lines."""


def agent_input(name: str) -> str:
    return f"agent-{name}"


def nix_str(value: str) -> str:
    """``value`` as a double-quoted Nix string literal: ``\\``, ``"`` and ``${`` escaped (so an
    interpolation is never evaluated), control characters as escapes; other text byte for byte."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _nix_attrs(values: Mapping[str, str], indent: str) -> str:
    lines = [f"{indent}  {nix_str(k)} = {nix_str(v)};" for k, v in sorted(values.items())]
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


@attrs.frozen(kw_only=True)
class AgentEntry:
    """One agent as rendered into the meta flake."""

    name: str
    applied: Path
    command: tuple[str, ...]
    identity: Mapping[str, str]
    """The environment hive-c0re sets (``HIVE_*``, ``PATH``, ``PYTHONPATH``); wins over agent.nix."""


def render_flake(hyperhive_url: str, agents: Iterable[AgentEntry]) -> str:
    """The meta ``flake.nix`` for ``agents`` (sorted by name); deterministic."""
    entries = sorted(agents, key=lambda a: a.name)
    inputs = [f"    {HYPERHIVE}.url = {nix_str(hyperhive_url)};"]
    for a in entries:
        url = nix_str(f"git+file://{a.applied}?ref=main")  # a bare repo: nix would default to master
        inputs.append(f"    {nix_str(agent_input(a.name))} = {{ url = {url}; flake = false; }};")
    hive = []
    nixos = []
    for a in entries:
        command = " ".join(nix_str(c) for c in a.command)
        hive.append(
            f"      {nix_str(a.name)} = mkAgent {{\n"
            f"        name = {nix_str(a.name)};\n"
            f"        source = inputs.{nix_str(agent_input(a.name))};\n"
            f"        command = [ {command} ];\n"
            f"        identity = {_nix_attrs(a.identity, '        ')};\n"
            "      };"
        )
        agent = f"self.hiveAgents.{nix_str(a.name)}"
        nixos.append(
            f'      {nix_str(a.name)} = {{ _type = "hive-placeholder"; agent = {agent}; '
            f"config.system.build.toplevel = hiveSystem {nix_str(a.name)} {agent}; }};"
        )
    return (
        f"{TEMPLATE_MARKER}\n"
        "# Rendered by hive-c0re from the agent set; do not edit (it is re-rendered on every sync).\n"
        "{\n"
        "  inputs = {\n" + "\n".join(inputs) + "\n  };\n\n"
        "  outputs = { self, hyperhive, ... }@inputs:\n"
        "    let\n"
        "      mkAgent = hyperhive.lib.mkAgent;\n"
        "      # a stand-in system closure (a store dir holding the evaluated agent) until the base\n"
        "      # flake provides NixOS systems; built like one: evaluated confined, realised by the daemon\n"
        "      hiveSystem = name: agent: derivation {\n"
        '        name = "hive-system-${name}";\n'
        '        system = "builtin";\n'
        '        builder = "builtin:buildenv";\n'
        "        derivations = [ ];\n"
        '        manifest = builtins.toFile "hive-agent-${name}.json"\n'
        "          (builtins.toJSON { inherit (agent) command env; });\n"
        "      };\n"
        "    in {\n"
        "    hiveAgents = {\n" + "\n".join(hive) + "\n    };\n"
        "    nixosConfigurations = {\n" + "\n".join(nixos) + "\n    };\n"
        "  };\n"
        "}\n"
    )


def _template_version() -> str:
    sample = AgentEntry(name="x", applied=Path("/x"), command=("c",), identity={"K": "v"})
    return hashlib.sha256(render_flake("u", [sample]).encode()).hexdigest()[:16]


TEMPLATE_VERSION = _template_version()
"""A hash of what :func:`render_flake` produces: a hivecore whose rendering differs has another
version, so every agent deployed with the old one is stale and auto_update re-points it."""


# --- the lock ------------------------------------------------------------------------------------


def _original_url(node: Mapping[str, Any]) -> str | None:
    original = node.get("original")
    if not isinstance(original, Mapping):
        return None
    url = original.get("url")
    if isinstance(url, str):
        return url
    kind, path = original.get("type"), original.get("path")
    if isinstance(kind, str) and isinstance(path, str):
        return f"{kind}:{path}"
    return None


def _input_order(view: MetaInputView) -> tuple[int, str]:
    if view.name == HYPERHIVE:
        return (0, "")
    if view.name.startswith("agent-") and "/" not in view.name:
        return (1, view.name)
    return (2, view.name)


def parse_lock(data: Any) -> list[MetaInputView]:
    """Every input of a ``flake.lock`` at every depth, each node once at its shallowest path
    (breadth first), ``follows`` aliases and rev-less nodes skipped; ``hyperhive`` first, then the
    ``agent-*`` inputs alphabetically, then the rest alphabetically."""
    if not isinstance(data, Mapping):
        return []
    nodes = data.get("nodes")
    root = data.get("root", "root")
    if not isinstance(nodes, Mapping) or not isinstance(root, str):
        return []
    seen: set[str] = {root}
    out: list[MetaInputView] = []
    queue: list[tuple[str, str]] = [("", root)]
    while queue:
        nxt: list[tuple[str, str]] = []
        for prefix, key in queue:
            node = nodes.get(key)
            if not isinstance(node, Mapping):
                continue
            inputs = node.get("inputs")
            if not isinstance(inputs, Mapping):
                continue
            for name in sorted(inputs):
                target = inputs[name]
                if not isinstance(target, str) or target in seen:  # a list is a ``follows`` alias
                    continue
                seen.add(target)
                path = f"{prefix}{name}"
                child = nodes.get(target)
                if not isinstance(child, Mapping):
                    continue
                nxt.append((f"{path}/", target))
                locked = child.get("locked")
                rev = locked.get("rev") if isinstance(locked, Mapping) else None
                if not isinstance(rev, str):
                    continue
                modified = locked.get("lastModified") if isinstance(locked, Mapping) else None
                out.append(
                    MetaInputView(
                        name=path,
                        rev=rev[:12],
                        last_modified=modified if isinstance(modified, int) else None,
                        url=_original_url(child),
                    )
                )
        queue = nxt
    return sorted(out, key=_input_order)


def locked_revs(data: Any) -> dict[str, str]:
    """The full locked rev of each top-level input (``{"hyperhive": …, "agent-coder": …}``)."""
    revs: dict[str, str] = {}
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), Mapping):
        return revs
    nodes = data["nodes"]
    root = nodes.get(data.get("root", "root"))
    inputs = root.get("inputs") if isinstance(root, Mapping) else None
    if not isinstance(inputs, Mapping):
        return revs
    for name, target in inputs.items():
        node = nodes.get(target) if isinstance(target, str) else None
        locked = node.get("locked") if isinstance(node, Mapping) else None
        rev = locked.get("rev") if isinstance(locked, Mapping) else None
        if isinstance(rev, str):
            revs[name] = rev
    return revs


def read_lock_file(meta: Path) -> Any:
    """The parsed ``flake.lock`` (blocking), or ``None`` when it is missing or unreadable."""
    try:
        return json.loads((meta / "flake.lock").read_bytes())
    except (OSError, ValueError):
        return None


# --- deployed records (what each agent runs) -------------------------------------------------------


@attrs.frozen
class Deployed:
    agent: str
    """The applied ``main`` rev the agent was last deployed from."""
    hyperhive: str | None
    """The base flake's rev it was deployed with."""
    template: str | None = None


def deployed_path(paths: StatePaths, name: str) -> Path:
    return paths.root / DEPLOYED_DIR / f"{name}.json"


def write_deployed(paths: StatePaths, name: str, record: Deployed) -> None:
    """Record (atomically; blocking) what ``name`` now runs."""
    target = deployed_path(paths, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, json.dumps(attrs.asdict(record)), tmp=target.with_suffix(".tmp"))


def read_deployed(paths: StatePaths, name: str) -> Deployed | None:
    try:
        data = json.loads(deployed_path(paths, name).read_bytes())
        return Deployed(str(data["agent"]), data.get("hyperhive"), data.get("template"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def applied_main(paths: StatePaths, name: str) -> str | None:
    """The applied repo's ``main`` rev, read from the ref files (blocking, no git child)."""
    return _main_ref(paths.applied_root / name / ".git")


def _main_ref(git: Path) -> str | None:
    try:
        return (git / "refs" / "heads" / "main").read_text().strip() or None
    except OSError:
        pass
    try:
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, ref = line.partition(" ")
            if ref == "refs/heads/main":
                return sha
    except OSError:
        pass
    return None


@attrs.frozen
class MetaFacts:
    """What the meta lock says now (read once per scan): the base rev and the template in use."""

    hyperhive: str | None
    template: str | None


def read_meta_facts(paths: StatePaths) -> MetaFacts | None:
    """``None`` when there is no meta repo (then nothing is ever stale)."""
    data = read_lock_file(paths.meta)
    if data is None:
        return None
    rev = locked_revs(data).get(HYPERHIVE)
    base = paths.root / "base"
    try:
        url = data["nodes"][HYPERHIVE]["locked"]["url"]
    except (KeyError, TypeError):
        url = None
    if url == f"file://{base}":  # the seeded base: a newer commit there is news before any relock
        rev = _main_ref(base / ".git") or rev
    return MetaFacts(rev, TEMPLATE_VERSION)


def is_stale(paths: StatePaths, name: str, facts: MetaFacts | None) -> tuple[bool, str | None]:
    """``(stale, deployed agent rev)``: stale when the applied main or the locked base rev is not
    what the agent was deployed with, or it was never deployed through the meta flake."""
    if facts is None:
        return False, None
    main = applied_main(paths, name)
    record = read_deployed(paths, name)
    if record is None:
        return main is not None, None
    stale = (
        (main is not None and main != record.agent)
        or (facts.hyperhive is not None and facts.hyperhive != record.hyperhive)
        or record.template != facts.template
    )
    return stale, record.agent


# --- the repo ------------------------------------------------------------------------------------

MAX_LOCK_BYTES = 4 << 20
"""The largest ``flake.lock`` read back from a confined lock."""


def _lock_uris(lock: Any) -> list[str]:
    """Every URI a ``flake.lock`` names (what a relock may fetch again)."""
    nodes = lock.get("nodes") if isinstance(lock, Mapping) else None
    if not isinstance(nodes, Mapping):
        return []
    return [uri for node in nodes.values() if isinstance(node, Mapping) for uri in node_uris(node)]


def _read_lock_back(path: Path) -> bytes:
    """The ``flake.lock`` a confined lock wrote (blocking): a regular file reached without a link,
    at most :data:`MAX_LOCK_BYTES`, a JSON object; :class:`MetaFailure` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise MetaFailure(f"the confined lock wrote no usable flake.lock: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LOCK_BYTES:
            raise MetaFailure("the confined lock wrote no usable flake.lock (not a regular file, or too big)")
        data = f.read(MAX_LOCK_BYTES + 1)
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("nodes"), dict):
        raise MetaFailure("the confined lock wrote a flake.lock that is not a lock file")
    return data


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def memory_hint(result: proc.Result, limits: EvalLimits) -> str:
    """A note for an evaluation that ran out of its memory limit (nix says so, or dies of it)."""
    text = result.stderr.decode(errors="replace")
    if "out of memory" in text or "bad_alloc" in text or result.returncode < 0:
        return f"\n(the evaluation memory limit is {limits.memory >> 20} MiB)"
    return ""


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return (0,)
    return tuple(int(g) for g in match.groups() if g is not None)


@attrs.define
class _Timed:
    outcome: str = "failed"


NixTimings = Callable[[str, str, float], None]
"""``(operation, outcome, seconds)`` of each timed nix child: operation ``eval``, ``lock``,
``update``, ``copy`` or ``build``; outcome ``ok``, ``failed`` or ``timeout``
(:meth:`hivecore.metrics.Metrics.nix_ran`)."""


def nix_operation(args: Sequence[str]) -> str | None:
    """The operation a :meth:`MetaRepo.nix` command line (its words after the options) is timed as,
    or None for one that is not timed (``--version``)."""
    if not args:
        return None
    if args[0] == "eval":
        return "eval"
    if args[0] == "flake" and len(args) > 1 and args[1] in ("lock", "update"):
        return args[1]
    return None


class MetaRepo:
    """The git and nix work on ``<state>/meta`` and ``<state>/base`` (not serialised: see MetaLock)."""

    def __init__(
        self,
        paths: StatePaths,
        *,
        hyperhive_flake: str | None = None,
        nix: str | None = None,
        eval_limits: EvalLimits | None = None,
        timings: NixTimings | None = None,
    ) -> None:
        self.timings = timings
        """Told how long each nix child ran (``/metrics``)."""
        self.paths = paths
        self.eval_limits = eval_limits or EvalLimits()
        """Memory and time limits of every nix child (see :mod:`hivecore.nixconfine`)."""
        self.dir = paths.meta
        self.base = paths.root / "base"
        self.hyperhive_flake = hyperhive_flake
        self._nix = nix
        self._git = Repos(paths)
        self._nix_version: tuple[int, ...] | None = None

    @property
    def hyperhive_url(self) -> str:
        return self.hyperhive_flake or f"git+file://{self.base}"

    # -- helpers --

    @contextlib.contextmanager
    def _timed(self, operation: str | None) -> Iterator[_Timed]:
        """Time a nix child for :attr:`timings`: ``failed`` unless the block sets the outcome (an
        exception, a cancellation)."""
        timed = _Timed()
        started = time.monotonic()
        try:
            yield timed
        finally:
            if self.timings is not None and operation is not None:
                try:
                    self.timings(operation, timed.outcome, time.monotonic() - started)
                except Exception:
                    log.exception("meta: the nix timings hook failed")

    async def git(self, repo: Path, *args: str, what: str, check: bool = True) -> str:
        result = await self._git.git(repo, *args, what=what, check=check, identity=True)
        return result.stdout.decode(errors="replace").strip()

    async def nix(
        self,
        *args: str,
        what: str,
        cwd: Path | None = None,
        error: type[HiveError] | None = None,
        options: Sequence[str] | None = None,
        user: Evaluator | None = None,
    ) -> bytes:
        """``nix <options> <args>`` confined (:mod:`hivecore.nixconfine`): ``options`` default to
        :func:`~hivecore.nixconfine.lock_options`; the memory and time limits of
        :attr:`eval_limits` always apply; with ``user``, nix runs as the evaluator on its store."""
        limits = self.eval_limits
        opts = lock_options() if options is None else list(options)
        env = eval_env()
        who = None
        if user is not None:
            who, store, extra = user
            opts += evaluator_options(store)
            env.update(extra)
        cmd = [self._nix or nix_binary(), *NIX_FEATURES, *opts, *args]
        fail = error or MetaFailure
        with self._timed(nix_operation(args)) as timed:
            try:
                result = await proc.run(
                    cmd, env=env, cwd=cwd, time_limit=limits.time, memory_limit=limits.memory, user=who
                )
            except OSError as exc:
                raise MetaFailure(f"{what}: cannot run nix: {exc.strerror or exc}") from None
            timed.outcome = "timeout" if result.timed_out else "ok" if result.returncode == 0 else "failed"
        if result.timed_out:
            raise fail(f"{what}: nix did not finish within {limits.time:g} s (the evaluation time limit)")
        if result.returncode != 0:
            raise fail(f"{what}:\n{useful_lines(result.stderr)}{memory_hint(result, limits)}")
        return result.stdout

    async def release(self, name: str) -> None:
        """Bring ``released/<name>`` (a bare repo, the meta flake's ``agent-<name>`` input) to
        applied ``main``: only ``main``'s history is fetched (approved commits and the template),
        never a pending proposal's tag or objects, so what an evaluation may fetch of the agent's
        own repo (``allowed-uris``) is approved history only. No git when it is already there; git
        runs only in the daemon's own repos.
        """
        main = await trio.to_thread.run_sync(applied_main, self.paths, name)
        target = self.paths.released(name)
        if main is None or await trio.to_thread.run_sync(_main_ref, target) == main:
            return
        what = f"releasing the approved config of {name}"
        if not await trio.to_thread.run_sync((target / "HEAD").is_file):
            await trio.to_thread.run_sync(partial(target.mkdir, mode=0o755, parents=True, exist_ok=True))
            await self.git(target, "init", "-q", "--bare", "-b", "main", what=what)
        source = str(self.paths.applied(name))
        refspec = "+refs/heads/main:refs/heads/main"
        await self.git(target, "fetch", "-q", "--no-tags", "--force", "--", source, refspec, what=what)

    async def lock(
        self, args: Sequence[str], *, what: str, agents: Iterable[AgentEntry] | None = None
    ) -> None:
        """``nix <args> <flake>`` (a lock or an update of the meta flake), confined.

        Locking reads each input's ``flake.nix`` (the base flake's; agents' inputs are ``flake =
        false``, never read) and fetches every input. Under a root daemon it runs as the evaluator
        uid on its own store (:func:`hivecore.agent_users.evaluator`), on a copy of ``flake.nix``
        and ``flake.lock`` in a fresh directory that uid owns; the resulting ``flake.lock`` is read
        back as data (a regular file, at most 4 MiB, JSON) and written into the meta repo by the
        daemon. So whatever an input names, nix reads only what that uid may read: the meta
        flake's inputs, never root-only paths. Options: :func:`~hivecore.nixconfine.eval_options`
        allowing the meta flake's own inputs (nix 2.8 applies ``allowed-uris`` to builtins'
        fetchers, not to the lock's own input fetching: the uid is what confines that), no
        import-from-derivation, memory and time limits. A non-root daemon locks in place as itself.
        """
        entries = list(agents) if agents is not None else None
        uris = [self.hyperhive_url.removeprefix("git+")]
        if entries is not None:
            uris += [f"file://{a.applied}" for a in entries]
        else:
            uris += [u for u in _lock_uris(await self.lock_data())]
        options = eval_options(uris)
        try:
            user = await trio.to_thread.run_sync(agent_users.evaluator, self.paths)
        except OSError as exc:
            raise MetaFailure(f"{what}: cannot prepare the evaluator: {exc}") from None
        if user is None:
            await self.nix(*args, str(self.dir), what=what, cwd=self.dir, options=options)
            return
        work = await trio.to_thread.run_sync(self._lock_workdir, user[0].uid)
        try:
            await self.nix(*args, f"path:{work}", what=what, cwd=work, options=options, user=user)
            lock = await trio.to_thread.run_sync(_read_lock_back, work / "flake.lock")
            await trio.to_thread.run_sync(self._write_lock, lock)
        finally:
            await trio.to_thread.run_sync(_remove_tree, work)

    async def lock_preview(self, args: Sequence[str]) -> Any:
        """The parsed ``flake.lock`` that ``nix <args>`` (an update of some inputs) would write,
        locked confined exactly as :meth:`lock` does but always on a copy in a fresh
        ``<state>/.meta-lock-*`` and never written back: ``meta/`` is only read, so this needs no
        turn of the meta lock actor (an approval's review runs it)."""
        options = eval_options([self.hyperhive_url.removeprefix("git+"), *_lock_uris(await self.lock_data())])
        what = "previewing the meta update"
        try:
            user = await trio.to_thread.run_sync(agent_users.evaluator, self.paths)
        except OSError as exc:
            raise MetaFailure(f"{what}: cannot prepare the evaluator: {exc}") from None
        if user is not None:
            work = await trio.to_thread.run_sync(self._lock_workdir, user[0].uid)
        else:
            work = await trio.to_thread.run_sync(self._lock_workdir, os.geteuid(), os.getegid())
        try:
            await self.nix(*args, f"path:{work}", what=what, cwd=work, options=options, user=user)
            return json.loads(await trio.to_thread.run_sync(_read_lock_back, work / "flake.lock"))
        finally:
            await trio.to_thread.run_sync(_remove_tree, work)

    def _lock_workdir(self, uid: int, gid: int | None = None) -> Path:
        """A fresh ``<state>/.meta-lock-*`` (0700) holding copies of ``flake.nix`` and
        ``flake.lock``, handed to ``uid`` (and ``gid``, default the same number; blocking)."""
        gid = uid if gid is None else gid
        work = Path(tempfile.mkdtemp(prefix=".meta-lock-", dir=self.paths.root))
        for name in FLAKE_FILES:
            try:
                data = (self.dir / name).read_bytes()
            except FileNotFoundError:
                continue
            fd = os.open(
                work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchown(f.fileno(), uid, gid)
        os.chown(work, uid, gid, follow_symlinks=False)
        return work

    def _write_lock(self, data: bytes) -> None:
        target = self.dir / "flake.lock"
        if target.exists() and target.read_bytes() == data:
            return
        tmp = self.dir / ".flake.lock.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)

    async def nix_version(self) -> tuple[int, ...]:
        if self._nix_version is None:
            out = await self.nix("--version", what="probing the nix version")
            self._nix_version = _version_tuple(out.decode(errors="replace"))
        return self._nix_version

    async def _update_args(self, inputs: Sequence[str]) -> list[str]:
        if await self.nix_version() >= (2, 19):
            return ["flake", "update", *inputs]
        args = ["flake", "lock"]
        for name in inputs:
            args += ["--update-input", name]
        return args

    async def _commit_if_changed(self, message: str) -> bool:
        what = f"committing the meta repo ({message})"
        await self.git(self.dir, "add", "--", *FLAKE_FILES, what=what)
        status = await self.git(self.dir, "status", "--porcelain", "--", *FLAKE_FILES, what=what)
        if not status:
            return False
        await self.git(self.dir, "commit", "-q", "-m", message, "--", *FLAKE_FILES, what=what)
        log.info("meta: committed %r", message)
        return True

    # -- startup --

    def clean_stale_locks(self) -> bool:
        """Remove the git lock files a crash left in the meta and base repos (``index.lock``,
        ``HEAD.lock``, ``refs/…/*.lock``: :mod:`hivecore.gitlocks`); blocking, only while nothing
        runs git there. Whether any was removed."""
        removed = gitlocks.clear_stale_locks(self.dir, "meta")
        removed += gitlocks.clear_stale_locks(self.base, "meta base")
        return bool(removed)

    async def seed_base(self) -> bool:
        """Write the shipped base flake into ``<state>/base`` and commit it when it changed."""
        if self.hyperhive_flake is not None:
            return False

        def write() -> bool:
            self.base.mkdir(parents=True, exist_ok=True)
            changed = False
            source = resources.files("hivecore") / "templates" / "base"
            for fname in BASE_TEMPLATE_FILES:
                data = (source / fname).read_bytes()
                target = self.base / fname
                if not target.exists() or target.read_bytes() != data:
                    target.write_bytes(data)
                    changed = True
            return changed

        changed = await trio.to_thread.run_sync(write)
        what = "seeding the base flake"
        if not await trio.to_thread.run_sync((self.base / ".git").is_dir):
            await self.git(self.base, "init", "-q", "-b", "main", what=what)
        await self.git(self.base, "add", "--", *BASE_TEMPLATE_FILES, what=what)
        status = await self.git(self.base, "status", "--porcelain", what=what)
        if status:
            await self.git(self.base, "commit", "-q", "-m", "hyperhive base flake", what=what)
            log.info("meta: committed the base flake at %s", self.base)
            return True
        return changed

    # -- operations (called by MetaLock only) --

    async def sync(self, agents: Iterable[AgentEntry]) -> bool:
        """Render ``flake.nix``, lock the missing inputs (and drop removed ones), commit if anything
        changed. Idempotent; also repairs a repo a crash left half-done. Returns whether it committed."""
        entries = list(agents)
        for entry in entries:
            await self.release(entry.name)
        text = render_flake(self.hyperhive_url, entries)
        first = not await trio.to_thread.run_sync((self.dir / ".git").is_dir)

        def write() -> None:
            self.dir.mkdir(parents=True, exist_ok=True)
            target = self.dir / "flake.nix"
            if not target.exists() or target.read_text() != text:
                write_text_atomic(target, text)

        await trio.to_thread.run_sync(write)
        what = "syncing the meta flake"
        if first:
            await self.git(self.dir, "init", "-q", "-b", "main", what=what)
        await self.git(self.dir, "add", "--", "flake.nix", what=what)
        await self.lock(["flake", "lock"], what="locking the meta flake", agents=entries)
        message = f"seed meta from {len(entries)} agents" if first else "regenerate meta flake"
        return await self._commit_if_changed(message)

    async def lock_update(self, inputs: Sequence[str], message: str | None = None) -> bool:
        """Update exactly ``inputs`` in one nix call; one commit (``message``, default ``lock update:
        a, b``) if it changed."""
        if not inputs:
            return False
        for name in inputs:
            if name.startswith("agent-"):
                await self.release(name.removeprefix("agent-"))
        args = await self._update_args(inputs)
        await self.lock(args, what=f"updating {', '.join(inputs)}")
        return await self._commit_if_changed(message or f"lock update: {', '.join(inputs)}")

    async def lock_data(self) -> Any:
        return await trio.to_thread.run_sync(read_lock_file, self.dir)

    async def _confinement(self, name: str, what: str) -> tuple[list[str], Evaluator | None]:
        """The options and the evaluator of a confined evaluation of agent ``name``: only the base
        flake (and its locked inputs) and this agent's applied repo may be fetched."""
        lock = await self.lock_data()
        options = eval_options(agent_allowed_uris(lock, agent_input(name), HYPERHIVE))
        try:
            user = await trio.to_thread.run_sync(agent_users.evaluator, self.paths)
        except OSError as exc:
            raise BuildFailed(f"{what}: cannot prepare the evaluator: {exc}") from None
        return options, user

    async def build_system(self, name: str) -> str:
        """The nixos runtime's container system of ``name``: its ``/nix/store`` path.

        ``nixosConfigurations.<n>.config.system.build.toplevel.drvPath`` is evaluated **confined**
        (exactly as :meth:`evaluate`: restrict-eval, allowed-uris, no import-from-derivation, the
        evaluator uid on its own store, memory and time limits); the derivation (inert data: a build
        recipe and its sources) is copied into the host store (``nix copy --derivation``) and
        realised there (``nix-store --realise``: nix's sandboxed builders; nothing is evaluated).
        ``nixos-container`` then only gets the store path. :class:`BuildFailed` names what broke.
        """
        what = f"the system of {name} does not build"
        options, user = await self._confinement(name, what)
        attr = f'{self.dir}#nixosConfigurations."{name}".config.system.build.toplevel.drvPath'
        out = await self.nix(
            "eval",
            "--raw",
            "--no-write-lock-file",
            attr,
            what=what,
            error=BuildFailed,
            options=options,
            user=user,
        )
        drv = out.decode(errors="replace").strip()
        if STORE_DRV.fullmatch(drv) is None:
            raise BuildFailed(f"{what}: its toplevel is not a derivation ({drv[:200]!r})")
        nix = self._nix or nix_binary()
        if user is not None:
            _, store, _ = user
            await self._host_nix(
                [nix, *NIX_FEATURES, "copy", "--no-check-sigs", "--derivation", "--from", str(store), drv],
                what=f"{what}: copying {drv} from the evaluator's store",
                operation="copy",
            )
        realised = await self._host_nix(
            [str(Path(nix).with_name("nix-store")) if "/" in nix else "nix-store", "--realise", drv],
            what=f"{what}: building {drv}",
            operation="build",
            time_limit=BUILD_TIME_LIMIT,
        )
        paths = realised.decode(errors="replace").split()
        if len(paths) != 1 or STORE_PATH.fullmatch(paths[0]) is None:
            raise BuildFailed(f"{what}: {drv} did not build one store path ({paths[:4]!r})")
        return paths[0]

    async def _host_nix(
        self, argv: list[str], *, what: str, operation: str, time_limit: float | None = None
    ) -> bytes:
        """A nix step that evaluates nothing (copy a derivation, realise one), run as the daemon
        with the host's nix configuration (``NIX_CONFIG`` of the daemon kept)."""
        env = eval_env()
        if "NIX_CONFIG" in os.environ:
            env["NIX_CONFIG"] = os.environ["NIX_CONFIG"]
        limit = time_limit if time_limit is not None else self.eval_limits.time
        with self._timed(operation) as timed:
            try:
                result = await proc.run(argv, env=env, time_limit=limit)
            except OSError as exc:
                raise BuildFailed(f"{what}: cannot run nix: {exc.strerror or exc}") from None
            timed.outcome = "timeout" if result.timed_out else "ok" if result.returncode == 0 else "failed"
        if result.timed_out:
            raise BuildFailed(f"{what}: did not finish within {limit:g} s")
        if result.returncode != 0:
            raise BuildFailed(f"{what}:\n{useful_lines(result.stderr)}")
        return result.stdout

    async def evaluate(self, name: str) -> AgentSpec:
        """``nix eval --json <meta>#hiveAgents.<n>``, confined: the command and environment to run.

        Only the base flake (and its locked inputs) and this agent's applied repo may be fetched;
        under a root daemon nix runs as the evaluator uid on its own store
        (:func:`hivecore.agent_users.evaluator`); see :mod:`hivecore.nixconfine`.
        :class:`BuildFailed` names what broke.
        """
        attr = f"{self.dir}#hiveAgents.{name}"
        what = f"agent.nix of {name} does not evaluate"
        options, user = await self._confinement(name, what)
        out = await self.nix(
            "eval",
            "--json",
            "--no-write-lock-file",
            attr,
            what=what,
            error=BuildFailed,
            options=options,
            user=user,
        )
        try:
            data = json.loads(out)
            command = data["command"]
            env = data["env"]
            if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
                raise TypeError("command must be a non-empty list of strings")
            if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
                raise TypeError("env must be an attribute set of strings")
            env = {**env, **turn_env(data.get("settings"))}
            recipients = parse_allowed(data.get("allowedRecipients"))
        except (ValueError, KeyError, TypeError, TurnSetupError) as exc:
            raise BuildFailed(f"hiveAgents.{name} is not a valid agent: {exc}") from None
        return AgentSpec(
            name=name,
            command=tuple(command),
            env=env,
            flake_ref=f"{self.dir}#{name}",
            allowed_recipients=recipients,
        )


def turn_env(settings: object) -> dict[str, str]:
    """What the harness's Claude turns need from ``hive.agent`` settings: ``model`` as
    ``HIVE_AGENT_MODEL``, ``allowedTools`` (a list of Claude Code permission rules) as
    ``HIVE_ALLOWED_TOOLS`` (JSON). They override agent.nix's own ``env`` of the same names.
    :class:`TypeError` or :class:`~hivecore.claude_turn.TurnSetupError` for malformed values."""
    if not isinstance(settings, dict):
        return {}
    out: dict[str, str] = {}
    model = settings.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise TypeError("hive.agent.model must be a string")
        out["HIVE_AGENT_MODEL"] = valid_model(model)
    tools = settings.get("allowedTools")
    if tools is not None:
        raw = json.dumps(tools)
        allowed_tools(raw)  # raises on a bad shape or rule
        out["HIVE_ALLOWED_TOOLS"] = raw
    return out
