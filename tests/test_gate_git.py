"""Issue 14, findings 1-4 and 8 (approvals): the hostile manager's proposed repo against the root daemon.

Every test plays the attack as root (these machines run as root, like CI) on real git, a real store
and real agent processes:

* seeding on a spawn/init_config click never runs git in a manager-prepared ``agents/<n>/config``
  (config keys that execute, ``.git`` indirections);
* applied content comes only from an approved proposal or the daemon's own template commit;
* a proposal is read only as one pinned commit's closure: indirections (gitfile, ``.git`` symlink,
  ``commondir``, alternates, symlinked objects/refs/packed-refs, grafts, shallow) are refused, other
  branches never reach applied, a failed request leaves no object there;
* ``.gitattributes`` transforms are refused; the review is complete and stored once;
* a requester's pending approvals are capped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from hivecore import agent_users
from hivecore import store as st
from hivecore.daemon import Daemon
from hivecore.errors import HiveError
from hivecore.names import MANAGER_NAME
from hivecore.proc import Credentials
from hivecore.repos import Repos, clean_env, template_commit_sha, template_files
from hivecore.services.approvals import MAX_PENDING_PER_REQUESTER
from tests.conftest import Parts


async def mgit(repo: Path, *args: str, check: bool = True) -> str:
    """git as the manager runs it in its own repo (its identity; any owner accepted)."""
    result = await trio.run_process(
        ["git", "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive", "-c", "safe.directory=*",
         "-C", str(repo), *args],
        capture_stdout=True,
        capture_stderr=True,
        env=clean_env(),
        check=check,
    )  # fmt: skip
    return result.stdout.decode().strip()


async def commit(repo: Path, files: dict[str, str | bytes], message: str = "change") -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    await mgit(repo, "add", "-A")
    await mgit(repo, "commit", "-q", "-m", message)
    return await mgit(repo, "rev-parse", "HEAD")


def repos_of(parts: Parts) -> Repos:
    return parts.daemon.approvals.repos


def payload(tmp_path: Path) -> tuple[Path, Path]:
    """``(script, marker)``: a program that records who ran it (and passes stdin through, so it
    also works as a clean/smudge filter)."""
    marker = tmp_path / "ran-as"
    script = tmp_path / "payload.sh"
    script.write_text(f'#!/bin/sh\nid -u >> "{marker}"\ncat\nexit 0\n')
    script.chmod(0o755)
    return script, marker


async def has_object(repo: Path, sha: str) -> bool:
    result = await trio.run_process(
        ["git", "-C", str(repo), "cat-file", "-e", sha], env=clean_env(), check=False, capture_stderr=True
    )
    return result.returncode == 0


async def unreachable(repo: Path) -> str:
    return await mgit(repo, "fsck", "--unreachable", "--no-reflogs", "--no-progress")


# --- finding 1: root code execution on a spawn / init_config click -----------------------------------

Prepare = Callable[[Path, Path, Path], Awaitable[None]]


def mkdirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def replace_with_file(path: Path, text: str) -> None:
    shutil.rmtree(path)
    path.write_text(text)


def replace_with_link(path: Path, target: Path) -> None:
    shutil.rmtree(path)
    path.symlink_to(target)


async def _init(config: Path) -> None:
    mkdirs(config)
    await mgit(config, "init", "-q", "-b", "main")


async def filter_in_info_attributes(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    (config / ".git" / "info").mkdir(exist_ok=True)
    (config / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    await mgit(config, "config", "filter.evil.clean", str(script))
    await mgit(config, "config", "filter.evil.smudge", str(script))


async def filter_in_gitattributes(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    (config / ".gitattributes").write_text("*.nix filter=evil\n*.md filter=evil\n")
    await mgit(config, "config", "filter.evil.clean", str(script))


async def gpg_sign(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    await mgit(config, "config", "commit.gpgSign", "true")
    await mgit(config, "config", "gpg.program", str(script))


async def fsmonitor(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    await mgit(config, "config", "core.fsmonitor", str(script))


async def hooks_path(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    hooks = tmp / "hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        shutil.copy(script, hooks / hook)
    await mgit(config, "config", "core.hooksPath", str(hooks))


async def pager_ssh_diff(config: Path, script: Path, tmp: Path) -> None:
    await _init(config)
    for key in ("core.pager", "core.sshCommand", "diff.external", "core.editor", "sequence.editor"):
        await mgit(config, "config", key, str(script))


async def _evil_gitdir(tmp: Path, script: Path) -> Path:
    evil = tmp / "evil.git"
    await mgit(tmp, "init", "-q", "--bare", str(evil))
    await mgit(evil, "config", "commit.gpgSign", "true")
    await mgit(evil, "config", "gpg.program", str(script))
    await mgit(evil, "config", "core.bare", "false")
    return evil


async def gitfile(config: Path, script: Path, tmp: Path) -> None:
    mkdirs(config / ".git")
    replace_with_file(config / ".git", f"gitdir: {await _evil_gitdir(tmp, script)}\n")


async def git_symlink(config: Path, script: Path, tmp: Path) -> None:
    mkdirs(config / ".git")
    replace_with_link(config / ".git", await _evil_gitdir(tmp, script))


SEED_ATTACKS = [
    filter_in_info_attributes,
    filter_in_gitattributes,
    gpg_sign,
    fsmonitor,
    hooks_path,
    pager_ssh_diff,
    gitfile,
    git_symlink,
]


@pytest.mark.parametrize("prepare", SEED_ATTACKS, ids=lambda f: f.__name__)
async def test_a_spawn_click_runs_nothing_the_manager_prepared(
    parts: Parts, tmp_path: Path, prepare: Prepare
) -> None:
    c = parts.coordinator
    script, marker = payload(tmp_path)
    approval = await c.request_spawn("coder", "a coder")
    await prepare(parts.config.paths.agent_config("coder"), script, tmp_path)
    with contextlib.suppress(HiveError):
        await c.approve(approval.id)
    assert not marker.exists(), f"the manager's program ran as uid {marker.read_text().split()}"
    # the spawn itself is unharmed: the kept config repo is not touched, applied is the template
    assert (await c.approvals())[-1].status == "approved"
    applied = parts.config.paths.applied("coder")
    assert await mgit(applied, "rev-parse", "refs/heads/main") == template_commit_sha()


@pytest.mark.parametrize("prepare", SEED_ATTACKS, ids=lambda f: f.__name__)
async def test_an_init_config_click_runs_nothing_the_manager_planted_after_the_request(
    parts: Parts, tmp_path: Path, prepare: Prepare
) -> None:
    c = parts.coordinator
    script, marker = payload(tmp_path)
    approval = await c.request_init_config("fresh")
    await prepare(parts.config.paths.agent_config("fresh"), script, tmp_path)  # between request and click
    with pytest.raises(HiveError, match="already has a config repo"):
        await c.approve(approval.id)
    assert not marker.exists(), f"the manager's program ran as uid {marker.read_text().split()}"


def manager(parts: Parts) -> Credentials:
    who = agent_users.credentials(parts.config.paths, MANAGER_NAME)
    assert who is not None, "these tests run as root"
    return who


async def test_a_seeded_config_repo_is_handed_over_as_plain_files_owned_by_the_manager(
    parts: Parts, tmp_path: Path
) -> None:
    owner = manager(parts)
    config = parts.config.paths.agent_config("coder")
    config.mkdir(parents=True)
    outside = tmp_path / "victim"
    outside.write_text("root's\n")
    (config / "agent.nix").symlink_to(outside)  # a planted link is replaced, never written through
    os.link(outside, config / "README.md")  # so is a hard link
    await parts.coordinator.spawn("coder")
    assert outside.read_text() == "root's\n"
    for path in [config, *config.rglob("*")]:
        st_ = path.lstat()
        assert not stat.S_ISLNK(st_.st_mode), path
        assert (st_.st_uid, st_.st_gid) == (owner.uid, owner.gid), path
    assert (config / "agent.nix").read_bytes() == template_files()["agent.nix"]
    assert await mgit(config, "rev-parse", "HEAD") == template_commit_sha()
    assert not list(config.glob("*.hive-seed*"))


# --- finding 2: unreviewed config deployed -----------------------------------------------------------


async def test_a_spawn_deploys_the_template_it_showed_never_the_managers_main(parts: Parts) -> None:
    c = parts.coordinator
    config = parts.config.paths.agent_config("coder")
    approval = await c.request_spawn("coder")
    # the manager prepares a repo whose HEAD is unborn (on "other") and whose main is hostile
    await _init(config)
    await commit(config, {"agent.nix": '{ ... }: { hive.agent.model = "evil"; }\n'}, "evil")
    await mgit(config, "symbolic-ref", "HEAD", "refs/heads/other")
    [shown] = [a for a in await c.pending() if a.id == approval.id]
    assert shown.agent_nix == template_files()["agent.nix"].decode()
    assert shown.fetched_sha == template_commit_sha()
    await c.approve(approval.id)
    applied = parts.config.paths.applied("coder")
    assert await mgit(applied, "rev-parse", "refs/heads/main") == template_commit_sha()
    assert await mgit(applied, "show", "refs/tags/deployed/0:agent.nix") + "\n" == shown.agent_nix
    assert "evil" not in (applied / "agent.nix").read_text()


async def test_the_template_commit_is_the_same_in_both_seeds(parts: Parts) -> None:
    await parts.coordinator.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    assert await mgit(proposed, "rev-parse", "HEAD") == template_commit_sha()
    assert await mgit(applied, "rev-parse", "refs/tags/deployed/0") == template_commit_sha()
    assert await mgit(proposed, "log", "-1", "--format=%an <%ae> %at|%cn <%ce> %ct") == (
        "hive-c0re <hive-c0re@hyperhive> 946684800|hive-c0re <hive-c0re@hyperhive> 946684800"
    )


# --- finding 3: host repos copied into applied; a proposal is one commit's closure --------------------

SECRET = b"TOPSECRET host data\n"


async def host_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A root-only repo elsewhere on the host: ``(repo, its commit, the secret blob)``."""
    host = tmp_path / "host"
    host.mkdir(mode=0o700)
    await mgit(host, "init", "-q", "-b", "main")
    sha = await commit(host, {"secret.txt": SECRET.decode()}, "host data")
    await mgit(host, "pack-refs", "--all")
    blob = await mgit(host, "rev-parse", "HEAD:secret.txt")
    return host, sha, blob


