"""The manager's proposed repos (``agents/<n>/config``), touched only as inert data.

The manager owns every proposed repo, so the root daemon never runs config-sensitive git there and
never follows an indirection out of it. Two jobs, both synchronous filesystem code (run them in a
thread):

* :func:`check_proposed` refuses a repo whose ``.git`` would make git read something else: a
  gitfile or a symlink as ``.git``, ``commondir``, ``objects/info/alternates`` (or
  ``http-alternates``), ``info/grafts``, a ``shallow`` file, and any symlink under ``.git/objects``
  or ``.git/refs`` (or ``packed-refs``, ``HEAD``, ``config`` as links). Each refusal is one
  :class:`UnsafeRepo` naming the entry and the fix.
* :func:`hand_over` copies a repo the daemon built in its own scratch directory into
  ``agents/<n>/config`` as plain files: every directory and file is created relative to a directory
  fd opened ``O_NOFOLLOW`` (``mkdir``/``O_CREAT|O_EXCL``), top-level files replace what is there
  by ``rename`` (never by writing into an existing inode), and each is ``fchown``-ed to the owner.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from hivecore import agentfs
from hivecore.errors import HiveError
from hivecore.proc import Credentials

MAX_GIT_ENTRIES = 200_000
"""Entries under ``.git/objects`` and ``.git/refs`` looked at before a repo is refused as too big
(``git gc`` packs loose objects and refs)."""

_REFUSED_FILES = {
    "commondir": "it makes git use another repository's objects and refs; remove .git/commondir",
    "objects/info/alternates": "it makes git read another repository's objects; "
    "run `git repack -a -d` and remove .git/objects/info/alternates",
    "objects/info/http-alternates": "it names other object stores; remove it",
    "info/grafts": "grafts rewrite history; remove .git/info/grafts",
    "shallow": "the repository is shallow; run `git fetch --unshallow` (or re-clone it in full)",
}
_NO_LINKS = ("HEAD", "config", "packed-refs", "index", "objects", "refs", "info", "objects/info")


class UnsafeRepo(HiveError):
    """A proposed repo hive-c0re refuses to read; the message names the entry and the fix."""


def _lstat(dir_fd: int, rel: str) -> os.stat_result | None:
    parts = rel.split("/")
    fd = dir_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            opened.append(fd)
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeRepo(
                f".git/{'/'.join(parts[:-1])} is a symlink; replace it with a directory"
            ) from None
        raise
    finally:
        for o in opened:
            os.close(o)


def check_proposed(agents_root: Path, name: str) -> None:
    """Refuse ``agents/<name>/config`` unless its ``.git`` is a plain, self-contained repository.

    Raises :class:`UnsafeRepo` (what is wrong, and the fix) or :class:`HiveError` when there is no
    repository at all. Reads only directory entries (``lstat``, never following a link).
    """
    where = f"the config repo of {name}"
    try:
        top = agentfs.open_dir(agents_root, name, "config")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeRepo(
                f"{where}: agents/{name}/config (or a parent) is not a plain directory"
            ) from None
        raise HiveError(f"{name} has no config repo at {agents_root / name / 'config'}") from None
    try:
        mode = agentfs.entry_mode(top, ".git")
        if mode is None:
            raise HiveError(f"{name} has no config repo ({agents_root / name / 'config'} has no .git)")
        if stat.S_ISLNK(mode):
            raise UnsafeRepo(f"{where}: .git is a symlink; the repository must live in config/.git itself")
        if not stat.S_ISDIR(mode):
            raise UnsafeRepo(
                f"{where}: .git is a file (a gitfile pointing at another git dir); "
                "the repository must live in config/.git itself"
            )
        git = os.open(".git", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    finally:
        os.close(top)
    try:
        for rel in _NO_LINKS:
            st = _lstat(git, rel)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise UnsafeRepo(f"{where}: .git/{rel} is a symlink; git would read what it points at")
        for rel, why in _REFUSED_FILES.items():
            if _lstat(git, rel) is not None:
                raise UnsafeRepo(f"{where}: .git/{rel} is refused: {why}")
        budget = [MAX_GIT_ENTRIES]
        for sub in ("objects", "refs"):
            _no_links_below(git, sub, where, budget)
    finally:
        os.close(git)


def _no_links_below(parent: int, sub: str, where: str, budget: list[int], shown: str = "") -> None:
    try:
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeRepo(f"{where}: .git/{shown}{sub} is not a plain directory") from None
        raise
    try:
        with os.scandir(fd) as it:
            subdirs: list[str] = []
            for entry in it:
                budget[0] -= 1
                if budget[0] < 0:
                    raise UnsafeRepo(
                        f"{where}: more than {MAX_GIT_ENTRIES} entries under .git/objects and .git/refs; "
                        "run `git gc` to pack them"
                    )
                if entry.is_symlink():
                    raise UnsafeRepo(
                        f"{where}: .git/{shown}{sub}/{entry.name} is a symlink; "
                        "git would read what it points at"
                    )
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
        for name in subdirs:
            _no_links_below(fd, name, where, budget, f"{shown}{sub}/")
    finally:
        os.close(fd)


def proposed_exists(agents_root: Path, name: str) -> bool:
    """``agents/<name>/config/.git`` exists as anything (``lstat``; a link is not followed)."""
    try:
        with agentfs.opened_dir(agents_root, name, "config") as fd:
            return agentfs.entry_mode(fd, ".git") is not None
    except (OSError, ValueError):
        return False


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# --- snapshot: the repo as inert data --------------------------------------------------------------

MAX_SNAPSHOT_BYTES = 2 << 30
"""Bytes of ``.git/objects`` a snapshot copies (hard links cost nothing) before refusing."""
_SNAPSHOT_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n"


def snapshot_git(agents_root: Path, name: str, dest: Path) -> None:
    """Copy what git needs to read a commit of ``agents/<name>/config/.git`` into ``dest`` (a new,
    daemon-owned directory that must not exist), as inert data: a bare repository of the manager's
    ``objects/**`` (``objects/info`` left out: no alternates) with a ``HEAD``, empty ``refs`` and a
    config of the daemon's own (no extension, no promisor, nothing that runs). A proposal is named
    by its sha, so no ref is needed (and the cost does not grow with the branches).

    Closes the window between :func:`check_proposed` and git opening the repo by path: every
    directory is opened ``O_NOFOLLOW`` relative to the one above it (starting from
    ``agents_root``), every file ``O_NOFOLLOW|O_NONBLOCK`` and kept only when ``fstat`` says it is
    a regular file; it is hard-linked when it can be (the link is the inode just checked) else
    copied from its fd. A link, FIFO, device or socket met anywhere (swapped in at any moment) is
    refused (:class:`UnsafeRepo`); git then runs on ``dest`` only. Blocking.
    """
    where = f"the config repo of {name}"
    budget = [MAX_GIT_ENTRIES, MAX_SNAPSHOT_BYTES]
    try:
        top = agentfs.open_dir(agents_root, name, "config")
    except OSError as exc:
        raise UnsafeRepo(f"{where}: agents/{name}/config is not a plain directory ({exc.strerror})") from None
    try:
        try:
            git = os.open(".git", _DIR, dir_fd=top)
        except OSError as exc:
            raise UnsafeRepo(f"{where}: .git is not a plain directory ({exc.strerror})") from None
    finally:
        os.close(top)
    os.mkdir(dest, 0o700)
    out = os.open(dest, _DIR)
    try:
        _snapshot_dir(git, "objects", out, where, budget, "objects")
        for sub in ("refs", "refs/heads", "refs/tags"):
            os.mkdir(sub, 0o700, dir_fd=out)
        for file, data in (("HEAD", b"ref: refs/heads/main\n"), ("config", _SNAPSHOT_CONFIG)):
            fd = os.open(file, _NEW_FILE, 0o600, dir_fd=out)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        os.close(out)
        os.close(git)


def _snapshot_file(
    src_dir: int,
    name: str,
    dst_dir: int,
    where: str,
    budget: list[int],
    *,
    required: bool = False,
    shown: str = "",
) -> None:
    shown = shown or name
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_dir)
    except FileNotFoundError:
        if required:
            raise UnsafeRepo(f"{where}: .git/{shown} is missing") from None
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeRepo(
                f"{where}: .git/{shown} is a symlink; git would read what it points at"
            ) from None
        raise UnsafeRepo(f"{where}: .git/{shown} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeRepo(f"{where}: .git/{shown} is not a regular file")
        budget[0] -= 1
        budget[1] -= st.st_size
        if budget[0] < 0 or budget[1] < 0:
            raise UnsafeRepo(
                f"{where}: more than {MAX_GIT_ENTRIES} entries or {MAX_SNAPSHOT_BYTES >> 30} GiB under .git; "
                "run `git gc` to pack them"
            )
        try:  # linkat(2) of the fd: exactly the inode checked above (needs CAP_DAC_READ_SEARCH)
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dst_dir, follow_symlinks=True)
            return
        except OSError:
            pass
        out = os.open(name, _NEW_FILE, 0o600, dir_fd=dst_dir)
        try:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _snapshot_dir(
    src_parent: int, sub: str, dst_parent: int, where: str, budget: list[int], shown: str
) -> None:
    try:
        src = os.open(sub, _DIR, dir_fd=src_parent)
    except FileNotFoundError:
        src = -1
    except OSError as exc:
        raise UnsafeRepo(f"{where}: .git/{shown} is not a plain directory ({exc.strerror})") from None
    os.mkdir(sub, 0o700, dir_fd=dst_parent)
    if src < 0:
        return
    dst = os.open(sub, _DIR, dir_fd=dst_parent)
    try:
        with os.scandir(src) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for entry, is_dir in entries:
            if shown == "objects" and entry == "info":
                continue  # alternates, http-alternates, packs: never copied
            budget[0] -= 1
            if budget[0] < 0:
                raise UnsafeRepo(f"{where}: more than {MAX_GIT_ENTRIES} entries under .git; run `git gc`")
            if is_dir:
                _snapshot_dir(src, entry, dst, where, budget, f"{shown}/{entry}")
            else:
                _snapshot_file(src, entry, dst, where, budget, shown=f"{shown}/{entry}")
    finally:
        os.close(dst)
        os.close(src)


# --- hand-over ------------------------------------------------------------------------------------


def _chown(fd: int, owner: Credentials | None) -> None:
    if owner is not None:
        os.fchown(fd, owner.uid, owner.gid)


def _copy_file(src: Path, dst_dir: int, name: str, owner: Credentials | None) -> None:
    data = src.read_bytes()
    mode = 0o755 if os.stat(src).st_mode & 0o100 else 0o644
    fd = os.open(name, _NEW_FILE, mode, dir_fd=dst_dir)
    try:
        os.fchmod(fd, mode)
        _chown(fd, owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _copy_tree(src: Path, dst_parent: int, name: str, owner: Credentials | None) -> None:
    os.mkdir(name, 0o755, dir_fd=dst_parent)  # EEXIST when anything is there: never merged into
    fd = os.open(name, _DIR, dir_fd=dst_parent)
    try:
        os.fchmod(fd, 0o755)
        _chown(fd, owner)
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            if entry.is_symlink():
                raise HiveError(f"seeding: unexpected symlink {entry.path} in the scratch repo")
            if entry.is_dir():
                _copy_tree(Path(entry.path), fd, entry.name, owner)
            else:
                _copy_file(Path(entry.path), fd, entry.name, owner)
    finally:
        os.close(fd)


_GIT_TMP = ".git.hive-seed"


def _place_git_dir(src: Path, top: int, name: str, owner: Credentials | None) -> None:
    """Copy ``src`` to ``config/.git.hive-seed`` then ``rename`` it to ``.git``: a crash never
    leaves a half-copied ``.git`` (a leftover copy is removed first, links not followed)."""
    if agentfs.entry_mode(top, ".git") is not None:
        raise UnsafeRepo(f"agents/{name}/config/.git already exists; remove it to seed a new config repo")
    mode = agentfs.entry_mode(top, _GIT_TMP)
    if mode is not None and stat.S_ISDIR(mode):
        shutil.rmtree(_GIT_TMP, dir_fd=top)
    elif mode is not None:
        os.unlink(_GIT_TMP, dir_fd=top)
    _copy_tree(src, top, _GIT_TMP, owner)
    if agentfs.entry_mode(top, ".git") is not None:  # appeared meanwhile; rename would merge into
        raise UnsafeRepo(f"agents/{name}/config/.git already exists; remove it to seed a new config repo")
    os.rename(_GIT_TMP, ".git", src_dir_fd=top, dst_dir_fd=top)


def hand_over(scratch: Path, agents_root: Path, name: str, owner: Credentials | None) -> None:
    """Copy the daemon-built repo ``scratch`` (a work tree with its ``.git``) into
    ``agents/<name>/config`` as data owned by ``owner`` (``None``: the daemon).

    ``agents/<name>`` and ``config`` are created if missing (a symlink there is refused).
    ``.git`` must not exist yet (:class:`UnsafeRepo` otherwise); it is copied last, under a
    temporary name then renamed. Each top-level file replaces whatever entry is at its name by
    ``rename`` from a fresh ``O_EXCL`` file, so a planted link or hard link is replaced, never
    written through.
    """
    with agentfs.opened_dir(agents_root) as root, contextlib.suppress(FileExistsError):
        os.mkdir(agentfs._component(name), 0o755, dir_fd=root)  # init_config: no agent dir yet
    with agentfs.opened_dir(agents_root, name) as agent:
        with contextlib.suppress(FileExistsError):
            os.mkdir("config", 0o755, dir_fd=agent)
        try:
            top = os.open("config", _DIR, dir_fd=agent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeRepo(f"agents/{name}/config is not a plain directory; remove it") from None
            raise
    try:
        _chown(top, owner)
        # the files first, .git last: a config dir with a .git is a finished seed
        for entry in sorted(os.scandir(scratch), key=lambda e: (e.name == ".git", e.name)):
            if entry.name == ".git":
                _place_git_dir(Path(entry.path), top, name, owner)
                continue
            tmp = f".{entry.name}.hive-seed"
            agentfs.remove_entry(top, tmp)
            _copy_file(Path(entry.path), top, tmp, owner)
            os.rename(tmp, entry.name, src_dir_fd=top, dst_dir_fd=top)
    finally:
        os.close(top)
