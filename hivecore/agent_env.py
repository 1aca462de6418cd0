"""The agents' backend environment: what the operator gives every agent (``hive-c0re serve
--agent-env-file FILE``) and one agent (``hivectl env NAME KEY=VALUE…``), e.g. ``ANTHROPIC_BASE_URL``
for a gateway or an ``ANTHROPIC_API_KEY``.

Where it lives
    The global file is the operator's: ``KEY=VALUE`` lines (blank lines and ``#`` comments skipped;
    the value is everything after the first ``=``, taken as it is: no quotes, no ``$`` expansion).
    It must be a regular file, mode 0600 (nothing for group or others) and owned by root or the
    daemon's user; anything else is refused with one sentence naming the file and what is wrong.
    It is read again at every agent start, so an edit takes effect on the next (re)start.

    The per-agent values are the daemon's: ``<state>/agent-env.json`` (0600, written atomically),
    ``{"<agent>": {"KEY": "VALUE", …}, …}``, changed only through host.sock (``agent_env``).
    Nothing an agent or the manager writes is ever read as environment: ``agent.nix`` sets only
    literal strings (``hive.agent.env``) and can never name a file for the daemon to read.

How it reaches an agent
    Merged at start, never stored in the runtime's spec: agent.nix's ``env`` < the global file <
    the agent's own values < hive-c0re's identity (``HIVE_*``, ``PATH``, ``PYTHONPATH``,
    ``CLAUDE_CONFIG_DIR``, which no operator key may name). The values are never logged, never in
    ``/api/state``, events or host.sock answers: only key names are listed (:meth:`AgentEnv.keys`).

Checks (:func:`check_key`, :func:`check_value`): a key is a shell variable name (``[A-Za-z_]
[A-Za-z0-9_]*``, at most 128 characters) outside the reserved ones; a value has no NUL, CR or LF
and is at most :data:`MAX_VALUE` bytes. An error message names the key, never the value.

Every function here blocks (small files): call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from hivecore.credentials import has_credentials_env
from hivecore.errors import BadInput, HiveError
from hivecore.secretfile import read_secret_file

log = logging.getLogger(__name__)

ENV_FILE_NAME = "agent-env.json"
MAX_KEY = 128
MAX_VALUE = 32 * 1024
"""Bytes of one value (a key, a token, a URL fit many times over)."""
MAX_KEYS = 256
"""Keys per agent, and in the global file."""
MAX_FILE = 1 << 20
"""Bytes of the global env file read (a bigger one is refused)."""
RESERVED = frozenset({"PATH", "PYTHONPATH", "CLAUDE_CONFIG_DIR"})
RESERVED_PREFIX = "HIVE_"
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvError(HiveError):
    """An env file or an assignment was refused; the message names the key, never a value."""


class EnvInput(BadInput):
    """A malformed key or value on a request (400)."""


def _shown(key: str) -> str:
    return json.dumps(key[:40] + ("…" if len(key) > 40 else ""), ensure_ascii=True)


def check_key(key: str) -> str:
    """``key`` if it is a settable variable name, else :class:`EnvInput`."""
    if not _KEY_RE.fullmatch(key) or len(key) > MAX_KEY:
        raise EnvInput(
            f"not an environment variable name: {_shown(key)} (letters, digits and _, not starting "
            f"with a digit, at most {MAX_KEY} characters)"
        )
    if key in RESERVED or key.startswith(RESERVED_PREFIX):
        raise EnvInput(f"{key} is set by hive-c0re itself (HIVE_*, PATH, PYTHONPATH, CLAUDE_CONFIG_DIR)")
    return key


def check_value(key: str, value: str) -> str:
    """``value`` if it may be exported as ``key``, else :class:`EnvInput` (naming only the key)."""
    if any(c in value for c in "\0\r\n"):
        raise EnvInput(f"the value of {key} holds a NUL, CR or newline; one line of text only")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE:
        raise EnvInput(f"the value of {key} is longer than {MAX_VALUE} bytes")
    return value


def check_assignments(pairs: Mapping[str, str]) -> dict[str, str]:
    if len(pairs) > MAX_KEYS:
        raise EnvInput(f"at most {MAX_KEYS} keys at once")
    return {check_key(k): check_value(k, v) for k, v in pairs.items()}


def parse_env_text(text: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (module doc); :class:`EnvError` naming ``where`` and the line number."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")  # a file written on Windows
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise EnvError(f"{where}, line {number}: not KEY=VALUE (no '=')")
        try:
            out[check_key(key.strip())] = check_value(key.strip(), value)
        except EnvInput as exc:
            raise EnvError(f"{where}, line {number}: {exc}") from None
    if len(out) > MAX_KEYS:
        raise EnvError(f"{where}: more than {MAX_KEYS} keys")
    return out


def load_env_file(path: Path) -> dict[str, str]:
    """Read and check the operator's global env file (module doc); :class:`EnvError` says why not."""
    text = read_secret_file(path, f"agent env file {path}", MAX_FILE, EnvError)
    return parse_env_text(text, f"agent env file {path}")


