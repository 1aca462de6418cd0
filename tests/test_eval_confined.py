"""Agent config is evaluated confined (issue 14, finding 5), with real nix as root.

Each variant is a line an approved ``agent.nix`` could hold. On main before this change the
fetchers read a root-only repo or file into the world-readable store and the value reached the
agent's environment; ``nix eval -f`` (the config check without the meta flake) read any host file.
Now every one is refused by nix, and nothing of the secret reaches the agent or the error text.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from hivecore.errors import HiveError
from hivecore.nixconfine import EvalLimits, agent_allowed_uris, eval_options, lock_options
from hivecore.repos import BuildFailed, Repos
from tests.conftest import Parts, make_config, start_parts
from tests.test_meta import agent_env, commit_file

SECRET = f"root-only-secret-{os.getpid()}-{time.time_ns()}"
"""Unique per run: it must not be found anywhere new in the world-readable store afterwards."""
NIX = ("nix", "--extra-experimental-features", "nix-command flakes")


def _run(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, check=True, timeout=60)
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def secrets() -> Iterator[dict[str, str]]:
    """A root-only git repo, file and tarball (like /root/secrets), with what a locked fetch needs."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="hcsecret"))
    os.chmod(top, 0o700)
    repo = top / "repo"
    repo.mkdir()
    (repo / "data").write_text(SECRET)
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo))
    _run(*git, "init", "-q", "-b", "main")
    _run(*git, "add", "data")
    _run(*git, "commit", "-qm", "s")
    tarball = top / "t.tar.gz"
    _run("tar", "czf", str(tarball), "-C", str(repo), "data")
    file_hash = _run(*NIX, "hash", "file", "--base32", str(repo / "data"))
    unpacked = top / "unpacked"
    unpacked.mkdir()
    _run("tar", "xzf", str(tarball), "-C", str(unpacked))
    tar_hash = _run(*NIX, "hash", "path", "--base32", str(unpacked / "data"))
    repo_nar = _run(*NIX, "hash", "path", str(repo))
    try:
        yield {
            "repo": str(repo),
            "rev": _run(*git, "rev-parse", "HEAD"),
            "file": str(repo / "data"),
            "file_hash": file_hash,
            "tarball": str(tarball),
            "tar_hash": tar_hash,
            "repo_nar": repo_nar,
        }
    finally:
        shutil.rmtree(top, ignore_errors=True)


def attacks(s: dict[str, str]) -> dict[str, str]:
    """Name -> a Nix expression an approved agent.nix evaluates (a string when the attack works)."""
    return {
        "fetchGit file://": f'builtins.readFile ((builtins.fetchGit {{ url = "file://{s["repo"]}"; '
        f'rev = "{s["rev"]}"; }}) + "/data")',
        "fetchGit path": f'builtins.readFile ((builtins.fetchGit {{ url = "{s["repo"]}"; '
        f'rev = "{s["rev"]}"; }}) + "/data")',
        "fetchTree git": "builtins.readFile ((builtins.fetchTree "
        f'{{ type = "git"; url = "file://{s["repo"]}"; rev = "{s["rev"]}"; }}) + "/data")',
        "fetchurl file://": f'builtins.readFile (builtins.fetchurl {{ url = "file://{s["file"]}"; '
        f'sha256 = "{s["file_hash"]}"; }})',
        "fetchTarball file://": f'builtins.readFile (builtins.fetchTarball {{ url = "file://{s["tarball"]}"; '
        f'sha256 = "{s["tar_hash"]}"; }})',
        "readFile path": f"builtins.readFile {s['file']}",
        "readFile string": f'builtins.readFile "{s["file"]}"',
        "readDir": f'builtins.toJSON (builtins.readDir "{Path(s["repo"]).parent}")',
        "builtins.path": f'builtins.readFile (builtins.path {{ path = "{s["file"]}"; }})',
        "import": f'import "{s["file"]}"',
        "import-from-derivation": 'builtins.readFile (derivation { name = "ifd"; system = "x86_64-linux"; '
        f'builder = "/bin/sh"; args = [ "-c" "cat {s["file"]} > $out" ]; }})',
        "<nixpkgs>": "builtins.toString <nixpkgs>",
        "getEnv": 'builtins.getEnv "HOME" + builtins.getEnv "SECRET_HINT"',
        # nix 2.8's restricted mode lets these two through: only the evaluator's uid stops them
        "fetchTree path": f'builtins.readFile ((builtins.fetchTree {{ type = "path"; path = "{s["repo"]}"; '
        f'narHash = "{s["repo_nar"]}"; }}) + "/data")',
        "getFlake": f'builtins.readFile ((builtins.getFlake "git+file://{s["repo"]}?rev={s["rev"]}").outPath '
        '+ "/data")',
    }


