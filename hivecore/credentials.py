"""An agent's Claude login: what counts as logged in, and the file ``hivectl login`` writes.

An agent is **logged in** when it has credentials:

* ``ANTHROPIC_API_KEY`` or ``CLAUDE_CODE_OAUTH_TOKEN`` (non-empty) in the environment the operator
  gives it (:mod:`hivecore.agent_env`: the ``--agent-env-file`` or its own ``hivectl env`` values), or
* a credentials file in its own Claude config dir ``<state>/agents/<n>/claude/`` (``CLAUDE_CONFIG_DIR``
  under the process runtime; bound to ``/root/.claude`` under the nixos runtime): :data:`LOGIN_FILE`
  (written by ``hivectl login``) or :data:`CLAUDE_CREDENTIALS` (written by an interactive
  ``claude /login`` inside the agent). Only a regular file counts (``lstat``: a symlink does not).

``needs_login`` is exactly "none of these". Anything else Claude Code writes in its config dir
(settings, sessions, debug logs) does not count, so an agent that ran ``claude`` without a key still
needs a login.

:data:`LOGIN_FILE` is JSON ``{"env": {"<KEY>": "<secret>"}}`` with one key: ``CLAUDE_CODE_OAUTH_TOKEN``
for a ``claude setup-token`` token (``sk-ant-oat…``), ``ANTHROPIC_API_KEY`` for anything else. It is
mode 0600, owned by the agent's uid (process runtime, root daemon) so that uid can read it and no
other agent can (the claude dir is the agent's own, 0700). The harness reads it before each turn
(:func:`login_env`), so a login takes effect without a restart.

Stdlib only: the harness imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

LOGIN_FILE = "hive-login.json"
CLAUDE_CREDENTIALS = ".credentials.json"
CREDENTIAL_FILES = (LOGIN_FILE, CLAUDE_CREDENTIALS)
API_KEY = "ANTHROPIC_API_KEY"
OAUTH_TOKEN = "CLAUDE_CODE_OAUTH_TOKEN"
OAUTH_PREFIX = "sk-ant-oat"
MAX_SECRET = 4096
"""Bytes of a key or token (real ones are ~100)."""


class BadSecret(ValueError):
    """The key or token is not usable; the message never repeats it."""


def check_secret(secret: str) -> str:
    """The key or token with surrounding whitespace removed; :class:`BadSecret` when it is empty,
    longer than :data:`MAX_SECRET` bytes, or holds whitespace or control characters inside."""
    value = secret.strip()
    if not value:
        raise BadSecret("no key or token given (pass it on stdin: hivectl login NAME < keyfile)")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SECRET:
        raise BadSecret(f"the key or token is longer than {MAX_SECRET} bytes")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadSecret("the key or token holds whitespace or control characters; give exactly one")
    return value


def env_key_for(secret: str) -> str:
    """Which variable Claude Code reads ``secret`` from."""
    return OAUTH_TOKEN if secret.startswith(OAUTH_PREFIX) else API_KEY


def has_credential_file(claude_dir_fd: int) -> bool:
    """A regular :data:`LOGIN_FILE` or :data:`CLAUDE_CREDENTIALS` in the dir (links not followed)."""
    for name in CREDENTIAL_FILES:
        try:
            st = os.stat(name, dir_fd=claude_dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            return True
    return False


def has_credentials_env(env: Mapping[str, str]) -> bool:
    return bool(env.get(API_KEY) or env.get(OAUTH_TOKEN))


def write_login(claude_dir_fd: int, secret: str, owner: tuple[int, int] | None) -> str:
    """Write :data:`LOGIN_FILE` (0600, ``owner`` uid/gid when given) into the open claude dir,
    atomically and without following any link planted there; returns the variable it sets."""
    key = env_key_for(secret)
    data = json.dumps({"env": {key: secret}}).encode()
    tmp = f".{LOGIN_FILE}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=claude_dir_fd)
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=claude_dir_fd
    )
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, LOGIN_FILE, src_dir_fd=claude_dir_fd, dst_dir_fd=claude_dir_fd)
    return key


def remove_login(claude_dir_fd: int) -> bool:
    """Remove every credentials file (the entries themselves, never a link's target); whether one was."""
    removed = False
    for name in CREDENTIAL_FILES:
        try:
            st = os.stat(name, dir_fd=claude_dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=claude_dir_fd)
            removed = True
    return removed


def login_env(claude_dir: Path) -> dict[str, str]:
    """The variables :data:`LOGIN_FILE` in ``claude_dir`` sets ({} without a usable one): the
    harness adds them to the ``claude`` process's environment before each turn."""
    try:
        fd = os.open(claude_dir / LOGIN_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_SECRET * 4)
    finally:
        os.close(fd)
    try:
        env = json.loads(raw).get("env")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items() if k in (API_KEY, OAUTH_TOKEN) and isinstance(v, str) and v}


def has_login(env: Mapping[str, str], claude_dir: Path) -> bool:
    """The harness's view of :func:`~hivecore.credentials` (module doc): its environment or a
    credentials file in its Claude config dir."""
    if has_credentials_env(env):
        return True
    try:
        fd = os.open(claude_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return has_credential_file(fd)
    finally:
        os.close(fd)
