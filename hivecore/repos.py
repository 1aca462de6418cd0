"""The two git repos per agent (reference §2.4) and the build's config check.

* **proposed** — ``agents/<n>/config/``: the manager edits and commits here. It is agent-writable, so
  hive-c0re never trusts it (:mod:`hivecore.proposed`): its ``.git`` is checked as inert data (no
  gitfile, symlink, ``commondir``, alternates, grafts or shallow file), the daemon never runs git
  there as itself except to pack one commit **with the manager's credentials**
  (:attr:`Repos.owner`), and it is seeded by copying a repo built in a daemon-owned scratch dir.
  A proposal leaves it only as that one pinned commit's closure (``git pack-objects --revs``),
  fetched as a bundle with ``transfer.fsckObjects`` into a daemon-owned scratch repo, checked
  (no ``.gitattributes`` transform) and reviewed there, and only then fetched into
* **applied** — ``applied/<n>/``: written by hive-c0re alone. ``main`` is what is deployed; the tags
  ``proposal/<id>``, ``approved/<id>``, ``building/<id>``, ``deployed/<id>`` and the annotated
  ``failed/<id>`` (body: the build error) and ``denied/<id>`` (body: the operator's note) record
  every approval. ``deployed/0`` marks the seed.

Every git and nix call goes through :mod:`hivecore.proc` (never blocking the trio thread: output
capped, a time limit, the process group killed on cancellation and with the daemon) with an
environment without the user's git config. Git is ``$HYPERHIVE_GIT``
when set, else ``git`` on PATH; nix is ``$HYPERHIVE_NIX``, else ``nix``.
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
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from importlib import resources
from pathlib import Path

import attrs
import trio

from hivecore import agent_users, gitlocks, proc, proposed, review
from hivecore.config import StatePaths
from hivecore.errors import HiveError, Refused
from hivecore.models import ReviewFile
from hivecore.nixconfine import EvalLimits, eval_env, eval_options, evaluator_options
from hivecore.proc import Credentials
from hivecore.wire.converter import converter

log = logging.getLogger(__name__)

OUTPUT_CAP = proc.OUTPUT_CAP
GIT_TIMEOUT = 120.0
NIX_TIMEOUT = 300.0
IDENTITY = ("-c", "user.name=hive-c0re", "-c", "user.email=hive-c0re@hyperhive")
TEMPLATE_FILES = ("agent.nix", "README.md")
APPLIED_REMOTE = "applied"
PREVIOUS_MAIN = "refs/hive/previous-main"
"""``<PREVIOUS_MAIN>/<id>``: where applied ``main`` was before approval ``<id>`` moved it."""
SCRATCH_MAX = 1 << 20
"""Bytes of ``agent.nix`` the config check copies for a confined evaluation."""
MAX_PROPOSAL_BYTES = 64 * 1024 * 1024
"""Largest pack of one proposal's closure (the pinned commit and all it reaches) accepted."""
MAX_COMMIT_MESSAGES = 64 * 1024
"""Bytes of commit messages kept in a review."""
AGENT_NIX_CAP = 256 * 1024
"""Bytes of a spawn's ``agent.nix`` shown in its review (a longer one is refused)."""
TEMPLATE_IDENTITY = {
    "GIT_AUTHOR_NAME": "hive-c0re",
    "GIT_AUTHOR_EMAIL": "hive-c0re@hyperhive",
    "GIT_AUTHOR_DATE": "946684800 +0000",
    "GIT_COMMITTER_NAME": "hive-c0re",
    "GIT_COMMITTER_EMAIL": "hive-c0re@hyperhive",
    "GIT_COMMITTER_DATE": "946684800 +0000",
}
"""Who and when the template commit says (fixed: the seed commit is the same everywhere)."""
SEED_MESSAGE = "seed agent config\n"
# config keys that would run a program, forced off for every git hive-c0re runs
_INERT = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.sshCommand=false",
    "core.pager=cat",
    "core.askPass=false",
    "core.alternateRefsCommand=",
    "diff.external=",
    "gc.auto=0",
    "maintenance.auto=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "protocol.ext.allow=never",
)

_NO_TRANSPORT = {"GIT_ALLOW_PROTOCOL": "hive-c0re-none", "GIT_NO_LAZY_FETCH": "1"}
"""The environment of git in a proposed repo: no transport at all (it overrides every
``protocol.*`` key), so a partial clone's lazy fetch of an object the proposal names but the repo
lacks never reaches a promisor remote (whose ``uploadpack``, ``ext::`` or helper would run a
program the manager chose, as root when the pack runs as the daemon); ``GIT_NO_LAZY_FETCH`` says
the same to git >= 2.44."""

_HEX_RE = re.compile(r"[0-9a-fA-F]{7,40}")
_NOISE = ("warning: the group", "(use '--show-trace'")
_EVAL_APPLY = (
    "m: let v = if builtins.isFunction m then m (builtins.mapAttrs (n: _: { }) (builtins.functionArgs m))"
    ' else m; in if builtins.isAttrs v then true else throw "agent.nix must be a NixOS module:'
    ' an attribute set, or a function returning one"'
)