Indirect = Callable[[Path, Path, str], Awaitable[str]]


async def commondir(git: Path, host: Path, secret: str) -> str:
    (git / "commondir").write_text(f"{host / '.git'}\n")
    return secret


async def alternates(git: Path, host: Path, secret: str) -> str:
    (git / "objects" / "info" / "alternates").write_text(f"{host / '.git' / 'objects'}\n")
    await mgit(git.parent, "update-ref", "refs/heads/steal", secret)
    return await mgit(git.parent, "rev-parse", "HEAD")


async def objects_symlink(git: Path, host: Path, secret: str) -> str:
    shutil.rmtree(git / "objects")
    (git / "objects").symlink_to(host / ".git" / "objects")
    (git / "refs" / "heads" / "main").write_text(secret + "\n")
    return secret


async def refs_symlink(git: Path, host: Path, secret: str) -> str:
    shutil.rmtree(git / "refs")
    (git / "refs").symlink_to(host / ".git" / "refs")
    return secret


async def packed_refs_symlink(git: Path, host: Path, secret: str) -> str:
    (git / "packed-refs").unlink(missing_ok=True)
    (git / "packed-refs").symlink_to(host / ".git" / "packed-refs")
    return await mgit(git.parent, "rev-parse", "HEAD")


async def loose_object_symlink(git: Path, host: Path, secret: str) -> str:
    fan = git / "objects" / secret[:2]
    fan.mkdir(exist_ok=True)
    (fan / secret[2:]).symlink_to(host / ".git" / "objects" / secret[:2] / secret[2:])
    (git / "refs" / "heads" / "steal").write_text(secret + "\n")
    return await mgit(git.parent, "rev-parse", "HEAD")


