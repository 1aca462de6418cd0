"""Red team: an approved agent.nix escapes ``allowed-uris`` through ``..`` after an allowed prefix.

nix 2.8 accepts a URI when an allowed prefix is followed by ``/``; it does not normalise ``..``.
The meta flake allows ``file://<state>/applied/<n>`` (and ``file://<state>/base``), so
``file://<state>/applied/<n>/../../<anything>`` passes the check and git reads any repo on the host,
as root (and ``git archive`` there runs that repo's smudge filter as root).

What holds is the evaluator's uid (docs/security.md): nix runs unprivileged, so the root-only repo
cannot be read (``Permission denied``) and any filter it names would run as that uid, not as root.
"""

from __future__ import annotations

import pytest

from hivecore.errors import HiveError
from tests.conftest import Parts
from tests.test_eval_confined import SECRET, agent_nix_with, meta_parts, secrets  # noqa: F401
from tests.test_meta import agent_env, commit_file


@pytest.mark.parametrize("prefix", ["applied", "base"])
async def test_dotdot_after_an_allowed_prefix_reads_no_host_repo(
    meta_parts: Parts,  # noqa: F811 (a fixture imported above)
    secrets: dict[str, str],  # noqa: F811
    prefix: str,
) -> None:
    parts = meta_parts
    await parts.coordinator.spawn("a")
    start = parts.config.paths.applied("a") if prefix == "applied" else parts.config.paths.root / "base"
    url = f"file://{start}/" + "../" * 32 + secrets["repo"].lstrip("/")
    expr = f'builtins.readFile ((builtins.fetchGit {{ url = "{url}"; rev = "{secrets["rev"]}"; }}) + "/data")'
    await commit_file(parts.config.paths.applied("a"), "agent.nix", agent_nix_with(expr))
    with pytest.raises(HiveError, match=r"forbidden in (restricted|pure eval) mode|Permission denied"):
        await parts.coordinator.rebuild("a")
    env = await agent_env(parts, "a")
    assert SECRET.encode() not in env.get(b"LEAK", b"")
