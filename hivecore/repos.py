"""The two git repos per agent (reference §2.4) and the build's config check.

* **proposed** — ``agents/<n>/config/``: the manager edits and commits here. It is agent-writable, so
  hive-c0re never trusts it: it is never a symlink, git runs there with hooks off and no user or
  system config, and commits leave it only by ``git fetch`` (over ``file://``, objects checked) into
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

import errno
import logging
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from importlib import resources
from pathlib import Path

import trio

from hivecore import proc
from hivecore.config import StatePaths
from hivecore.errors import HiveError
from hivecore.nixconfine import EvalLimits, eval_env, eval_options

log = logging.getLogger(__name__)

OUTPUT_CAP = proc.OUTPUT_CAP
GIT_TIMEOUT = 120.0
NIX_TIMEOUT = 300.0
IDENTITY = ("-c", "user.name=hive-c0re", "-c", "user.email=hive-c0re@hyperhive")
TEMPLATE_FILES = ("agent.nix", "README.md")
APPLIED_REMOTE = "applied"
PREVIOUS_MAIN = "refs/hive/previous-main"
"""``<PREVIOUS_MAIN>/<id>``: where applied ``main`` was before approval ``<id>`` moved it."""
INCOMING = "refs/hive/incoming"
SCRATCH_MAX = 1 << 20
"""Bytes of ``agent.nix`` the config check copies for a confined evaluation."""

_HEX_RE = re.compile(r"[0-9a-fA-F]{7,40}")
_NOISE = ("warning: the group", "(use '--show-trace'")
_EVAL_APPLY = (
    "m: let v = if builtins.isFunction m then m (builtins.mapAttrs (n: _: { }) (builtins.functionArgs m))"
    ' else m; in if builtins.isAttrs v then true else throw "agent.nix must be a NixOS module:'
    ' an attribute set, or a function returning one"'
)


class GitFailure(HiveError):
    """A git command failed; the message names what hive-c0re was doing and git's own words."""


class BuildFailed(HiveError):
    """An agent's config does not build; the message carries the useful lines of the error."""


ProcResult = proc.Result
"""Kept as a name for callers of :func:`run_capped`; see :class:`hivecore.proc.Result`."""


async def run_capped(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    cap: int = OUTPUT_CAP,
    time_limit: float = GIT_TIMEOUT,
) -> ProcResult:
    """Run ``cmd`` through :func:`hivecore.proc.run` (capped output, group killed on timeout or
    cancellation, killed with the daemon); ``result.timed_out`` says the time limit fired."""
    return await proc.run(cmd, env=env, cwd=cwd, cap=cap, time_limit=time_limit)


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


def _scratch_copy(repo: Path, fname: str) -> Path:
    """A fresh 0700 directory holding a copy of ``repo/fname`` (opened without following a link,
    at most 1 MiB): the only thing a confined evaluation of it may read."""
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