@contextlib.contextmanager
def _unreadable_proposal(name: str, what: str) -> Iterator[None]:
    """An entry of the manager's repo that vanished or changed while it was read (the manager
    owns it and may move things at any time) is the request's clear failure, not an internal
    error."""
    try:
        yield
    except OSError as exc:
        raise GitFailure(
            f"{what}: cannot read agents/{name}/config/.git ({exc.strerror or exc}); "
            "leave the repo alone while a request is read, then ask again"
        ) from None


class GitFailure(HiveError):
    """A git command failed; the message names what hive-c0re was doing and git's own words."""


class BuildFailed(HiveError):
    """An agent's config does not build; the message carries the useful lines of the error."""


def git_binary() -> str:
    return os.environ.get("HYPERHIVE_GIT") or shutil.which("git") or "git"


def nix_binary() -> str:
    return os.environ.get("HYPERHIVE_NIX") or shutil.which("nix") or "nix"


def clean_env() -> dict[str, str]:
    """The environment of every git/nix child: no user/system git config, no GIT_* leaking in."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "NIX_REMOTE", "NIX_PATH")}
    env.update(
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_ATTR_NOSYSTEM="1",
        LC_ALL="C",
    )
    env.setdefault("HOME", "/nonexistent")
    return env


def is_commit_ref(ref: object) -> bool:
    """A commit sha, short or full (7-40 hex): the only refs a proposal may pin."""
    return isinstance(ref, str) and _HEX_RE.fullmatch(ref) is not None


def useful_lines(stderr: bytes, limit: int = 30) -> str:
    """The lines of a git/nix error worth showing: noise dropped, blank runs collapsed, capped."""
    lines = [ln.rstrip() for ln in stderr.decode(errors="replace").splitlines()]
    kept = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith(_NOISE)]
    if len(kept) > limit:
        kept = [*kept[:limit], f"… ({len(kept) - limit} more lines)"]
    return "\n".join(kept) or "(no error output)"


def _scratch_copy(repo: Path, fname: str, *, owner: proc.Credentials | None = None) -> Path:
    """A fresh 0700 directory (``owner``'s, when given) holding a copy of ``repo/fname`` (opened
    without following a link, at most 1 MiB): the only thing a confined evaluation of it may read."""
    scratch = Path(tempfile.mkdtemp(prefix="hive-eval-"))
    try:
        fd = os.open(repo / fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise BuildFailed(f"{fname} must be a regular file")
            data = src.read(SCRATCH_MAX + 1)
        if len(data) > SCRATCH_MAX:
            raise BuildFailed(f"{fname} is larger than {SCRATCH_MAX >> 20} MiB")
        (scratch / fname).write_bytes(data)
        if owner is not None:
            os.chown(scratch / fname, owner.uid, owner.gid)
            os.chown(scratch, owner.uid, owner.gid)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise BuildFailed(f"cannot read {fname}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def template_files() -> dict[str, bytes]:
    """The template's files (name → bytes), as the seed commit holds them."""
    source = resources.files("hivecore") / "templates" / "agent"
    return {fname: (source / fname).read_bytes() for fname in TEMPLATE_FILES}


def _object_id(kind: str, data: bytes) -> bytes:
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data, usedforsecurity=False).digest()


def template_commit_sha() -> str:
    """The sha of the template seed commit (what git makes of :func:`template_files` with
    :data:`TEMPLATE_IDENTITY`), computed without git: what a spawn deploys for a new agent."""
    entries = sorted(template_files().items())
    tree = b"".join(b"100644 " + n.encode() + b"\0" + _object_id("blob", d) for n, d in entries)
    ident = TEMPLATE_IDENTITY
    body = (
        f"tree {_object_id('tree', tree).hex()}\n"
        f"author {ident['GIT_AUTHOR_NAME']} <{ident['GIT_AUTHOR_EMAIL']}> {ident['GIT_AUTHOR_DATE']}\n"
        f"committer {ident['GIT_COMMITTER_NAME']} <{ident['GIT_COMMITTER_EMAIL']}> "
        f"{ident['GIT_COMMITTER_DATE']}\n\n{SEED_MESSAGE}"
    ).encode()
    return _object_id("commit", body).hex()


@attrs.frozen
class Pinned:
    """A proposal pinned as ``proposal/<id>`` in applied, with its review (computed once)."""

    sha: str
    files: list[ReviewFile]
    diff: str
    commit_message: str

    def files_json(self) -> str:
        return json.dumps(converter.unstructure(self.files))


