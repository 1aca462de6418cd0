"""Who an agent runs as: one uid per agent name when the daemon is root, the invoking user otherwise.

The id range starts at ``--agent-uid-base`` (:data:`~hivecore.limits.DEFAULT_AGENT_UID_BASE`) and
holds :data:`~hivecore.limits.AGENT_ID_COUNT` ids:

* ``base`` is the agents' **shared group**: every agent has it as its one supplementary group, and
  the daemon's shared directories (the state root, ``agents/``, the runtime dir and its ``agents/``)
  grant that group traverse (``x``) and nothing else, through a POSIX ACL.
* ``base + AGENT_ID_COUNT - 1`` (the range's last id) is the **evaluator**: nix evaluates agent
  config as that uid (:func:`evaluator`), with a store of its own, so nothing root alone may read
  is within its reach whatever nix lets an expression fetch.
* ``base+1 …`` are **agent uids**, each with the gid of the same number. A name gets the lowest id
  that no recorded name holds and that ``/etc/passwd`` and ``/etc/group`` do not know; the choice is
  recorded in ``<state>/agent-uids.json`` (0600) and **never given to another name**: records are
  never removed (not by destroy, not by purge), so files a former agent left can never become
  another agent's. The same name always gets its recorded uid back.

The manager (``hm1nd``) is an agent name like any other: it owns every proposed repo
``agents/<n>/config``.

When the daemon is not root it cannot change uids: :func:`credentials` answers ``None`` and agents
run as the invoking user (docs/security.md).

Every function here blocks (a small file and a lock): call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from hivecore import agentfs, posix_acl
from hivecore.config import StatePaths
from hivecore.errors import HiveError
from hivecore.limits import AGENT_ID_COUNT
from hivecore.names import MANAGER_NAME, validate_name
from hivecore.nixconfine import Evaluator
from hivecore.proc import Credentials

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
"""Serialises allocation within the daemon (one daemon per state dir: see :mod:`hivecore.statelock`)."""
_RECORD_VERSION = 1


class NoAgentIds(HiveError):
    """The agent id range is used up, or the record of it cannot be read or written."""


def daemon_is_root() -> bool:
    return os.geteuid() == 0


def shared_gid(paths: StatePaths) -> int:
    """The agents' shared group id (``--agent-uid-base``)."""
    return paths.agent_uid_base


def evaluator_uid(paths: StatePaths) -> int:
    """The uid nix evaluates agent config as (the range's last id; never an agent's)."""
    return paths.agent_uid_base + AGENT_ID_COUNT - 1


EVAL_STORE = "eval-store"
"""``<state>/eval-store``: the evaluator's own nix store (a chroot store), owned by its uid."""
EVAL_GITCONFIG = "eval-gitconfig"
"""``<state>/eval-gitconfig`` (root's, 0644): the evaluator's git trusts the daemon's repos."""


