"""How agent config is evaluated: confined (issue 14, finding 5).

An approved ``agent.nix`` is the agent's text, evaluated by a root daemon. Flakes' pure mode
already forbids absolute paths (``builtins.readFile /etc/shadow``, ``builtins.path``,
``import /root/x``), ``builtins.getEnv`` (it answers ``""``) and ``<nixpkgs>``; it still lets
through every fetcher given a hash or a rev (``builtins.fetchGit { url = "file:///root/repo";
rev = …; }``, ``fetchTree``, ``fetchurl``/``fetchTarball`` of ``file://`` URLs) and
import-from-derivation (a derivation *built as root* during evaluation). ``nix eval -f`` (the
config check without the meta flake) is not pure at all. So every evaluation of agent config gets:

* ``restrict-eval = true`` with ``allowed-uris`` exactly the inputs it needs
  (:func:`eval_options`): for an agent of the meta flake, the base flake (with its own locked
  inputs) and that agent's released repo (applied ``main``'s history only), nothing else — not
  even the other agents' repos;
* ``allow-import-from-derivation = false`` and an empty ``nix-path`` (no ``<nixpkgs>``, no
  ``NIX_PATH`` from the daemon's environment: :func:`eval_env`);
* under a root daemon, **not root**: nix runs as the evaluator uid on a store of its own
  (``--store <state>/eval-store``, :func:`hivecore.agent_users.evaluator`), so whatever an
  expression gets nix to read (nix 2.8's restricted mode still lets ``builtins.fetchTree { type =
  "path"; … }`` and ``builtins.getFlake`` through) is limited to what that uid may read: the meta
  flake's inputs, not ``/root``, not the daemon's database or token;
* a memory limit (``RLIMIT_AS``) and a time limit (:class:`EvalLimits`), the process group killed
  on timeout and cancellation, and ``PR_SET_PDEATHSIG`` so the evaluator dies with the daemon
  (:mod:`hivecore.proc`).

Locking the meta flake (``nix flake lock``/``update``: :meth:`hivecore.meta.MetaRepo.lock`) runs
as the evaluator uid too, on a copy of the flake in a directory that uid owns, with
:func:`eval_options` allowing the meta flake's inputs (nix 2.8 does not apply ``allowed-uris`` to a
lock's own input fetching; the uid confines it); agent inputs are ``flake = false``: fetched, never
evaluated. :func:`lock_options` are the options of nix calls that evaluate nothing.

Pure functions and constants; the callers run nix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from hivecore.proc import Credentials

Evaluator = tuple[Credentials, Path, dict[str, str]]
"""Who runs a confined evaluation: credentials, their own store dir, environment additions
(:func:`hivecore.agent_users.evaluator`)."""

DEFAULT_EVAL_MEMORY = 2 << 30
"""Bytes of address space (``RLIMIT_AS``) one evaluation may map: a plain agent eval maps ~0.3 GiB."""
DEFAULT_EVAL_TIMEOUT = 120.0
"""Seconds one evaluation (or lock) may take."""


@attrs.frozen
class EvalLimits:
    """What one nix evaluation may use."""

    memory: int = DEFAULT_EVAL_MEMORY
    """``RLIMIT_AS`` of the nix process, bytes."""
    time: float = DEFAULT_EVAL_TIMEOUT
    """Wall-clock seconds before its process group is killed."""


_COMMON = (
    "--option",
    "allow-import-from-derivation",
    "false",
    "--option",
    "nix-path",
    "",
)


def eval_options(allowed_uris: Iterable[str]) -> list[str]:
    """The nix options of a confined evaluation allowing exactly ``allowed_uris`` (deduplicated,
    order kept; empty: nothing may be fetched)."""
    uris = list(dict.fromkeys(u for u in allowed_uris if u))
    for uri in uris:
        if any(c.isspace() for c in uri):
            raise ValueError(f"an allowed URI cannot contain whitespace: {uri!r}")
    return [*_COMMON, "--option", "restrict-eval", "true", "--option", "allowed-uris", " ".join(uris)]


def evaluator_options(store: Path) -> list[str]:
    """Options of an evaluation run as the evaluator uid: its own (chroot) store, no substituters
    (an input missing from that store is fetched from its source, never a binary cache)."""
    return ["--store", str(store), "--option", "substituters", ""]


def lock_options() -> list[str]:
    """The options of a nix call that evaluates no agent config (``nix --version``)."""
    return list(_COMMON)


def eval_env() -> dict[str, str]:
    """The environment of a nix evaluation: :func:`~hivecore.repos.clean_env` without ``NIX_PATH``
    (restricted mode allows every search-path entry) and with no ``NIX_CONFIG`` from the daemon."""
    from hivecore.repos import clean_env  # (repos runs confined evaluations too)

    env = clean_env()
    env.pop("NIX_PATH", None)
    env.pop("NIX_CONFIG", None)
    return env


def node_uris(node: Mapping[str, Any]) -> list[str]:
    """The URIs nix checks when it fetches one ``flake.lock`` node: a ``git``/``tarball``/``file``
    node's ``url`` (a local one as ``file://…``), a ``path`` node's path, forge nodes' hosts."""
    out: list[str] = []
    for key in ("locked", "original"):
        ref = node.get(key)
        if not isinstance(ref, Mapping):
            continue
        url, kind = ref.get("url"), ref.get("type")
        if isinstance(url, str):
            out.append(url.removeprefix("git+"))
        path = ref.get("path")
        if kind == "path" and isinstance(path, str):
            out += [path, f"file://{path}"]
        owner, repo = ref.get("owner"), ref.get("repo")
        if kind in ("github", "gitlab", "sourcehut") and isinstance(owner, str) and isinstance(repo, str):
            host = {"github": "github.com", "gitlab": "gitlab.com", "sourcehut": "git.sr.ht"}[kind]
            out += [f"{kind}:{owner}/{repo}", f"https://{host}/{owner}/{repo}"]
            if kind == "github":
                out.append(f"https://api.github.com/repos/{owner}/{repo}")
    return out


def agent_allowed_uris(lock: Any, agent_input: str, base_input: str) -> list[str]:
    """What evaluating one agent of the meta flake may fetch: every node reachable from
    ``base_input`` (the base flake and its own inputs) and the ``agent_input`` node; never another
    agent's input. ``lock`` is the parsed ``flake.lock`` (anything else: nothing allowed)."""
    if not isinstance(lock, Mapping) or not isinstance(lock.get("nodes"), Mapping):
        return []
    nodes: Mapping[str, Any] = lock["nodes"]
    root = nodes.get(lock.get("root", "root"))
    inputs = root.get("inputs") if isinstance(root, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    out: list[str] = []
    seen: set[str] = set()
    queue = [inputs.get(agent_input), inputs.get(base_input)]
    while queue:
        key = queue.pop()
        if not isinstance(key, str) or key in seen:
            continue
        seen.add(key)
        node = nodes.get(key)
        if not isinstance(node, Mapping):
            continue
        out += node_uris(node)
        if key == inputs.get(agent_input):
            continue  # flake = false: its inputs are never followed
        children = node.get("inputs")
        if isinstance(children, Mapping):
            queue += [v for v in children.values() if isinstance(v, str)]
    return list(dict.fromkeys(out))