async def gitfile_to_host(git: Path, host: Path, secret: str) -> str:
    replace_with_file(git, f"gitdir: {host / '.git'}\n")
    return secret


async def git_symlink_to_host(git: Path, host: Path, secret: str) -> str:
    replace_with_link(git, host / ".git")
    return secret


async def grafts(git: Path, host: Path, secret: str) -> str:
    head = await mgit(git.parent, "rev-parse", "HEAD")
    (git / "info").mkdir(exist_ok=True)
    (git / "info" / "grafts").write_text(f"{head}\n")
    return head


async def shallow(git: Path, host: Path, secret: str) -> str:
    head = await mgit(git.parent, "rev-parse", "HEAD")
    (git / "shallow").write_text(f"{head}\n")
    return head


INDIRECTIONS: list[tuple[Indirect, str]] = [
    (commondir, r"\.git/commondir is refused"),
    (alternates, r"\.git/objects/info/alternates is refused"),
    (objects_symlink, r"\.git/objects is a symlink"),
    (refs_symlink, r"\.git/refs is a symlink"),
    (packed_refs_symlink, r"\.git/packed-refs is a symlink"),
    (loose_object_symlink, r"\.git/objects/[0-9a-f]{2}/[0-9a-f]{38} is a symlink"),
    (gitfile_to_host, r"\.git is a file \(a gitfile"),
    (git_symlink_to_host, r"\.git is a symlink"),
    (grafts, r"\.git/info/grafts is refused"),
    (shallow, r"shallow; run `git fetch --unshallow`"),
]