def evaluator(paths: StatePaths) -> Evaluator | None:
    """Who evaluates agent config, with what store and environment: ``(credentials, store dir,
    environment additions)``, the directories prepared; ``None`` when the daemon is not root.

    The evaluator may read (ACL ``r-x``) ``meta/`` and ``base/`` and traverse the state root and
    ``released/`` (whose repos are readable inside): the meta flake's inputs, nothing else of the
    daemon's — not the database, the token, ``agents/``, ``applied/`` (pending proposals) or
    ``/root``. Its store is
    ``<state>/eval-store`` (0700, its own); its git reads the daemon's repos through
    ``safe.directory`` in a config file only root can write.
    """
    if not daemon_is_root():
        return None
    uid = evaluator_uid(paths)
    who = Credentials(uid=uid, gid=uid, groups=())
    posix_acl.grant(paths.root, posix_acl.USER, uid)
    with contextlib.suppress(FileNotFoundError):  # granted by versions whose input was applied/
        posix_acl.revoke(paths.applied_root, posix_acl.USER, uid)
    paths.released_root.mkdir(mode=0o700, exist_ok=True)
    posix_acl.grant(paths.released_root, posix_acl.USER, uid)
    for tree in (paths.meta, paths.root / "base"):
        tree.mkdir(mode=0o700, exist_ok=True)
        posix_acl.grant(tree, posix_acl.USER, uid, posix_acl.R | posix_acl.X)
    store = paths.root / EVAL_STORE
    with contextlib.suppress(FileExistsError):
        store.mkdir(mode=0o700)
    st = os.lstat(store)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{store} is not a directory")
    if (st.st_uid, st.st_gid) != (uid, uid):
        os.chown(store, uid, uid, follow_symlinks=False)
    gitconfig = paths.root / EVAL_GITCONFIG
    wanted = "[safe]\n\tdirectory = *\n"
    try:
        current = gitconfig.read_text() if not gitconfig.is_symlink() else ""
    except OSError:
        current = ""
    if current != wanted:
        tmp = gitconfig.with_name(f".{EVAL_GITCONFIG}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(wanted)
        os.chmod(tmp, 0o644)
        os.replace(tmp, gitconfig)
    env = {
        "USER": "hive-eval",
        "HOME": str(store),
        "XDG_CACHE_HOME": str(store / ".cache"),
        "GIT_CONFIG_GLOBAL": str(gitconfig),
    }
    return who, store, env


def credentials(paths: StatePaths, name: str) -> Credentials | None:
    """The credentials agent ``name`` runs as (uid = gid, the shared group as its only supplementary
    group), allocated and recorded on first use; ``None`` when the daemon is not root.

    Raises :class:`~hivecore.errors.InvalidName` for a bad name and :class:`NoAgentIds` when the
    range is exhausted or the record is unreadable (it is never silently replaced).
    """
    validate_name(name)
    if not daemon_is_root():
        return None
    uid = allocate(paths, name)
    return Credentials(uid=uid, gid=uid, groups=(shared_gid(paths),))


def recorded(paths: StatePaths) -> dict[str, int]:
    """Every recorded ``name -> uid`` (empty when nothing was allocated yet)."""
    with _LOCK:
        return dict(_read(paths.agent_uids))


def recorded_uid(paths: StatePaths, name: str) -> int | None:
    """The uid recorded for ``name``, without allocating one."""
    return recorded(paths).get(name)


def allocate(paths: StatePaths, name: str) -> int:
    """``name``'s recorded uid, or the lowest free one of the range, recorded before it is returned."""
    validate_name(name)
    with _LOCK:
        table = _read(paths.agent_uids)
        if name in table:
            return table[name]
        taken = set(table.values())
        base = paths.agent_uid_base
        for uid in range(base + 1, evaluator_uid(paths)):
            if uid in taken or _known_id(uid):
                continue
            table[name] = uid
            _write(paths.agent_uids, table)
            return uid
    raise NoAgentIds(
        f"no free agent uid in {base + 1}..{evaluator_uid(paths) - 1} (see --agent-uid-base); "
        f"{len(table)} are recorded in {paths.agent_uids}"
    )


def _known_id(uid: int) -> bool:
    """The host already has a user or group with this id (never hand it to an agent)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def _read(path: Path) -> dict[str, int]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise NoAgentIds(f"cannot read the agent uid record {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
        uids = data["uids"]
        if not isinstance(uids, Mapping):
            raise TypeError("uids is not an object")
        table = {str(k): int(v) for k, v in uids.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise NoAgentIds(
            f"the agent uid record {path} is damaged ({exc}); restore it from a backup "
            "(agents' files are owned by the uids it lists)"
        ) from None
    return table


def _write(path: Path, table: Mapping[str, int]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps({"version": _RECORD_VERSION, "uids": dict(sorted(table.items()))}, indent=1)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk: no temp file is left behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        raise NoAgentIds(f"cannot record agent uids in {path}: {exc.strerror or exc}") from None


# --- what an agent may reach ------------------------------------------------------------------------

CHOWN_MAX_ENTRIES = 200_000
"""Entries a hand-over walk looks at before it stops (a hostile tree must not stall a start)."""


def prepare_agent(paths: StatePaths, runtime_dir: Path | None, name: str, who: Credentials) -> None:
    """Give agent ``name`` (running as ``who``) exactly what it needs, whatever modes the operator
    created the dirs with: traverse (``x``, by ACL) on the state root, ``agents/``, ``agents/<n>/``,
    ``runtime_dir`` and its ``agents/`` (the shared group), and on its own socket directory
    (``<runtime>/agents/<n>``; the manager: ``<runtime>/manager``) for its uid alone; ownership of
    ``agents/<n>/state`` and ``agents/<n>/claude``. A config repo goes to the manager
    (:func:`prepare_config`).

    Nothing of the daemon's (db, operator token, ``applied/``, ``meta/``, other agents' dirs)
    becomes readable: the shared grants are traverse only. Raises ``OSError`` (a planted symlink is
    refused with ``ELOOP``/``ENOTDIR``, never followed).
    """
    validate_name(name)
    group = shared_gid(paths)
    for shared in (paths.root, paths.agents):
        posix_acl.grant(shared, posix_acl.GROUP, group)
    agent_dir = paths.agent_dir(name)
    agent_dir.mkdir(mode=0o700, exist_ok=True)
    posix_acl.narrow(agent_dir, 0o700)  # a wider one (made before agents had uids) let others in
    posix_acl.grant(agent_dir, posix_acl.USER, who.uid)
    for sub in ("state", "claude"):
        with agentfs.opened_dir(agent_dir) as dfd, contextlib.suppress(FileExistsError):
            os.mkdir(sub, 0o700, dir_fd=dfd)
        hand_over(agent_dir, sub, who)
        with agentfs.opened_dir(agent_dir, sub) as fd:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o700)
    if runtime_dir is not None:
        if name == MANAGER_NAME:
            own = runtime_dir / "manager"
            _grant_chain(runtime_dir, group, paths)
        else:
            own = runtime_dir / "agents" / name
            _grant_chain(runtime_dir / "agents", group, paths)
        own.mkdir(mode=0o751, parents=True, exist_ok=True)
        posix_acl.grant(own, posix_acl.USER, who.uid)
    if name != MANAGER_NAME and (agent_dir / "config").is_dir():
        prepare_config(paths, name)


def prepare_config(paths: StatePaths, name: str) -> Credentials | None:
    """Hand ``agents/<name>/config`` (the proposed repo, the manager edits it) to the manager's uid,
    with traverse on ``agents/<name>/`` and on ``applied/`` (its ``applied`` remote: the applied
    repos themselves are readable inside, never writable); returns the manager's credentials
    (``None``: not root, nothing done). Entries already the manager's are left alone; see
    :func:`hand_over`."""
    who = credentials(paths, MANAGER_NAME)
    if who is None:
        return None
    agent_dir = paths.agent_dir(name)
    posix_acl.grant(paths.root, posix_acl.GROUP, shared_gid(paths))
    posix_acl.grant(paths.agents, posix_acl.GROUP, shared_gid(paths))
    posix_acl.grant(agent_dir, posix_acl.USER, who.uid)
    # its remote ``applied`` (applied/<n>/.git, 0755 inside): the manager reads outcomes there
    posix_acl.grant(paths.applied_root, posix_acl.USER, who.uid)
    hand_over(agent_dir, "config", who)
    return who


def _grant_chain(directory: Path, group: int, paths: StatePaths) -> None:
    """Traverse for ``group`` on ``directory`` and its ancestors up to the state root (exclusive)
    when it is inside it, else up to and including the runtime dir (``directory`` or its parent):
    a runtime dir elsewhere (``/run/hyperhive``) is the daemon's, the directories above it are not."""
    directory.mkdir(mode=0o751, parents=True, exist_ok=True)
    chain = [directory]
    inside = directory.is_relative_to(paths.root)
    parent = directory.parent
    while inside and parent != paths.root and parent.is_relative_to(paths.root):
        chain.append(parent)
        parent = parent.parent
    if not inside and directory.name in ("agents", "manager"):
        chain.append(parent)
    for d in chain:
        if os.lstat(d).st_uid == os.geteuid():
            posix_acl.grant(d, posix_acl.GROUP, group)