class AgentEnv:
    """The global file (optional) and the per-agent values (``<state>/agent-env.json``)."""

    def __init__(self, state_dir: Path, global_file: Path | None = None) -> None:
        self.path = state_dir / ENV_FILE_NAME
        self.global_file = global_file
        self._lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------------

    def global_env(self) -> dict[str, str]:
        """The global file's values ({} without one); :class:`EnvError` when it is unusable."""
        return load_env_file(self.global_file) if self.global_file is not None else {}

    def _table(self) -> dict[str, dict[str, str]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise EnvError(f"{self.path}: cannot open it: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE * 8)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError
            return {
                str(n): {str(k): str(v) for k, v in vals.items()}
                for n, vals in data.items()
                if isinstance(vals, dict)
            }
        except (ValueError, TypeError, AttributeError):
            raise EnvError(
                f"{self.path} is unreadable (not the JSON hive-c0re writes); fix or remove it"
            ) from None

    def own(self, name: str) -> dict[str, str]:
        """Agent ``name``'s own values."""
        return dict(self._table().get(name, {}))

    def env_for(self, name: str) -> dict[str, str]:
        """What agent ``name`` gets: the global file's values, overridden by its own."""
        return {**self.global_env(), **self.own(name)}

    def logged_in_by_env(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` the operator's environment gives credentials (one read of each file;
        an unusable global file counts as giving none: it is reported when an agent starts)."""
        try:
            shared = self.global_env()
        except EnvError:
            shared = {}
        try:
            table = self._table()
        except EnvError as exc:
            log.warning("%s", exc)
            table = {}
        return {n for n in names if has_credentials_env({**shared, **table.get(n, {})})}

    def keys(self, name: str) -> list[tuple[str, str]]:
        """``(key, source)`` of every key agent ``name`` gets, sorted; source ``agent`` (its own,
        winning) or ``file`` (the global file). Never values."""
        own = self.own(name)
        try:
            shared = self.global_env()
        except EnvError as exc:
            log.warning("%s", exc)
            shared = {}
        return sorted([(k, "agent") for k in own] + [(k, "file") for k in shared if k not in own])

    # --- writing (host.sock agent_env) -----------------------------------------------------------

    def update(self, name: str, set_: Mapping[str, str], unset: Iterable[str]) -> list[tuple[str, str]]:
        """Set ``set_`` and remove ``unset`` for agent ``name`` (checked first: all or nothing);
        returns :meth:`keys`. Unsetting a key that is not set is not an error."""
        pairs = check_assignments(set_)
        drop = [check_key(k) for k in unset]
        with self._lock:
            table = self._table()
            own = table.setdefault(name, {})
            own.update(pairs)
            for k in drop:
                own.pop(k, None)
            if len(own) > MAX_KEYS:
                raise EnvInput(f"{name} would have more than {MAX_KEYS} keys")
            if not own:
                del table[name]
            self._write(table)
        return self.keys(name)

    def forget(self, name: str) -> None:
        """Drop every value of ``name`` (its state was purged)."""
        with self._lock:
            table = self._table()
            if table.pop(name, None) is not None:
                self._write(table)

    def _write(self, table: Mapping[str, Mapping[str, str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(table, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