class Repos:
    """Git on the proposed and applied repos of every agent (paths from :class:`StatePaths`).

    ``owner(name)`` gives the credentials the proposed repo of ``name`` belongs to (the manager's
    uid/gid; blocking, called in a worker thread): packing a proposal runs git with them, and a
    seeded repo is handed over owned by them. ``None`` (the default, and when the daemon is not
    root) means "as the daemon".
    """

    def __init__(
        self,
        paths: StatePaths,
        *,
        git: str | None = None,
        nix: str | None = None,
        owner: Callable[[str], Credentials | None] | None = None,
    ) -> None:
        self.paths = paths
        self._git = git
        self._nix = nix
        self.owner: Callable[[str], Credentials | None] = owner or (lambda name: None)

    @property
    def scratch_root(self) -> Path:
        """``<state>/scratch``: daemon-owned (0700) scratch repos for seeding and proposals."""
        return self.paths.root / "scratch"

    async def _scratch(self, prefix: str) -> Path:
        def make() -> Path:
            root = self.scratch_root
            root.mkdir(mode=0o700, exist_ok=True)
            if not _real_dir(root):
                raise HiveError(f"{root} is not a directory")
            return Path(tempfile.mkdtemp(prefix=prefix, dir=root))

        return await trio.to_thread.run_sync(make)

    async def clear_scratch(self) -> None:
        """Remove what an interrupted seed or proposal left in :attr:`scratch_root` (at start-up,
        when nothing uses it)."""
        await self._drop_scratch(self.scratch_root)

    async def _drop_scratch(self, path: Path) -> None:
        await trio.to_thread.run_sync(partial(shutil.rmtree, path, ignore_errors=True))

    # --- running git ---------------------------------------------------------------------------

    def proposed(self, name: str) -> Path:
        return self.paths.agent_config(name)

    def applied(self, name: str) -> Path:
        return self.paths.applied(name)

    async def git(
        self,
        repo: Path,
        *args: str,
        what: str,
        check: bool = True,
        identity: bool = False,
        stdin: bytes | None = None,
        cap: int = OUTPUT_CAP,
        env: Mapping[str, str] | None = None,
        user: Credentials | None = None,
    ) -> proc.Result:
        """``git -C repo args`` with every program-running config key off (hooks, fsmonitor,
        pagers, external diffs, ssh, gpg…), no user/system config and no replace refs; as ``user``
        when given. Raises :class:`GitFailure` naming ``what`` on failure."""
        inert = [arg for key in _INERT for arg in ("-c", key)]
        cmd = [
            self._git or git_binary(),
            *inert,
            "-c",
            f"safe.directory={repo}",
            *(IDENTITY if identity else ()),
            "-C",
            str(repo),
            *args,
        ]
        child_env = clean_env()
        child_env["GIT_CEILING_DIRECTORIES"] = str(repo.parent)
        child_env["GIT_NO_REPLACE_OBJECTS"] = "1"
        if user is not None and os.geteuid() != 0:
            user = None  # not root: the invoking user is all there is (same privileges anyway)
        if user is not None:
            child_env.update(HOME="/nonexistent", XDG_CONFIG_HOME="/nonexistent")
        child_env.update(env or {})
        try:
            result = await proc.run(
                cmd,
                env=child_env,
                cap=cap,
                time_limit=GIT_TIMEOUT,
                stdin=stdin,
                user=user,
                cwd=repo if user is not None else None,
            )
        except OSError as exc:
            raise GitFailure(f"{what}: cannot run git: {exc.strerror or exc}") from None
        if result.timed_out:
            raise GitFailure(f"{what}: git did not finish within {GIT_TIMEOUT:.0f} s")
        if check and result.returncode != 0:
            raise GitFailure(f"{what}: {useful_lines(result.stderr, 8)}")
        return result

    async def _out(
        self,
        repo: Path,
        *args: str,
        what: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        result = await self.git(repo, *args, what=what, stdin=stdin, env=env)
        return result.stdout.decode(errors="replace").strip()

    async def is_repo(self, path: Path) -> bool:
        """A real (non-symlink) directory that is the top of a git work tree with a real ``.git`` dir.

        Runs git there: only for daemon-owned repos (applied, meta), never a proposed one
        (:func:`hivecore.proposed.proposed_exists` answers for those without running anything).
        """
        ok = await trio.to_thread.run_sync(lambda: _real_dir(path) and _real_dir(path / ".git"))
        if not ok:
            return False
        result = await self.git(path, "rev-parse", "--show-toplevel", what="probe", check=False)
        if result.returncode != 0:
            return False
        top = Path(result.stdout.decode(errors="replace").strip())
        return await trio.to_thread.run_sync(lambda: top.resolve() == path.resolve())

    async def proposed_exists(self, name: str) -> bool:
        """Whether ``agents/<name>/config/.git`` exists (as anything: an ``lstat``, no git)."""
        return await trio.to_thread.run_sync(proposed.proposed_exists, self.paths.agents, name)

    async def check_proposed(self, name: str) -> None:
        """:class:`~hivecore.proposed.UnsafeRepo` unless the proposed repo is plain and self-contained."""
        await trio.to_thread.run_sync(proposed.check_proposed, self.paths.agents, name)

    async def _seeded(self, repo: Path, ref: str) -> bool:
        """A repository whose seeding finished (``ref`` resolves): a seed a crash cut short is redone."""
        if not await self.is_repo(repo):
            return False
        result = await self.git(
            repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", what="probe", check=False
        )
        return result.returncode == 0

    # --- seeding -------------------------------------------------------------------------------

    async def seed(self, name: str) -> bool:
        """Create whichever of the agent's two repos is missing (kept ones are reused).

        Applied is always seeded from the daemon's template commit (never from the proposed repo:
        nothing unreviewed is deployed); a proposed repo is seeded only when it has no ``.git``
        at all. Returns whether anything was created.
        """
        proposed_new = not await self.proposed_exists(name)
        if proposed_new:
            await self.seed_proposed(name)
        applied_new = not await self._seeded(self.applied(name), "refs/tags/deployed/0")
        if applied_new:
            await self.seed_applied(name)
        return proposed_new or applied_new

    async def _template_commit(self, repo: Path, *, what: str) -> str:
        """Write the template commit into daemon-owned ``repo`` (no index, no attributes: blobs by
        ``hash-object --stdin``, ``mktree``, ``commit-tree`` with the fixed identity); its sha."""
        lines = []
        for fname, data in sorted(template_files().items()):
            blob = await self._out(repo, "hash-object", "-w", "--stdin", what=what, stdin=data)
            lines.append(f"100644 blob {blob}\t{fname}\n")
        tree = await self._out(repo, "mktree", what=what, stdin="".join(lines).encode())
        sha = await self._out(
            repo, "commit-tree", tree, what=what, stdin=SEED_MESSAGE.encode(), env=TEMPLATE_IDENTITY
        )
        if sha != template_commit_sha():
            raise GitFailure(f"{what}: the template commit is {sha}, expected {template_commit_sha()}")
        return sha

    async def seed_proposed(self, name: str) -> str:
        """Give ``agents/<n>/config`` a repo with the template commit on ``main`` and the remote
        ``applied``: built in a daemon-owned scratch dir, then copied in as plain files owned by
        ``owner(name)`` (:func:`hivecore.proposed.hand_over`). No git runs in the proposed dir.
        Refused (:class:`~hivecore.proposed.UnsafeRepo`) when ``config/.git`` already exists."""
        what = f"seeding the config repo of {name}"
        scratch = await self._scratch(f"seed-{name}-")
        try:
            work = scratch / "config"
            await self.git(scratch, "init", "-q", "--template=", "-b", "main", str(work), what=what)
            sha = await self._template_commit(work, what=what)
            await self.git(work, "update-ref", "refs/heads/main", sha, what=what)
            await self.git(work, "reset", "-q", "--hard", sha, what=what)
            url = str(self.applied(name) / ".git")
            await self.git(work, "remote", "add", APPLIED_REMOTE, url, what=what)
            owner = await trio.to_thread.run_sync(self.owner, name) if os.geteuid() == 0 else None
            try:
                await trio.to_thread.run_sync(proposed.hand_over, work, self.paths.agents, name, owner)
            except OSError as exc:
                raise HiveError(f"{what}: {exc.strerror or exc} ({exc.filename or 'config'})") from None
        finally:
            await self._drop_scratch(scratch)
        log.info("seeded the proposed repo of %s at %s", name, sha[:12])
        return sha

    async def seed_applied(self, name: str) -> str:
        """Init ``applied/<n>``: ``main`` at the template commit, tagged ``deployed/0``."""
        repo = self.applied(name)
        what = f"seeding the applied repo of {name}"
        await trio.to_thread.run_sync(partial(repo.mkdir, parents=True, exist_ok=True))
        if not await trio.to_thread.run_sync(_real_dir, repo / ".git"):
            await self.git(repo, "init", "-q", "--template=", "-b", "main", what=what)
        sha = await self._template_commit(repo, what=what)
        await self.git(repo, "update-ref", "refs/heads/main", sha, what=what)
        await self.git(repo, "reset", "-q", "--hard", sha, what=what)
        await self.tag(name, "deployed/0", sha)
        log.info("seeded the applied repo of %s at %s", name, sha[:12])
        return sha

    async def spawn_preview(self, name: str) -> tuple[str, str]:
        """``(sha, agent.nix text)`` a spawn of ``name`` would deploy now: the kept applied main
        when the applied repo is seeded (a revived tombstone), else the template commit."""
        if await self.applied_seeded(name):
            sha = await self.main_sha(name)
            return sha, await self.agent_nix_at(name, sha)
        return template_commit_sha(), template_files()["agent.nix"].decode()

    # --- proposals -----------------------------------------------------------------------------

    async def _pack_proposal(self, name: str, commit_ref: str, *, what: str) -> tuple[str, bytes]:
        """``(sha, pack)``: ``commit_ref`` resolved and its closure packed in the proposed repo, by
        git running with the owner's credentials (``owner(name)``)."""
        with _unreadable_proposal(name, what):
            await self.check_proposed(name)
        user = await trio.to_thread.run_sync(self.owner, name)
        if user is not None and os.geteuid() == 0:
            return await self._pack_in(self.proposed(name), commit_ref, what=what, user=user)
        # as the daemon (nixos runtime, non-root daemon): git never opens the manager's repo by
        # path (a component swapped after the check would be followed): it runs on a snapshot
        snapshot = await self._scratch("snap-")
        try:
            git_dir = snapshot / "git"
            with _unreadable_proposal(name, what):
                await trio.to_thread.run_sync(proposed.snapshot_git, self.paths.agents, name, git_dir)
            return await self._pack_in(git_dir, commit_ref, what=what, user=None)
        finally:
            await trio.to_thread.run_sync(partial(shutil.rmtree, snapshot, ignore_errors=True))

    async def _pack_in(
        self, repo: Path, commit_ref: str, *, what: str, user: Credentials | None
    ) -> tuple[str, bytes]:
        result = await self.git(
            repo,
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{commit_ref.lower()}^{{commit}}",
            what=what,
            check=False,
            user=user,
            env=_NO_TRANSPORT,
        )
        sha = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise GitFailure(
                f"{what}: no commit {commit_ref} in the config repo (a short sha must be unambiguous)"
            )
        packed = await self.git(
            repo,
            "pack-objects",
            "--revs",
            "--stdout",
            "-q",
            what=what,
            stdin=f"{sha}\n".encode(),
            cap=MAX_PROPOSAL_BYTES,
            user=user,
            env=_NO_TRANSPORT,
        )
        if packed.truncated:
            raise Refused(
                f"{what}: the commit and its history pack to more than {MAX_PROPOSAL_BYTES >> 20} MiB; "
                "propose a smaller history (e.g. squash large files away)"
            )
        return sha, packed.stdout

    async def _attributes_check(self, scratch: Path, sha: str, *, what: str) -> dict[str, int]:
        """Refuse a tree whose ``.gitattributes`` transform content; the blob sizes by path."""
        listing = await self.git(
            scratch, "ls-tree", "-r", "-l", "-z", "--full-tree", sha, what=what, cap=64 << 20
        )
        if listing.truncated:
            raise Refused(f"{what}: the commit has too many files to review")
        sizes: dict[str, int] = {}
        attributes: list[tuple[str, str]] = []
        for record in listing.stdout.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid, size = meta.split()
            path = raw_path.decode(errors="replace")
            if size.isdigit():
                sizes[path] = int(size)
            if path.rsplit("/", 1)[-1] == ".gitattributes":
                if kind != b"blob" or mode == b"120000":
                    raise Refused(f"{what}: {path} must be a regular file")
                attributes.append((path, oid.decode()))
        problems: list[str] = []
        for path, obj in attributes:
            blob = await self.git(scratch, "cat-file", "blob", obj, what=what, cap=1 << 20)
            problems += review.transforms_in(path, blob.stdout)
        if problems:
            shown = "; ".join(problems[:10]) + (
                f"; … {len(problems) - 10} more" if len(problems) > 10 else ""
            )
            raise Refused(
                f"{what}: .gitattributes would change what is built from what is reviewed ({shown}); "
                "remove these attributes (export-subst, export-ignore, filter, ident, "
                "working-tree-encoding, text, eol, crlf, [attr] macros)"
            )
        return sizes

    async def _review(
        self, scratch: Path, main: str, sha: str, sizes: dict[str, int], *, what: str
    ) -> Pinned:
        diff_args = ("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames")
        numstat = await self.git(scratch, *diff_args, "--numstat", "-z", main, sha, what=what, cap=64 << 20)
        if numstat.truncated:
            raise Refused(f"{what}: the change touches too many files to review")
        patch = await self.git(scratch, *diff_args, main, sha, what=what, cap=4 * review.TOTAL_CAP)
        files, diff = review.build_review(
            review.parse_numstat(numstat.stdout), patch.stdout, not patch.truncated, sizes
        )
        log_out = await self.git(
            scratch,
            "log",
            "--no-color",
            "--format=commit %H%n%n%B",
            "-n",
            "200",
            sha,
            f"^{main}",
            what=what,
            cap=MAX_COMMIT_MESSAGES,
        )
        message = log_out.stdout.decode(errors="replace")
        if log_out.truncated:
            message += f"\n… commit messages truncated at {MAX_COMMIT_MESSAGES // 1024} KiB\n"
        return Pinned(
            sha=sha,
            files=files,
            diff=diff or "(proposal matches currently-deployed tree)\n",
            commit_message=message,
        )

    async def fetch_proposal(self, name: str, commit_ref: str, approval_id: int) -> Pinned:
        """Pin ``commit_ref`` of the proposed repo as ``proposal/<id>`` in applied; its review.

        The proposed repo is checked as data (:meth:`check_proposed`), the commit's closure is
        packed there with the owner's credentials, fetched as a bundle (``transfer.fsckObjects``)
        into a daemon-owned scratch repo, refused if a ``.gitattributes`` transforms content, and
        reviewed against applied ``main``; only then is it fetched into applied. A refused or
        failed request leaves no object in applied. Raises :class:`HiveError` subclasses.
        """
        if not is_commit_ref(commit_ref):
            raise HiveError(f"commit_ref must be a commit sha (7-40 hex digits), not {commit_ref!r}")
        return await self._pin(
            name, commit_ref, approval_id, what=f"fetching {commit_ref} from the config repo of {name}"
        )

    async def fetch_prepared(self, name: str, approval_id: int) -> Pinned:
        """Pin the proposed repo's ``main`` (the config the manager prepared after ``init_config``)
        as ``proposal/<id>`` in applied, exactly as :meth:`fetch_proposal` pins a commit; its review
        against applied ``main`` (the template)."""
        return await self._pin(
            name, "refs/heads/main", approval_id, what=f"fetching main from the config repo of {name}"
        )

    async def applied_seeded(self, name: str) -> bool:
        """Whether the applied repo of ``name`` finished seeding (``deployed/0`` resolves)."""
        return await self._seeded(self.applied(name), "refs/tags/deployed/0")

    async def agent_nix_at(self, name: str, sha: str) -> str:
        """The ``agent.nix`` of commit ``sha`` of the applied repo (capped), as a spawn review shows it."""
        result = await self.git(
            self.applied(name),
            "cat-file",
            "blob",
            f"{sha}:agent.nix",
            what=f"reading agent.nix of {name}",
            check=False,
            cap=AGENT_NIX_CAP,
        )
        if result.returncode != 0:
            return "(no agent.nix)\n"
        text = result.stdout.decode(errors="replace")
        if result.truncated:
            text += f"\n… agent.nix is longer than {AGENT_NIX_CAP // 1024} KiB\n"
        return text

    async def applied_agent_nix(self, name: str) -> tuple[str, str | None, bool]:
        """``(main sha, agent.nix text or None, truncated)`` of the applied repo of ``name`` (the
        config viewer). Git runs only in the daemon-owned applied repo, with every program-running
        key off (:meth:`git`); the blob is read as data, at most :data:`AGENT_NIX_CAP` bytes.
        :class:`GitFailure` when there is no applied main."""
        sha = await self.main_sha(name)
        entry = await self._out(self.applied(name), "ls-tree", sha, "--", "agent.nix", what="ls-tree")
        if not entry or not entry.split()[0].startswith("100"):  # absent, a link, a tree
            return sha, None, False
        result = await self.git(
            self.applied(name),
            "cat-file",
            "blob",
            f"{sha}:agent.nix",
            what=f"reading agent.nix of {name}",
            cap=AGENT_NIX_CAP,
        )
        return sha, result.stdout.decode(errors="replace"), result.truncated

    async def _pin(self, name: str, commit_ref: str, approval_id: int, *, what: str) -> Pinned:
        sha, pack = await self._pack_proposal(name, commit_ref, what=what)
        applied = self.applied(name)
        main = await self.main_sha(name)
        scratch = await self._scratch(f"proposal-{approval_id}-")
        try:
            await self.git(scratch, "init", "-q", "--bare", "--template=", what=what)

            def write() -> None:
                info = scratch / "objects" / "info"
                info.mkdir(parents=True, exist_ok=True)
                (info / "alternates").write_text(f"{applied / '.git' / 'objects'}\n")
                header = f"# v2 git bundle\n{sha} refs/heads/proposal\n\n".encode()
                (scratch / "proposal.bundle").write_bytes(header + pack)

            await trio.to_thread.run_sync(write)
            await self.git(
                scratch,
                "-c",
                "transfer.fsckObjects=true",
                "fetch",
                "-q",
                "--no-tags",
                "--no-write-fetch-head",
                str(scratch / "proposal.bundle"),
                "refs/heads/proposal:refs/heads/proposal",
                what=what,
            )
            sizes = await self._attributes_check(scratch, sha, what=what)
            pinned = await self._review(scratch, main, sha, sizes, what=what)
            await self.git(
                applied,
                "-c",
                "transfer.fsckObjects=true",
                "-c",
                f"safe.directory={scratch}",
                "fetch",
                "-q",
                "--no-tags",
                "--no-write-fetch-head",
                f"file://{scratch}",
                f"refs/heads/proposal:refs/tags/proposal/{approval_id}",
                what=what,
            )
        finally:
            await self._drop_scratch(scratch)
        return pinned

    # --- refs and tags -------------------------------------------------------------------------

    async def resolve(self, name: str, ref: str) -> str | None:
        result = await self.git(
            self.applied(name), "rev-parse", "--verify", "--quiet", ref, what="resolve", check=False
        )
        return result.stdout.decode().strip() or None if result.returncode == 0 else None

    async def resolve_in(self, repo: Path, ref: str) -> str | None:
        """``ref`` of a daemon-owned repo ``repo`` as a commit sha, or ``None``."""
        result = await self.git(
            repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", what="resolve", check=False
        )
        return result.stdout.decode().strip() or None if result.returncode == 0 else None

    async def main_sha(self, name: str) -> str:
        sha = await self.resolve(name, "refs/heads/main^{commit}")
        if sha is None:
            raise GitFailure(f"the applied repo of {name} has no main branch")
        return sha

    async def tag(self, name: str, tag: str, target: str, message: str | None = None) -> None:
        """Create ``tag`` at ``target`` (annotated when ``message`` is given); an existing tag stays."""
        if await self.resolve(name, f"refs/tags/{tag}") is not None:
            return
        if message is None:
            await self.git(self.applied(name), "tag", tag, target, what=f"tagging {tag}", identity=True)
            return
        await self.git(
            self.applied(name),
            "tag",
            "-a",
            "--cleanup=verbatim",
            "-m",
            message if message.strip() else "(no note)",
            tag,
            target,
            what=f"tagging {tag}",
            identity=True,
        )

    async def tag_message(self, name: str, tag: str) -> str:
        return await self._out(
            self.applied(name),
            "for-each-ref",
            "--format=%(contents)",
            f"refs/tags/{tag}",
            what="reading a tag",
        )

    async def set_ref(self, name: str, ref: str, sha: str) -> None:
        await self.git(self.applied(name), "update-ref", ref, sha, what=f"setting {ref}")

    async def delete_ref(self, name: str, ref: str) -> None:
        await self.git(self.applied(name), "update-ref", "-d", ref, what=f"deleting {ref}", check=False)

    async def move_main(self, name: str, sha: str) -> None:
        """Point applied ``main`` at ``sha`` and sync the work tree to it."""
        await self.git(self.applied(name), "reset", "-q", "--hard", sha, what=f"moving main of {name}")

    async def set_main(self, name: str, previous: str) -> None:
        """Point applied ``main`` back at ``previous`` without needing the index (``update-ref``);
        the work tree is not touched (:meth:`sync_work_tree`)."""
        await self.git(
            self.applied(name),
            "update-ref",
            "refs/heads/main",
            previous,
            what=f"rolling main of {name} back to {previous[:12]}",
        )

    async def roll_back_main(self, name: str, previous: str) -> None:
        """:meth:`set_main`, then :meth:`sync_work_tree`. Raises :class:`GitFailure` saying which of
        the two failed: after a failed sync ``main`` *is* back at ``previous``."""
        await self.set_main(name, previous)
        await self.sync_work_tree(name)

    async def sync_work_tree(self, name: str) -> None:
        """Make the applied work tree and index match ``main`` (``reset --hard``): the meta flake
        reads the applied repo as ``git+file``, and nix builds a dirty work tree as it is."""
        await self.git(
            self.applied(name),
            "reset",
            "-q",
            "--hard",
            "refs/heads/main",
            what=f"syncing the work tree of {name} to its main (main itself is right)",
        )

    async def previous_mains(self, name: str) -> list[tuple[int, str]]:
        """``(approval id, sha)`` of every ``refs/hive/previous-main/<id>`` of the applied repo: an
        approval's build moved main and its end (deployed, or rolled back) was not recorded."""
        result = await self.git(
            self.applied(name),
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            f"{PREVIOUS_MAIN}/",
            what=f"listing rollback refs of {name}",
            check=False,
        )
        found = []
        for line in result.stdout.decode(errors="replace").splitlines():
            ref, _, sha = line.partition(" ")
            tail = ref.removeprefix(f"{PREVIOUS_MAIN}/")
            if tail.isdigit() and re.fullmatch(r"[0-9a-f]{40}", sha):
                found.append((int(tail), sha))
        return sorted(found)

    async def settle_rollback(self, name: str, approval_id: int, previous: str) -> str:
        """Finish what approval ``approval_id``'s build left: ``refs/hive/previous-main/<id>`` says
        main was moved for it and the end was not recorded. Deployed (``deployed/<id>``): drop the
        ref. Else, if main is still at the approval's commit, roll it back to ``previous``
        (:meth:`roll_back_main`); a main that moved on since is left as it is. The work tree is
        synced and then the ref dropped. Returns what it did (``deployed``, ``rolled back``,
        ``moved on``); raises :class:`GitFailure` (the ref stays, so the next call retries)."""
        aid = approval_id
        done = "deployed"
        if await self.resolve(name, f"refs/tags/deployed/{aid}^{{commit}}") is None:
            target = await self.resolve(name, f"refs/tags/approved/{aid}^{{commit}}")
            main = await self.resolve(name, "refs/heads/main^{commit}")
            if target is not None and main == target and main != previous:
                await self.roll_back_main(name, previous)
                done = "rolled back"
            else:
                await self.sync_work_tree(name)
                done = "moved on" if main != previous else "rolled back"
        await self.delete_ref(name, f"{PREVIOUS_MAIN}/{aid}")
        return done

    async def settle_rollbacks(self, name: str) -> list[int]:
        """:meth:`settle_rollback` for every rollback ref of ``name`` (none: nothing runs); the
        approval ids settled. Before any rebuild: a main an approval's failure should have rolled
        back is never built. Raises :class:`GitFailure` when one cannot be settled."""
        settled = []
        for aid, previous in await self.previous_mains(name):
            done = await self.settle_rollback(name, aid, previous)
            log.warning("approval %d: settled the rollback of %s its build left (%s)", aid, name, done)
            settled.append(aid)
        return settled

    async def clear_stale_locks(self) -> list[Path]:
        """Remove the git lock files a crash left in every applied repo (:mod:`hivecore.gitlocks`);
        only at start-up, before anything runs git there. The removed paths."""

        def clear() -> list[Path]:
            root = self.paths.applied_root
            try:
                names = sorted(os.listdir(root))
            except OSError:
                return []
            removed: list[Path] = []
            for entry in names:
                repo = root / entry
                if _real_dir(repo):
                    removed += gitlocks.clear_stale_locks(repo, f"the applied repo of {entry}")
            return removed

        return await trio.to_thread.run_sync(clear)

    async def tree_entry_mode(self, name: str, path: str) -> str | None:
        out = await self._out(self.applied(name), "ls-tree", "refs/heads/main", "--", path, what="ls-tree")
        return out.split()[0] if out else None

    # --- the config check ----------------------------------------------------------------------

    async def check_config(self, name: str) -> bool:
        """Whether ``name`` has an applied repo; :class:`BuildFailed` unless its ``agent.nix`` is a
        regular file in applied ``main`` (a symlink is refused, never followed)."""
        if not await self.is_repo(self.applied(name)):
            log.info("%s has no applied repo; nothing to evaluate", name)
            return False
        mode = await self.tree_entry_mode(name, "agent.nix")
        if mode is None:
            raise BuildFailed(f"the config of {name} has no agent.nix")
        if mode not in ("100644", "100755"):
            raise BuildFailed(f"the config of {name}: agent.nix must be a regular file (git mode {mode})")
        return True

    async def evaluate(self, name: str, *, limits: EvalLimits | None = None) -> None:
        """``nix eval`` the applied ``agent.nix`` (a NixOS module), confined; :class:`BuildFailed`
        if it breaks.

        ``agent.nix`` must be a regular file in applied ``main`` (a symlink is refused, not followed).
        It is copied alone into a private scratch dir, the only path the evaluation may read
        (``restrict-eval``, nothing fetched, no import-from-derivation, no ``<nixpkgs>``, memory and
        time limits, the evaluator uid under a root daemon: :mod:`hivecore.nixconfine`); the meta
        flake replaces this with the real build.
        """
        if not await self.check_config(name):
            return
        limits = limits or EvalLimits()
        try:
            user = await trio.to_thread.run_sync(agent_users.evaluator, self.paths)
        except OSError as exc:
            raise BuildFailed(f"cannot prepare the evaluator: {exc}") from None
        who = user[0] if user is not None else None
        scratch = await trio.to_thread.run_sync(
            partial(_scratch_copy, self.applied(name), "agent.nix", owner=who)
        )
        env = eval_env()
        store_options: list[str] = []
        if user is not None:
            store_options = evaluator_options(user[1])
            env.update(user[2])
        try:
            cmd = [
                self._nix or nix_binary(),
                "--extra-experimental-features",
                "nix-command flakes",
                *store_options,
                "eval",
                *eval_options(()),
                "-I",
                f"agent={scratch}",
                "--json",
                "-f",
                str(scratch / "agent.nix"),
                "--apply",
                _EVAL_APPLY,
            ]
            try:
                result = await proc.run(
                    cmd, env=env, time_limit=limits.time, memory_limit=limits.memory, user=who
                )
            except OSError as exc:
                raise BuildFailed(f"cannot run nix: {exc.strerror or exc}") from None
        finally:
            await trio.to_thread.run_sync(partial(shutil.rmtree, scratch, ignore_errors=True))
        if result.timed_out:
            raise BuildFailed(
                f"agent.nix of {name}: nix eval did not finish within {limits.time:g} s "
                "(the evaluation time limit)"
            )
        if result.returncode != 0:
            hint = ""
            if b"out of memory" in result.stderr or result.returncode < 0:
                hint = f"\n(the evaluation memory limit is {limits.memory >> 20} MiB)"
            raise BuildFailed(f"agent.nix of {name} does not evaluate:\n{useful_lines(result.stderr)}{hint}")
