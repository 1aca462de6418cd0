"""Daemon configuration (frozen) and the on-disk state layout derived from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from hivecore.names import MANAGER_NAME, child_path, validate_name

RuntimeKind = Literal["process", "nixos"]


@attrs.frozen
class Config:
    state_dir: Path
    runtime: RuntimeKind = "process"
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 7000
    host_socket: Path | None = None
    """Admin socket path; ``None`` means ``<runtime-dir>/host.sock``."""
    admin_group: str | None = None
    operator_pronouns: str = "she/her"
    hyperhive_flake: str | None = None
    crash_watch_interval: float = 10.0
    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when stopping a process-runtime agent."""
    domain: str | None = None
    """Public domain of the gateway; agent URLs are ``https://<domain>/agent/<name>/``."""
    runtime_dir: Path | None = None
    """Where the sockets live (host.sock, manager/mcp.sock, agents/<n>/mcp.sock); ``None``: <state>/run."""
    ensure_manager: bool = True
    """Create the manager (hm1nd) at startup if it is missing, start it if it is stopped."""
    agent_memory_max: str = "4G"
    """nixos runtime: ``MemoryMax=`` of every agent container (validated by :mod:`hivecore.limits`)."""
    agent_cpu_quota: str = "200%"
    """nixos runtime: ``CPUQuota=`` of every agent container (``200%`` = two CPUs' worth)."""

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.state_dir.absolute())

    @property
    def runtime_path(self) -> Path:
        return self.runtime_dir.absolute() if self.runtime_dir is not None else self.paths.run

    @property
    def host_socket_path(self) -> Path:
        return self.host_socket if self.host_socket is not None else self.runtime_path / "host.sock"

    @property
    def manager_socket_path(self) -> Path:
        return self.runtime_path / "manager" / "mcp.sock"

    @property
    def agent_sockets_root(self) -> Path:
        return self.runtime_path / "agents"

    def agent_socket_dir(self, name: str) -> Path:
        """``<runtime-dir>/agents/<name>`` (validated; a symlink planted there is refused)."""
        return child_path(self.agent_sockets_root, name)

    def agent_socket_path(self, name: str) -> Path:
        """The socket an agent reaches the daemon on (the manager: the manager socket)."""
        if name == MANAGER_NAME:
            return self.manager_socket_path
        return self.agent_sockets_root / validate_name(name) / "mcp.sock"


@attrs.frozen
class StatePaths:
    """Every path under the state dir, in one place (design brief §5)."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "db" / "hive.sqlite"

    @property
    def agents(self) -> Path:
        return self.root / "agents"

    @property
    def applied_root(self) -> Path:
        return self.root / "applied"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def run_agents(self) -> Path:
        return self.run / "agents"

    @property
    def lock_file(self) -> Path:
        return self.run / "hive-c0re.lock"

    def agent_dir(self, name: str) -> Path:
        return child_path(self.agents, name)

    def agent_state(self, name: str) -> Path:
        return self.agent_dir(name) / "state"

    def agent_claude(self, name: str) -> Path:
        return self.agent_dir(name) / "claude"

    def agent_config(self, name: str) -> Path:
        return self.agent_dir(name) / "config"

    def applied(self, name: str) -> Path:
        return child_path(self.applied_root, name)

    def agent_run(self, name: str) -> Path:
        return child_path(self.run_agents, name)

    def create_layout(self) -> None:
        for d in (self.db.parent, self.agents, self.applied_root, self.run_agents):
            d.mkdir(parents=True, exist_ok=True)