ATTACKS = list(
    attacks(dict.fromkeys(["repo", "rev", "file", "file_hash", "tarball", "tar_hash", "repo_nar"], "x"))
)


def store_entries() -> set[str]:
    return set(os.listdir("/nix/store"))


def leaked_into_store(before: set[str]) -> list[str]:
    """New store paths (since ``before``) holding the secret: a fetch that ran, whatever the eval said."""
    found = []
    for entry in sorted(store_entries() - before):
        path = Path("/nix/store", entry)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()][:50]
        if any(SECRET.encode() in f.read_bytes()[: 1 << 16] for f in files if not f.is_symlink()):
            found.append(entry)
    return found


def agent_nix_with(expr: str) -> str:
    return f'{{ ... }}: {{\n  hive.agent = {{ model = "haiku"; env.LEAK = {expr}; }};\n}}\n'


# --- through the meta flake (what the process runtime runs) ---------------------------------------


@pytest.fixture
async def meta_parts(state_dir: Path) -> AsyncIterator[Parts]:
    async with trio.open_nursery() as nursery:
        yield await start_parts(make_config(state_dir), nursery)
        nursery.cancel_scope.cancel()


FORBIDDEN = r"forbidden in (restricted|pure eval) mode"
REASON = {
    **dict.fromkeys(ATTACKS, FORBIDDEN),
    "import-from-derivation": "allow-import-from-derivation",
    "<nixpkgs>": r"not found in the Nix search path|cannot look up '<nixpkgs>'",
    "getEnv": r"does not evaluate:\n",  # restricted and pure modes answer "": nothing to show
    "fetchTree path": r"Permission denied",
    "getFlake": r"Permission denied",
}
"""Why nix refuses each (readFile, readDir, builtins.path, import and <nixpkgs> were already
refused by flakes' pure mode; the fetchers and import-from-derivation were not)."""