def hand_over(parent: Path, entry: str, who: Credentials, *, max_entries: int = CHOWN_MAX_ENTRIES) -> int:
    """Make the tree ``parent/entry`` (an agent-writable directory) owned by ``who``; return how many
    entries changed owner.

    Run as root inside a directory a hostile agent shapes, so: directories are opened one level at a
    time with ``O_NOFOLLOW`` and changed through their fd; a regular file is opened ``O_NOFOLLOW |
    O_NONBLOCK``, checked with ``fstat`` and changed through its fd only when it has **one link** (a
    hard link to ``/etc/shadow`` planted in the tree is never handed over); symlinks, FIFOs,
    sockets and devices are left as they are. Entries already owned by ``who`` are skipped; the walk
    stops after ``max_entries``. ``entry`` itself must be a real directory (``ELOOP``/``ENOTDIR``).
    """
    changed = 0
    top = agentfs.open_dir(parent, entry)
    try:
        changed += _chown_fd(top, who)
        walk = agentfs.Walk(top, max_entries)
        for dfd, child, st in walk:
            if st.st_uid == who.uid and st.st_gid == who.gid:
                continue
            if stat.S_ISDIR(st.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            else:
                continue
            try:
                fd = os.open(child, flags, dir_fd=dfd)
            except OSError:
                continue  # replaced since it was listed
            try:
                again = os.fstat(fd)
                if stat.S_ISDIR(again.st_mode) or (stat.S_ISREG(again.st_mode) and again.st_nlink == 1):
                    changed += _chown_fd(fd, who)
            finally:
                os.close(fd)
        if not walk.complete:
            log.warning("%s: handed over the first %d entries only", parent / entry, max_entries)
    finally:
        os.close(top)
    return changed


def _chown_fd(fd: int, who: Credentials) -> int:
    st = os.fstat(fd)
    if st.st_uid == who.uid and st.st_gid == who.gid:
        return 0
    os.fchown(fd, who.uid, who.gid)
    return 1


# --- can it start at all ----------------------------------------------------------------------------

_SHEBANG_MAX = 256


class NotRunnable(HiveError):
    """The agent's command (or what it needs to start) is out of its uid's reach; names the path."""


def startup_paths(command: tuple[str, ...] | list[str], env: Mapping[str, str]) -> list[Path]:
    """Every path the agent's uid must be able to execute or traverse to start ``command`` with
    ``env`` (blocking; pure file reads as the daemon): the program (looked up on ``env["PATH"]``
    when it has no slash), its ``#!`` interpreter (and what ``/usr/bin/env`` would run), a venv's
    base interpreter directory (``home`` of ``pyvenv.cfg``) and, for Python, the ``PYTHONPATH``
    entries. :class:`NotRunnable` when the program is not found at all."""
    if not command:
        raise NotRunnable("the agent has an empty command")
    search = env.get("PATH", os.defpath)
    program = _which(command[0], search)
    if program is None:
        raise NotRunnable(f"{command[0]!r} is not on the agent's PATH ({search})")
    if not program.exists():
        raise NotRunnable(f"the agent's program {program} does not exist")
    out = [program]
    interpreter = _shebang(program)
    if interpreter:
        head, *rest = interpreter
        if Path(head).name == "env" and rest:
            found = _which(rest[0], search)
            out += [Path(head)] + ([found] if found else [])
        else:
            out.append(Path(head))
    for candidate in out[:]:
        home = _venv_home(candidate)
        if home is not None:
            out.append(home)
        if candidate.name.startswith("python"):
            out += [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p.startswith("/")]
    return list(dict.fromkeys(out))


def refusal(name: str, who: Credentials, report: Mapping[str, str], reach: Sequence[Path]) -> NotRunnable:
    """The :class:`NotRunnable` for a failed reachability probe (run by the shim as ``who``, see
    :func:`hivecore.runtime.shim.unreachable`): ``report`` is ``{"unreachable": PATH}`` (the path
    ``who`` cannot execute or traverse) or ``{"error": TEXT}`` (the probe could not run as ``who``);
    ``reach`` are the agent's own directories (its state and socket dirs), for the hint."""
    if "unreachable" not in report:
        return NotRunnable(
            f'agent "{name}" cannot run as uid {who.uid}: {report.get("error", report)} (is the uid '
            "inside this user namespace's /proc/self/uid_map? choose --agent-uid-base accordingly)"
        )
    bad = report["unreachable"]
    hint = ""
    if Path(bad) in reach:
        hint = " (every directory above the state and runtime dirs must let other users traverse: x)"
    elif bad.startswith(("/root/", "/home/")):
        hint = (
            " (a private home is not reachable by other users; for the bundled harness make the "
            "venv from a Python every user can run, e.g. `/usr/bin/python3 -m venv`)"
        )
    return NotRunnable(
        f'agent "{name}" cannot start as uid {who.uid}: {bad} is not executable (or not reachable) '
        f"by that uid{hint}"
    )


def _which(program: str, search: str) -> Path | None:
    if "/" in program:
        return Path(program)
    for entry in search.split(os.pathsep):
        if not entry:
            continue
        candidate = Path(entry) / program
        try:
            st = candidate.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    return None


def _shebang(program: Path) -> list[str]:
    try:
        with program.open("rb") as f:
            head = f.read(_SHEBANG_MAX)
    except OSError:
        return []
    if not head.startswith(b"#!"):
        return []
    return head[2:].split(b"\n", 1)[0].decode(errors="replace").split()


def _venv_home(program: Path) -> Path | None:
    try:
        text = (program.parent.parent / "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip().startswith("/"):
            return Path(value.strip())
    return None
