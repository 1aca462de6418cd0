"""Red team: the proposal pack when git runs as the daemon (the nixos runtime, ``owner`` None).

Under the nixos runtime the manager owns ``/agents`` read-write but its uid is mapped inside its
container, so ``Repos.owner`` answers ``None`` and ``git pack-objects`` of a proposal runs as root
in the manager's repo, defended by the ``.git`` checks and the forced-off keys. A partial clone
(``extensions.partialClone`` naming a promisor remote) makes git *lazily fetch* an object the
proposal's tree names but the repo lacks: a ``git fetch`` from the promisor remote, whose local
transport runs ``remote.<name>.uploadpack`` (a shell command) as root. Every variant below is the
manager's ``.git/config`` alone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hivecore.config import StatePaths
from hivecore.errors import HiveError
from hivecore.repos import Repos
from tests.conftest import make_config
from tests.test_gate_git import commit, mgit

MISSING = "1111111111111111111111111111111111111111"


@pytest.fixture
def open_payload() -> Iterator[tuple[Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="rtpay", dir="/tmp"))
    base.chmod(0o777)
    marker, script = base / "ran-as", base / "payload.sh"
    script.write_text(f'#!/bin/sh\nid -u >> "{marker}"\nexit 1\n')  # fails fast: no lazy fetch waits
    script.chmod(0o755)
    try:
        yield script, marker
    finally:
        shutil.rmtree(base, ignore_errors=True)


def promisor(script: Path, upstream: Path) -> dict[str, dict[str, str]]:
    """Name -> config keys of the promisor remote ``evil`` (each makes a lazy fetch run ``script``)."""
    return {
        "uploadpack of a local path": {
            "remote.evil.url": str(upstream),
            "remote.evil.uploadpack": f"{script} #",
        },
        "uploadpack of file://": {
            "remote.evil.url": f"file://{upstream}",
            "remote.evil.uploadpack": f"{script} #",
        },
        "protocol.file re-allowed": {
            "remote.evil.url": str(upstream),
            "remote.evil.uploadpack": f"{script} #",
            "protocol.file.allow": "always",
            "protocol.allow": "always",
        },
        "ext:: transport": {"remote.evil.url": f"ext::{script} %S"},
        "protocol.ext re-allowed": {"remote.evil.url": f"ext::{script} %S", "protocol.ext.allow": "always"},
    }


VARIANTS = list(promisor(Path("/x"), Path("/y")))


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_lazy_fetch_never_runs_the_managers_program_as_root(
    state_dir: Path, open_payload: tuple[Path, Path], variant: str
) -> None:
    script, marker = open_payload
    paths: StatePaths = make_config(state_dir).paths
    paths.create_layout()
    repos = Repos(paths)  # owner None: as under the nixos runtime
    await repos.seed("coder")
    proposed = repos.proposed("coder")
    base = await commit(proposed, {"agent.nix": "{ ... }: { }\n"})
    # a commit whose tree names a blob the repo does not have
    tree = await mgit(proposed, "rev-parse", f"{base}^{{tree}}")
    listing = await mgit(proposed, "ls-tree", tree)
    listing += f"\n100644 blob {MISSING}\tmissing.txt\n"
    made = await trio.run_process(
        ["git", "-C", str(proposed), "mktree", "--missing"], stdin=listing.encode(), capture_stdout=True
    )
    new_tree = made.stdout.decode().strip()
    sha = await mgit(proposed, "commit-tree", "-p", base, "-m", "lazy", new_tree)
    await mgit(proposed, "config", "core.repositoryformatversion", "1")
    await mgit(proposed, "config", "extensions.partialClone", "evil")
    await mgit(proposed, "config", "remote.evil.promisor", "true")
    for key, value in promisor(script, paths.applied("coder"))[variant].items():
        await mgit(proposed, "config", key, value)
    with pytest.raises(HiveError):
        await repos.fetch_proposal("coder", sha, 1)
    ran_as = marker.read_text().split() if marker.exists() else []
    assert "0" not in ran_as, f"{variant}: the manager's program ran as root"


# --- .gitattributes read the way git reads it -----------------------------------------------------

HIDDEN_TRANSFORMS = [
    (b"agent.ni[x\x0c#] export-subst\n", "form feed"),
    (b"agent.ni[x\x0b#] export-subst\n", "vertical tab"),
    (b"agent.ni[x\x1c#] filter=evil\n", "file separator"),
    (b"agent.ni[x\xe2\x80\xa8#] export-subst\n", "U+2028"),
    (b"agent.ni[x\xc2\x85#] ident\n", "U+0085"),
    (b'"agent.nix" export-subst foo=x"y\n', "a quote after the attributes"),
    (b"agent.nix\xc2\xa0x export-subst\n", "no-break space in the pattern"),
    (b'"agent.nix export-subst\n', "an unterminated quote"),
]
"""Lines git applies to ``agent.nix`` that Python's ``splitlines``/``split``/last-quote reading
cut somewhere else (a ``#`` after the cut made the rest a comment)."""


@pytest.mark.parametrize(("attributes", "why"), HIDDEN_TRANSFORMS, ids=[w for _, w in HIDDEN_TRANSFORMS])
async def test_a_transform_hidden_from_a_python_reading_is_refused(
    state_dir: Path, attributes: bytes, why: str
) -> None:
    paths: StatePaths = make_config(state_dir).paths
    paths.create_layout()
    repos = Repos(paths)
    await repos.seed("coder")
    proposed = repos.proposed("coder")
    files: dict[str, str | bytes] = {
        ".gitattributes": attributes,
        "agent.nix": '{ ... }: { hive.agent.model = "$Format:%b$"; }\n',
    }
    if b"agent.nix\xc2\xa0x" in attributes:
        files = {**files, "agent.nix\xa0x": "$Format:%b$\n"}
    sha = await commit(proposed, files, "innocent\n\nhidden body export-subst would pull in")
    # the line really transforms a file for git (else the row would prove nothing)
    target = "agent.nix\xa0x" if b"agent.nix\xc2\xa0x" in attributes else "agent.nix"
    if attributes.startswith(b'"agent.nix export'):
        target = '"agent.nix'
    attrs_of = await mgit(proposed, "check-attr", "-a", "--", target)
    assert any(a in attrs_of for a in ("export-subst", "filter", "ident")), attrs_of
    with pytest.raises(HiveError, match=r"\.gitattributes:1: .*remove these attributes"):
        await repos.fetch_proposal("coder", sha, 1)
    assert not await applied_has(repos, sha)


async def applied_has(repos: Repos, sha: str) -> bool:
    result = await trio.run_process(
        ["git", "-C", str(repos.applied("coder")), "cat-file", "-e", sha], check=False, capture_stderr=True
    )
    return result.returncode == 0
