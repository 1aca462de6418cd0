"""What the operator sets per agent without a rebuild: its Claude login (``login``/``logout``,
:mod:`hivecore.credentials`) and its own environment values (``agent_env``, :mod:`hivecore.agent_env`).

Each call is one small file write (in a worker thread) and a rescan of the agent's row, so its
``needs_login`` and the ``logged_in``/``needs_login`` helper events follow at once. No secret value
is ever logged or returned: answers carry key names and what logs an agent in.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import attrs
import trio

from hivecore import agent_users, agentfs, credentials
from hivecore.agent_env import AgentEnv
from hivecore.config import Config
from hivecore.errors import Refused
from hivecore.names import validate_name
from hivecore.wire.host import EnvKey, LoginState

log = logging.getLogger(__name__)


class Rescanner(Protocol):
    async def rescan(self, names: Collection[str] | None = ...) -> Mapping[str, Any]: ...


@attrs.define
class AgentSettings:
    config: Config
    env: AgentEnv
    views: Rescanner
    owner: Callable[[str], tuple[int, int] | None] | None = None
    """Who owns an agent's files (uid, gid); default: its uid under the process runtime as root."""

    def _owner_of(self, name: str) -> tuple[int, int] | None:
        if self.owner is not None:
            return self.owner(name)
        if self.config.runtime != "process":
            return None  # a container's root reads its bound /root/.claude
        who = agent_users.credentials(self.config.paths, name)
        return (who.uid, who.gid) if who is not None else None

    # --- login -------------------------------------------------------------------------------------

    async def login(self, name: str, secret: str) -> LoginState:
        """Store ``secret`` as agent ``name``'s login (:data:`~hivecore.credentials.LOGIN_FILE`)."""
        valid = validate_name(name)
        key = await trio.to_thread.run_sync(self._write_login, valid, secret)
        log.info("login: %s logged in (%s set; the value is not logged)", valid, key)
        await self.views.rescan([valid])
        return await trio.to_thread.run_sync(self.login_state, valid)

    def _write_login(self, name: str, secret: str) -> str:
        owner = self._owner_of(name)
        try:
            with agentfs.opened_dir(self.config.paths.agents, name) as agent:
                with contextlib.suppress(FileExistsError):
                    os.mkdir("claude", 0o700, dir_fd=agent)
                with agentfs.opened_dir(self.config.paths.agents, name, "claude") as claude:
                    if owner is not None:
                        st = os.fstat(claude)
                        if (st.st_uid, st.st_gid) != owner:
                            os.fchown(claude, *owner)
                    return credentials.write_login(claude, secret, owner)
        except OSError as exc:
            raise Refused(f"cannot log {name} in: {_why(exc, name)}") from None

    async def logout(self, name: str) -> LoginState:
        """Remove agent ``name``'s credentials files and its own credential env values; the
        answer says whether the agent env file still logs it in."""
        valid = validate_name(name)
        await trio.to_thread.run_sync(self._logout, valid)
        log.info("logout: %s's credentials removed", valid)
        await self.views.rescan([valid])
        return await trio.to_thread.run_sync(self.login_state, valid)

    def _logout(self, name: str) -> None:
        try:
            with agentfs.opened_dir(self.config.paths.agents, name, "claude") as claude:
                credentials.remove_login(claude)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Refused(f"cannot log {name} out: {_why(exc, name)}") from None
        own = self.env.own(name)
        drop = [k for k in (credentials.API_KEY, credentials.OAUTH_TOKEN) if k in own]
        if drop:
            self.env.update(name, {}, drop)

    def login_state(self, name: str) -> LoginState:
        """What logs ``name`` in right now (blocking)."""
        via: list[str] = []
        try:
            with agentfs.opened_dir(self.config.paths.agents, name, "claude") as claude:
                if agentfs.regular_file_exists(claude, credentials.LOGIN_FILE):
                    via.append("login file")
                if agentfs.regular_file_exists(claude, credentials.CLAUDE_CREDENTIALS):
                    via.append("claude credentials")
        except OSError:
            pass
        own = self.env.own(name)
        try:
            shared = self.env.global_env()
        except Exception:
            shared = {}
        for key in (credentials.API_KEY, credentials.OAUTH_TOKEN):
            if own.get(key):
                via.append(f"env {key} (agent)")
            elif shared.get(key):
                via.append(f"env {key} (agent env file)")
        return LoginState(name=name, logged_in=bool(via), via=via)

    # --- environment ---------------------------------------------------------------------------------

    async def set_env(self, name: str, set_: Mapping[str, str], unset: list[str]) -> list[EnvKey]:
        """Change agent ``name``'s own values; its keys afterwards (never values). Takes effect at
        its next start (a restart); a credential key changes its login at once."""
        valid = validate_name(name)
        if set_ or unset:
            keys = await trio.to_thread.run_sync(self.env.update, valid, dict(set_), list(unset))
            log.info("agent env: %s: set %s, unset %s", valid, sorted(set_) or "-", sorted(unset) or "-")
            await self.views.rescan([valid])
        else:
            keys = await trio.to_thread.run_sync(self.env.keys, valid)
        return [EnvKey(key=k, source=s) for k, s in keys]


def _why(exc: OSError, name: str) -> str:
    if exc.errno == errno.ENOENT:
        return f"it has no agent directory (spawn {name} first)"
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "its claude directory is a symlink or not a directory; not following it"
    return exc.strerror or str(exc)