@pytest.mark.parametrize(("indirect", "refusal"), INDIRECTIONS, ids=lambda v: getattr(v, "__name__", ""))
async def test_a_proposal_never_reads_through_an_indirection(
    parts: Parts, tmp_path: Path, indirect: Indirect, refusal: str
) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    await commit(proposed, {"notes.txt": "mine\n"})
    host, secret_commit, secret_blob = await host_repo(tmp_path)
    ref = await indirect(proposed / ".git", host, secret_commit)
    with pytest.raises(HiveError, match=refusal):
        await c.request_apply_commit("coder", ref)
    last = (await c.approvals())[-1]
    assert last.status == "failed"
    assert not await has_object(applied, secret_blob)
    assert not await has_object(applied, secret_commit)
    assert await unreachable(applied) == ""


async def test_a_proposal_is_one_commits_closure_and_a_failed_request_leaves_nothing(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    await mgit(proposed, "checkout", "-q", "-b", "wip")
    await commit(proposed, {"wip.txt": "unrelated work in progress\n"})
    wip_blob = await mgit(proposed, "rev-parse", "HEAD:wip.txt")
    await mgit(proposed, "checkout", "-q", "main")
    # a failing request (no such commit) fetches nothing
    with pytest.raises(HiveError, match="no commit deadbeef"):
        await c.request_apply_commit("coder", "deadbeef")
    assert not await has_object(applied, wip_blob)
    # a refused one (a transform) leaves none of its objects
    refused = await commit(proposed, {".gitattributes": "*.nix ident\n", "agent.nix": "{ ... }: { }\n"})
    refused_blob = await mgit(proposed, "rev-parse", "HEAD:.gitattributes")
    with pytest.raises(HiveError, match="ident"):
        await c.request_apply_commit("coder", refused)
    assert not await has_object(applied, refused_blob)
    assert not await has_object(applied, refused)
    # an accepted one brings its own closure and nothing of the other branches
    await mgit(proposed, "reset", "-q", "--hard", "HEAD~1")
    good = await commit(proposed, {"notes.txt": "notes\n"})
    approval = await c.request_apply_commit("coder", good)
    assert await has_object(applied, good)
    assert not await has_object(applied, wip_blob)
    await c.deny(approval.id, "no")
    assert await unreachable(applied) == ""


async def test_the_proposal_is_packed_with_the_managers_credentials(parts: Parts) -> None:
    """Whatever the manager's repo names, git reads it as the manager: a pack only root can read
    makes the request fail instead of being copied into applied."""
    owner = manager(parts)
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    assert proposed.stat().st_uid == owner.uid
    sha = await commit(proposed, {"notes.txt": "as the manager\n"})
    approval = await c.request_apply_commit("coder", sha)
    assert approval.fetched_sha == sha
    assert await has_object(applied, sha)
    await c.deny(approval.id)
    # a pack the manager cannot read (root's, 0600) is not read by root on its behalf
    second = await commit(proposed, {"more.txt": "x\n"})
    await mgit(proposed, "repack", "-q", "-a", "-d")
    for pack in (proposed / ".git" / "objects" / "pack").iterdir():
        os.chown(pack, 0, 0)
        pack.chmod(0o600)
    with pytest.raises(HiveError, match="fetching"):
        await c.request_apply_commit("coder", second)
    assert not await has_object(applied, second)


# --- finding 4: what is built is what was reviewed ---------------------------------------------------

TRANSFORMS = [
    ("agent.nix export-subst\n", "export-subst"),
    ("*.nix export-ignore\n", "export-ignore"),
    ("* filter=lfs\n", "filter"),
    ("*.nix ident\n", "ident"),
    ("*.nix working-tree-encoding=ISO-8859-1\n", "working-tree-encoding"),
    ("*.nix text eol=crlf\n", "text"),
    ("*.nix -crlf\n", "crlf"),
    ("[attr]innocent export-subst\n*.nix innocent\n", "macro definition"),
]


@pytest.mark.parametrize(("attributes", "named"), TRANSFORMS, ids=[t[1] for t in TRANSFORMS])
@pytest.mark.parametrize("where", [".gitattributes", "sub/.gitattributes"])
async def test_gitattributes_transforms_are_refused(
    parts: Parts, attributes: str, named: str, where: str
) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed, applied = parts.config.paths.agent_config("coder"), parts.config.paths.applied("coder")
    sha = await commit(
        proposed,
        {where: attributes, "agent.nix": '{ ... }: { hive.agent.model = "$Format:%b$"; }\n'},
        "innocent\n\nhidden body that export-subst would pull into agent.nix",
    )
    with pytest.raises(HiveError, match=rf"{where}:\d+: .*{named}.*remove these attributes"):
        await c.request_apply_commit("coder", sha)
    assert (await c.approvals())[-1].status == "failed"
    assert not await has_object(applied, sha)


async def test_the_review_lists_every_file_caps_each_diff_and_shows_sizes_and_messages(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    proposed = parts.config.paths.agent_config("coder")
    big = "".join(f"line {i} of a large file\n" for i in range(20_000))  # ~500 KiB: past any global cap
    blob = bytes(range(256)) * 40
    sha = await commit(
        proposed,
        {"a_big.txt": big, "image.bin": blob, "z_after.nix": "{ ... }: { }\n"},
        "three files\n\nthe body the operator must see",
    )
    approval = await c.request_apply_commit("coder", sha)

    async def no_git(*args: object, **kwargs: object) -> None:
        raise AssertionError("the review is stored: listing pending runs no git")

    monkeypatch.setattr(repos_of(parts), "git", no_git)
    [pending] = [a for a in await c.pending() if a.id == approval.id]
    files = {f.path: f for f in pending.files or []}
    assert list(files) == ["a_big.txt", "image.bin", "z_after.nix"]
    assert (files["a_big.txt"].added, files["a_big.txt"].truncated) == (20_000, True)
    assert (files["image.bin"].binary, files["image.bin"].size, files["image.bin"].added) == (
        True,
        len(blob),
        None,
    )
    assert (files["z_after.nix"].added, files["z_after.nix"].truncated) == (1, False)
    assert pending.diff is not None
    assert "+{ ... }: { }" in pending.diff  # the file after the big one is shown
    assert "… diff of a_big.txt truncated" in pending.diff
    assert pending.commit_message is not None
    assert f"commit {sha}" in pending.commit_message
    assert "the body the operator must see" in pending.commit_message


# --- finding 8 (approvals): floods --------------------------------------------------------------------


async def test_pending_approvals_are_capped_per_requester(parts: Parts) -> None:
    c = parts.coordinator
    for i in range(MAX_PENDING_PER_REQUESTER):
        await c.request_init_config(f"n{i}", source="manager")
    with pytest.raises(HiveError, match=rf"quota: {MAX_PENDING_PER_REQUESTER} per requester"):
        await c.request_init_config("onemore", source="manager")
    with pytest.raises(HiveError, match="quota"):
        await c.request_spawn("viamgr", source="manager")
    await c.request_spawn("byop", source="host_sock")  # the operator's own quota
    rows = await c.approvals()
    assert len(rows) == MAX_PENDING_PER_REQUESTER + 1
    await c.deny(rows[0].id)
    await c.request_init_config("onemore", source="manager")  # room again


def test_an_old_database_gains_the_review_columns(tmp_path: Path) -> None:
    db = tmp_path / "hive.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    for script in st.MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version=4")
    conn.execute(
        "INSERT INTO approvals(agent, kind, commit_ref, requested_at) VALUES ('coder', 'spawn', '', 'x')"
    )
    conn.close()
    conn = st.connect(db)
    [row] = st.list_approvals(conn, review=True)
    assert (row.agent, row.files, row.agent_nix, row.requester) == ("coder", None, None, None)


async def test_hivectl_pending_shows_the_review_escaped(hive: Daemon) -> None:
    from tests.test_hivectl import hivectl, out

    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("coder")
    proposed = hive.config.paths.agent_config("coder")
    sha = await commit(
        proposed,
        {"notes.md": "hello\n", "logo.bin": bytes(range(256))},
        "innocent\n\n\x1b]52;c;cm0gLXJmIH4=\x07 hidden body",
    )
    await hive.coordinator.request_apply_commit("coder", sha)
    await hive.coordinator.request_spawn("helper")
    text = out(await hivectl("pending", sock=sock))
    assert "\x1b" not in text
    assert "\\x1b]52;c;cm0gLXJmIH4=\\x07 hidden body" in text
    assert "2 files +1 -0" in text
    assert "  logo.bin  binary, 256 bytes" in text
    assert "  notes.md  +1 -0" in text
    assert "  agent.nix to deploy:" in text
    assert template_files()["agent.nix"].decode().splitlines()[0] in text


async def test_api_state_carries_the_stored_review(hive: Daemon) -> None:
    from tests.test_dashboard_api import http_get

    await hive.coordinator.spawn("coder")
    sha = await commit(hive.config.paths.agent_config("coder"), {"notes.md": "hello\n"}, "notes\n\nwhy")
    approval = await hive.coordinator.request_apply_commit("coder", sha)
    spawn = await hive.coordinator.request_spawn("helper")
    status, _, body = await http_get(hive, "/api/state")
    assert status == 200
    rows = {a["id"]: a for a in json.loads(body)["approvals"]}
    assert rows[approval.id]["files"] == [
        {"path": "notes.md", "added": 1, "removed": 0, "binary": False, "size": 6, "truncated": False}
    ]
    assert rows[approval.id]["commit_message"] == f"commit {sha}\n\nnotes\n\nwhy\n\n"
    assert rows[spawn.id]["agent_nix"] == template_files()["agent.nix"].decode()
    assert rows[spawn.id]["fetched_sha"] == template_commit_sha()


async def test_a_spawn_deploys_only_what_its_review_showed(parts: Parts) -> None:
    """A tombstone's spawn shows its kept applied config; if what it would deploy is no longer that
    commit when the operator clicks, nothing is spawned."""
    c = parts.coordinator
    await c.spawn("coder")
    await c.destroy("coder")  # a tombstone: both repos kept
    approval = await c.request_spawn("coder")
    [shown] = [a for a in await c.pending() if a.id == approval.id]
    assert shown.agent_nix == template_files()["agent.nix"].decode()
    applied = parts.config.paths.applied("coder")
    # the applied main moves after the review (hive-c0re alone writes there; played here directly)
    await mgit(applied, "commit", "-q", "--allow-empty", "-m", "moved")
    with pytest.raises(HiveError, match=r"not the reviewed .*request the spawn again"):
        await c.approve(approval.id)
    assert "coder" not in await parts.runtime.list(["coder"])
    assert (await c.approvals())[-1].status == "failed"


@pytest.fixture
def open_payload() -> Iterator[tuple[Path, Path]]:
    """A payload any uid can run and record into (``/tmp/<dir>`` 0777): a program the manager
    configured may run as the manager, never as root."""
    base = Path(tempfile.mkdtemp(prefix="ggpay", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield payload(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


PROPOSAL_KEYS = [
    ("core.fsmonitor", None),
    ("core.pager", None),
    ("core.sshCommand", None),
    ("core.gitProxy", None),
    ("uploadpack.packObjectsHook", None),
    ("diff.evil.textconv", "*.nix diff=evil\n"),
    ("diff.external", None),
    ("filter.evil.smudge", "* filter=evil\n"),
    ("filter.evil.clean", "* filter=evil\n"),
]


@pytest.mark.parametrize(("key", "info_attributes"), PROPOSAL_KEYS, ids=[k for k, _ in PROPOSAL_KEYS])
async def test_a_proposal_request_runs_nothing_the_manager_configured_as_root(
    parts: Parts, open_payload: tuple[Path, Path], key: str, info_attributes: str | None
) -> None:
    script, marker = open_payload
    c = parts.coordinator
    await c.spawn("coder")
    proposed = parts.config.paths.agent_config("coder")
    sha = await commit(proposed, {"agent.nix": "{ ... }: { }\n"})
    await mgit(proposed, "config", key, str(script))
    if info_attributes:
        write_file(proposed / ".git" / "info" / "attributes", info_attributes)
    approval = await c.request_apply_commit("coder", sha)
    assert approval.fetched_sha == sha
    ran_as = marker.read_text().split() if marker.exists() else []
    assert "0" not in ran_as, f"{key} ran as root"


async def test_the_approval_added_event_carries_the_review(parts: Parts) -> None:
    c = parts.coordinator
    await c.spawn("coder")
    sha = await commit(parts.config.paths.agent_config("coder"), {"notes.md": "x\n"}, "notes")
    with parts.bus.subscribe(kinds=["approval_added"]) as sub:
        await c.request_spawn("helper")
        spawn = await sub.receive()
        await c.request_apply_commit("coder", sha)
        change = await sub.receive()
    assert getattr(spawn, "agent_nix", None) == template_files()["agent.nix"].decode()
    assert [f.path for f in getattr(change, "files", None) or []] == ["notes.md"]
    assert f"commit {sha}" in (getattr(change, "commit_message", None) or "")
