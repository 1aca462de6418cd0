"""Who an agent runs as: one uid per agent name when the daemon is root, the invoking user otherwise.

The id range starts at ``--agent-uid-base`` (:data:`~hivecore.limits.DEFAULT_AGENT_UID_BASE`) and
holds :data:`~hivecore.limits.AGENT_ID_COUNT` ids:

* ``base`` is the agents' **shared group**: every agent has it as its one supplementary group, and
  the daemon's shared directories (the state root, ``agents/``, the runtime dir and its ``agents/``)
  grant that group traverse (``x``) and nothing else, through a POSIX ACL.
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
import os
import pwd
import threading
from collections.abc import Mapping
from pathlib import Path

from hivecore.config import StatePaths
from hivecore.errors import HiveError
from hivecore.limits import AGENT_ID_COUNT
from hivecore.names import validate_name
from hivecore.proc import Credentials

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
        for uid in range(base + 1, base + AGENT_ID_COUNT):
            if uid in taken or _known_id(uid):
                continue
            table[name] = uid
            _write(paths.agent_uids, table)
            return uid
    raise NoAgentIds(
        f"no free agent uid in {base + 1}..{base + AGENT_ID_COUNT - 1} (see --agent-uid-base); "
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
        with os.fdopen(fd, "w") as f:
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise NoAgentIds(f"cannot record agent uids in {path}: {exc.strerror or exc}") from None