class Repos:
    """Git on the proposed and applied repos of every agent (paths from :class:`StatePaths`)."""

    def __init__(self, paths: StatePaths, *, git: str | None = None, nix: str | None = None) -> None:
        self.paths = paths
        self._git = git
        self._nix = nix

    # --- running git ---------------------------------------------------------------------------

    def proposed(self, name: str) -> Path:
        return self.paths.agent_config(name)

    def applied(self, name: str) -> Path:
        return self.paths.applied(name)

    async def git(
        self, repo: Path, *args: str, what: str, check: bool = True, identity: bool = False
    ) -> ProcResult:
        """``git -C repo args`` with hooks off; raises :class:`GitFailure` naming ``what`` on failure."""
        cmd = [
            self._git or git_binary(),
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "gc.auto=0",
            "-c",
            "core.fsmonitor=false",
            "-c",
            f"safe.directory={repo}",
            *(IDENTITY if identity else ()),
            "-C",
            str(repo),
            *args,
        ]
        env = clean_env()
        env["GIT_CEILING_DIRECTORIES"] = str(repo.parent)
        try:
            result = await run_capped(cmd, env=env)
        except OSError as exc:
            raise GitFailure(f"{what}: cannot run git: {exc.strerror or exc}") from None
        if result.timed_out:
            raise GitFailure(f"{what}: git did not finish within {GIT_TIMEOUT:.0f} s")
        if check and result.returncode != 0:
            raise GitFailure(f"{what}: {useful_lines(result.stderr, 8)}")
        return result

    async def _out(self, repo: Path, *args: str, what: str) -> str:
        return (await self.git(repo, *args, what=what)).stdout.decode(errors="replace").strip()

    async def is_repo(self, path: Path) -> bool:
        """A real (non-symlink) directory that is the top of a git work tree with a real ``.git`` dir."""
        ok = await trio.to_thread.run_sync(lambda: _real_dir(path) and _real_dir(path / ".git"))
        if not ok:
            return False
        result = await self.git(path, "rev-parse", "--show-toplevel", what="probe", check=False)
        if result.returncode != 0:
            return False
        top = Path(result.stdout.decode(errors="replace").strip())
        return await trio.to_thread.run_sync(lambda: top.resolve() == path.resolve())

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

        A fresh applied repo takes the proposed repo's seed commit when both are new, else a seed
        commit of its own (so kept, unapproved edits in a proposed repo never reach applied).
        Returns whether anything was created.
        """
        proposed_new = not await self._seeded(self.proposed(name), "HEAD")
        if proposed_new:
            await self.seed_proposed(name)
        applied_new = not await self._seeded(self.applied(name), "refs/tags/deployed/0")
        if applied_new:
            await self.seed_applied(name, from_proposed=proposed_new)
        return proposed_new or applied_new

    async def _write_template(self, directory: Path) -> None:
        def write() -> None:
            if directory.is_symlink():
                raise HiveError(f"refusing to seed {directory}: it is a symlink")
            directory.mkdir(parents=True, exist_ok=True)
            source = resources.files("hivecore") / "templates" / "agent"
            for fname in TEMPLATE_FILES:
                data = (source / fname).read_bytes()
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                try:
                    fd = os.open(directory / fname, flags, 0o644)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise HiveError(f"refusing to seed {directory / fname}: it is a symlink") from None
                    raise
                with os.fdopen(fd, "wb") as f:
                    f.write(data)

        await trio.to_thread.run_sync(write)

    async def seed_proposed(self, name: str) -> str:
        """Init ``agents/<n>/config`` with the template, commit it on ``main``, add remote ``applied``."""
        repo = self.proposed(name)
        await self._write_template(repo)
        what = f"seeding the config repo of {name}"
        if not await trio.to_thread.run_sync(_real_dir, repo / ".git"):
            await self.git(repo, "init", "-q", "-b", "main", what=what)
        await self.git(repo, "add", "--", *TEMPLATE_FILES, what=what)
        await self.git(
            repo, "commit", "-q", "--allow-empty", "-m", "seed agent config", what=what, identity=True
        )
        url = str(self.applied(name) / ".git")
        remotes = (await self._out(repo, "remote", what=what)).split()
        if APPLIED_REMOTE in remotes:
            await self.git(repo, "remote", "set-url", APPLIED_REMOTE, url, what=what)
        else:
            await self.git(repo, "remote", "add", APPLIED_REMOTE, url, what=what)
        sha = await self._out(repo, "rev-parse", "HEAD", what=what)
        log.info("seeded the proposed repo of %s at %s", name, sha[:12])
        return sha

    async def seed_applied(self, name: str, *, from_proposed: bool) -> str:
        """Init ``applied/<n>``: ``main`` at the proposed seed (or a template commit), tag ``deployed/0``."""
        repo = self.applied(name)
        what = f"seeding the applied repo of {name}"
        await trio.to_thread.run_sync(partial(repo.mkdir, parents=True, exist_ok=True))
        if not await trio.to_thread.run_sync(_real_dir, repo / ".git"):
            await self.git(repo, "init", "-q", "-b", "main", what=what)
        if from_proposed:
            sha = await self._fetch_head(name, "main", "seed", what=what)
            await self.git(repo, "reset", "-q", "--hard", sha, what=what)
            await self._drop_incoming(name, "seed")
        else:
            await self._write_template(repo)
            await self.git(repo, "add", "--", *TEMPLATE_FILES, what=what)
            await self.git(
                repo, "commit", "-q", "--allow-empty", "-m", "seed agent config", what=what, identity=True
            )
            sha = await self._out(repo, "rev-parse", "HEAD", what=what)
        await self.tag(name, "deployed/0", sha)
        log.info("seeded the applied repo of %s at %s", name, sha[:12])
        return sha

    # --- proposals -----------------------------------------------------------------------------

    async def _fetch_heads(self, name: str, token: str, *, what: str) -> None:
        """Fetch every branch of the proposed repo into ``refs/hive/incoming/<token>/`` of applied."""
        proposed = self.proposed(name)
        if not await self.is_repo(proposed):
            raise GitFailure(f"{what}: {name} has no config repo at {proposed} (or it is not a git repo)")
        await self.git(
            self.applied(name),
            "-c",
            "transfer.fsckObjects=true",
            "-c",
            "protocol.file.allow=always",
            "-c",
            f"safe.directory={proposed}",
            "fetch",
            # upload-pack runs in the proposed repo, which the manager's uid owns: it gets no -c from
            # here (a local fetch clears GIT_CONFIG_PARAMETERS), so it is told on its command line
            "--upload-pack",
            shlex.join([self._git or git_binary(), "-c", f"safe.directory={proposed}/.git", "upload-pack"]),
            "-q",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            f"file://{proposed}",
            f"+refs/heads/*:{INCOMING}/{token}/*",
            what=what,
        )

    async def _fetch_head(self, name: str, branch: str, token: str, *, what: str) -> str:
        await self._fetch_heads(name, token, what=what)
        return await self._out(
            self.applied(name), "rev-parse", "--verify", f"{INCOMING}/{token}/{branch}", what=what
        )

    async def _drop_incoming(self, name: str, token: str) -> None:
        repo = self.applied(name)
        refs = await self._out(
            repo, "for-each-ref", "--format=%(refname)", f"{INCOMING}/{token}/", what="cleanup"
        )
        for ref in refs.splitlines():
            await self.git(repo, "update-ref", "-d", ref, what="cleanup", check=False)

    async def fetch_proposal(self, name: str, commit_ref: str, approval_id: int) -> str:
        """Pin ``commit_ref`` of the proposed repo as ``proposal/<id>`` in applied; return its full sha.

        Every branch of proposed is fetched into applied's object database first, so the proposal
        survives anything later done to the proposed repo.
        """
        if not is_commit_ref(commit_ref):
            raise HiveError(f"commit_ref must be a commit sha (7-40 hex digits), not {commit_ref!r}")
        what = f"fetching {commit_ref} from the config repo of {name}"
        token = str(approval_id)
        try:
            await self._fetch_heads(name, token, what=what)
            result = await self.git(
                self.applied(name),
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{commit_ref.lower()}^{{commit}}",
                what=what,
                check=False,
            )
            sha = result.stdout.decode(errors="replace").strip()
            if result.returncode != 0 or not sha:
                raise GitFailure(
                    f"{what}: no commit {commit_ref} on any branch of the config repo "
                    "(commit it on a branch; a short sha must be unambiguous)"
                )
            await self.tag(name, f"proposal/{approval_id}", sha)
        finally:
            await self._drop_incoming(name, token)
        return sha

    async def diff(self, name: str, approval_id: int, *, cap: int = 256 * 1024) -> str:
        """``git diff main..proposal/<id>`` in applied (capped), or a note when there is no change."""
        result = await self.git(
            self.applied(name),
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "refs/heads/main",
            f"refs/tags/proposal/{approval_id}",
            "--",
            what=f"diffing proposal {approval_id}",
        )
        text = result.stdout[:cap].decode(errors="replace")
        if not text:
            return "(proposal matches currently-deployed tree)\n"
        if len(result.stdout) > cap or result.truncated:
            text += f"\n… diff truncated at {cap // 1024} KiB\n"
        return text

    # --- refs and tags -------------------------------------------------------------------------

    async def resolve(self, name: str, ref: str) -> str | None:
        result = await self.git(
            self.applied(name), "rev-parse", "--verify", "--quiet", ref, what="resolve", check=False
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
        time limits: :mod:`hivecore.nixconfine`); the meta flake replaces this with the real build.
        """
        if not await self.check_config(name):
            return
        limits = limits or EvalLimits()
        scratch = await trio.to_thread.run_sync(partial(_scratch_copy, self.applied(name), "agent.nix"))
        try:
            cmd = [
                self._nix or nix_binary(),
                "--extra-experimental-features",
                "nix-command flakes",
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
                    cmd, env=eval_env(), time_limit=limits.time, memory_limit=limits.memory
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