@pytest.mark.parametrize("attack", ATTACKS)
async def test_an_approved_agent_nix_cannot_reach_host_data_through_the_meta_flake(
    meta_parts: Parts, secrets: dict[str, str], attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_HINT", SECRET)
    parts = meta_parts
    await parts.coordinator.spawn("a")
    await commit_file(parts.config.paths.applied("a"), "agent.nix", agent_nix_with(attacks(secrets)[attack]))
    before = store_entries()
    if attack == "getEnv":  # pure mode answers "": the agent runs, and sees nothing of the daemon's
        await parts.coordinator.rebuild("a")
        env = await agent_env(parts, "a")
        assert env[b"LEAK"] == b""
        return
    with pytest.raises(HiveError, match=REASON[attack]) as caught:
        await parts.coordinator.rebuild("a")
    assert SECRET not in str(caught.value)
    env = await agent_env(parts, "a")  # still the seed's: nothing of the secret reached it
    assert b"LEAK" not in env
    assert leaked_into_store(before) == []


# --- the config check without the meta flake (``nix eval -f``) -----------------------------------


@pytest.fixture
async def repos(state_dir: Path) -> Repos:
    paths = make_config(state_dir).paths
    paths.create_layout()
    r = Repos(paths)
    await r.seed("a")
    return r


@pytest.mark.parametrize("attack", ATTACKS)
async def test_the_plain_config_check_is_confined_too(
    repos: Repos, secrets: dict[str, str], attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check shows nix's error to the manager: a value thrown there would be exfiltrated."""
    monkeypatch.setenv("SECRET_HINT", SECRET)
    monkeypatch.setenv("NIX_PATH", f"nixpkgs={Path(secrets['file']).parent}")
    expr = attacks(secrets)[attack]
    await commit_file(repos.applied("a"), "agent.nix", f"{{ ... }}: throw (builtins.toString ({expr}))\n")
    before = store_entries()
    with pytest.raises(BuildFailed, match=REASON[attack]) as caught:
        await repos.evaluate("a")
    assert SECRET not in str(caught.value)
    assert leaked_into_store(before) == []


async def test_the_confined_config_check_still_evaluates_a_plain_module(repos: Repos) -> None:
    await commit_file(repos.applied("a"), "agent.nix", '{ lib, ... }: { hive.agent.model = "opus"; }\n')
    await repos.evaluate("a")
    await commit_file(repos.applied("a"), "agent.nix", "{ ... }: { hive.agent.model = ; }\n")
    with pytest.raises(BuildFailed, match="syntax error"):
        await repos.evaluate("a")


# --- limits ------------------------------------------------------------------------------------------

MEMORY_BOMB = (
    "builtins.toString (builtins.length (builtins.genList "
    '(i: builtins.toString i + "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") 50000000))'
)
"""One line of agent.nix that maps gigabytes (finding 5 measured 3.4 GB RSS for one like it)."""
FOREVER = (
    "let l = builtins.genList (x: x) 100000; in "
    "builtins.toString (builtins.foldl' (a: i: builtins.foldl' (b: j: b + 1) a l) 0 l)"
)
"""Ten billion additions in constant memory: runs for hours."""


@pytest.mark.parametrize(
    ("expr", "match"),
    [(MEMORY_BOMB, "memory limit is 256 MiB"), (FOREVER, "did not finish within 3 s")],
    ids=["memory bomb", "endless loop"],
)
async def test_an_evaluation_is_bounded_in_memory_and_time(repos: Repos, expr: str, match: str) -> None:
    await commit_file(repos.applied("a"), "agent.nix", "{ ... }: builtins.seq (" + expr + ") { }\n")
    t0 = time.monotonic()
    with pytest.raises(BuildFailed, match=match):
        await repos.evaluate("a", limits=EvalLimits(memory=256 << 20, time=3.0))
    assert time.monotonic() - t0 < 30


# --- pure parts -----------------------------------------------------------------------------------


def test_only_the_base_and_the_agents_own_input_are_allowed() -> None:
    lock = {
        "root": "root",
        "version": 7,
        "nodes": {
            "root": {"inputs": {"hyperhive": "hyperhive", "agent-a": "agent-a", "agent-b": "agent-b"}},
            "hyperhive": {
                "inputs": {"nixpkgs": "nixpkgs"},
                "locked": {"type": "git", "url": "file:///s/base", "rev": "1" * 40},
            },
            "nixpkgs": {"locked": {"type": "github", "owner": "NixOS", "repo": "nixpkgs", "rev": "2" * 40}},
            "agent-a": {"locked": {"type": "git", "url": "file:///s/applied/a", "rev": "3" * 40}},
            "agent-b": {"locked": {"type": "git", "url": "file:///s/applied/b", "rev": "4" * 40}},
        },
    }
    allowed = agent_allowed_uris(lock, "agent-a", "hyperhive")
    assert "file:///s/applied/a" in allowed
    assert "file:///s/base" in allowed
    assert "github:NixOS/nixpkgs" in allowed
    assert not any("applied/b" in u for u in allowed)
    assert agent_allowed_uris(None, "agent-a", "hyperhive") == []
    opts = eval_options(allowed)
    assert opts[opts.index("restrict-eval") + 1] == "true"
    assert opts[opts.index("allow-import-from-derivation") + 1] == "false"
    assert "restrict-eval" not in lock_options()
    assert "allow-import-from-derivation" in lock_options()
    with pytest.raises(ValueError, match="whitespace"):
        eval_options(["file:///a b"])
