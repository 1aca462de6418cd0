"""Daemon configuration (frozen) and the on-disk state layout derived from it."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Literal

import attrs

from hivecore import posix_acl
from hivecore.alarms import Thresholds
from hivecore.limits import DEFAULT_AGENT_UID_BASE, validate_agent_uid_base
from hivecore.names import MANAGER_NAME, child_path, validate_name
from hivecore.nixconfine import DEFAULT_EVAL_MEMORY, DEFAULT_EVAL_TIMEOUT, EvalLimits
from hivecore.swarm import SwarmSettings
from hivecore.unix_listener import resolve_group

log = logging.getLogger(__name__)

DEFAULT_ADMIN_GROUP = "hive-admin"
"""The admin socket's group when ``--admin-group`` is not given and the group exists."""

RuntimeKind = Literal["process", "nixos"]
DashboardAuth = Literal["token", "none"]


def is_loopback(host: str) -> bool:
    """``host`` (a bind address, or the name part of a ``Host`` header) reaches only this machine.

    True for a loopback IP literal (``127.0.0.1``, any of ``127.0.0.0/8``, ``::1``, ``[::1]``) and
    for exactly ``localhost`` (any case); anything else is a name some DNS could answer, so false:
    ``127.0.0.1.evil.example`` is a DNS-rebinding name, not a loopback address.
    """
    if host.lower() == "localhost":
        return True
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(literal).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of a loopback-only listener → ``(host, port)``.

    Raises ``ValueError`` naming the problem: no port, a port outside 0-65535, or a host that is not
    a loopback address (the listener has no auth; ``localhost`` is refused too, since the name
    could resolve elsewhere)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a port from 0 to 65535)")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        loopback = ipaddress.ip_address(literal).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{text!r}: the metrics listener has no auth, so it binds only a loopback address "
            "(127.0.0.1:PORT or [::1]:PORT); scrape the dashboard's /metrics with the token otherwise"
        )
    return literal, int(port)


AUTH_NONE_NIXOS = (
    "--dashboard-auth none is refused with --runtime nixos: every local process, agent containers "
    "on the host's network included, would get the operator's power; use --dashboard-auth token"
)


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
    eval_memory_max: int = DEFAULT_EVAL_MEMORY
    """Bytes of address space one nix evaluation of agent config may map (``RLIMIT_AS``)."""
    eval_timeout: float = DEFAULT_EVAL_TIMEOUT
    """Seconds one nix evaluation (or lock) may take before its process group is killed."""
    agent_uid_base: int = DEFAULT_AGENT_UID_BASE
    """Process runtime as root: agents run as uids ``base+1 …`` (gid the same), all with the
    supplementary group ``base`` (see :mod:`hivecore.agent_users`)."""
    agent_env_file: Path | None = None
    """``KEY=VALUE`` lines exported to every agent (:mod:`hivecore.agent_env`; 0600, root's or ours)."""
    turn_limit: float = 1800.0
    """Seconds a turn may run before its agent is shown stuck (the harness's limit: ``HIVE_TURN_LIMIT``)."""
    stuck_after: float = 600.0
    """Seconds an agent may leave mail unread (not polling, not in a turn) before it is shown stuck."""
    alarm_thresholds: Thresholds = attrs.field(factory=Thresholds)
    """When each alarm is raised (:mod:`hivecore.alarms`; ``--alarm-*`` flags)."""
    alarm_interval: float = 15.0
    """Seconds between alarm evaluations."""
    notify_urls: tuple[str, ...] = ()
    """``--notify-url``: where notifications are POSTed (:mod:`hivecore.webhook`; secrets inside)."""
    notify_on: tuple[str, ...] = ("approval_added", "question_asked", "alarm_raised", "container_crash")
    """``--notify-on``: the notification kinds sent (:data:`hivecore.webhook.KINDS`)."""
    retention_days: float | None = 180.0
    """Days the audit trail and the finished rows of the job journal are kept (the hourly sweep
    drops older ones; ``None``: forever)."""
    dashboard_auth: DashboardAuth = "token"
    """``token``: an operator token (``<state>/operator-token``) gates the dashboard; ``none``: no
    auth, accepted only with a loopback bind."""
    metrics_listen: str | None = None
    """``HOST:PORT`` of a second, unauthenticated ``/metrics`` listener (loopback addresses only:
    :func:`parse_listen`); ``None``: only the dashboard's ``/metrics``, behind its auth."""
    swarm: SwarmSettings | None = None
    """``--swarm`` and friends: join a swarm over NATS JetStream (docs/swarm.md); ``None``: alone."""

    def __attrs_post_init__(self) -> None:
        validate_agent_uid_base(self.agent_uid_base)
        if self.eval_memory_max < 64 << 20 or self.eval_timeout <= 0:
            raise ValueError("the evaluation limits must be at least 64 MiB and a positive time")
        if self.dashboard_auth == "none" and not is_loopback(self.dashboard_host):
            raise ValueError(
                f"--dashboard-auth none needs a loopback --dashboard-host, not {self.dashboard_host!r}"
            )
        if self.dashboard_auth == "none" and self.runtime == "nixos":
            raise ValueError(AUTH_NONE_NIXOS)
        if self.metrics_listen is not None:
            parse_listen(self.metrics_listen)

    @property
    def eval_limits(self) -> EvalLimits:
        return EvalLimits(memory=self.eval_memory_max, time=self.eval_timeout)

    @property
    def paths(self) -> StatePaths:
        root = self.state_dir.absolute()
        return StatePaths(root, socket_group=self._socket_group(root), agent_uid_base=self.agent_uid_base)

    def _socket_group(self, root: Path) -> str | None:
        """The admin group, when the admin socket lives under the state dir (it needs group ``x``)."""
        if self.host_socket is not None and not self.host_socket.absolute().is_relative_to(root):
            return None
        return self.admin_group or DEFAULT_ADMIN_GROUP

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


ROOT_MODE = 0o750
"""The state root and ``run/``: owner, plus the admin socket's group when the socket is inside."""
PRIVATE_MODE = 0o700
"""``db/``, ``agents/``, ``applied/``, ``run/agents/``, ``run/process/``: the daemon's alone (agents
reach their own directories through bind mounts, never through these)."""


@attrs.frozen
class StatePaths:
    """Every path under the state dir, in one place (design brief §5)."""

    root: Path
    socket_group: str | None = attrs.field(default=None, kw_only=True, eq=False)
    """Group that must traverse ``root`` and ``run/`` to reach the admin socket (if it exists)."""
    agent_uid_base: int = attrs.field(default=DEFAULT_AGENT_UID_BASE, kw_only=True, eq=False)
    """The first id of the agents' uid range (see :mod:`hivecore.agent_users`)."""

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
    def released_root(self) -> Path:
        """``released/``: per agent a bare repo holding only applied ``main``'s history (approved
        commits and the template), the meta flake's agent input (``hivecore.meta``)."""
        return self.root / "released"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def operator_token(self) -> Path:
        """The dashboard's operator token (0600; written on the first start)."""
        return self.root / "operator-token"

    @property
    def daemon_dirs(self) -> tuple[Path, ...]:
        """``meta/``, ``base/``, ``deployed/``: the daemon's alone (0700). Agents traverse the state
        root to reach their own dirs, so nothing directly under it may be readable by others."""
        return (self.meta, self.root / "base", self.root / "deployed")

    @property
    def agent_uids(self) -> Path:
        """Which uid each agent name runs as (``hivecore.agent_users``; 0600, never shrinks)."""
        return self.root / "agent-uids.json"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def run_agents(self) -> Path:
        """``run/agents``: the agent sockets' root under the default runtime dir (``<n>/mcp.sock``)."""
        return self.run / "agents"

    @property
    def run_process(self) -> Path:
        """``run/process``: the process runtime's own directory; nothing else writes below it."""
        return self.run / "process"

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

    def released(self, name: str) -> Path:
        return child_path(self.released_root, name)

    def agent_run(self, name: str) -> Path:
        """``run/process/<name>``: the process runtime's files of one agent (pid, spec, logs)."""
        return child_path(self.run_process, name)

    def create_layout(self) -> None:
        """Create the layout, or tighten an existing one: nothing here is for group or others to read.

        The root and ``run/`` are 0750 (group: :attr:`socket_group`, when the admin socket lives in
        ``run/`` and that group exists), the rest 0700. An existing directory of ours that is wider
        is narrowed (logged once per directory); a narrower one is left as it is.
        """
        gid = resolve_group(None, default=self.socket_group) if self.socket_group else None
        _ensure_dir(self.root, ROOT_MODE, gid)
        for d in (self.db.parent, self.agents, self.applied_root, self.released_root, *self.daemon_dirs):
            _ensure_dir(d, PRIVATE_MODE)
        _ensure_dir(self.run, ROOT_MODE, gid)
        _ensure_dir(self.run_agents, PRIVATE_MODE)
        _ensure_dir(self.run_process, PRIVATE_MODE)


def _ensure_dir(path: Path, mode: int, gid: int | None = None) -> None:
    """Create ``path`` with ``mode`` (and group ``gid``), or take the bits ``mode`` lacks off it.

    With ``gid``, the group is set and its bits of ``mode`` granted: the admin group needs them.
    Directories owned by someone else are left alone.
    """
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        created = False
    else:
        created = True
    st = path.stat()
    if st.st_uid != os.geteuid():
        return
    current = posix_acl.effective_mode(path)  # with an ACL the mode's group bits are its mask
    wanted = mode if created or gid is not None else current & mode
    if gid is not None and st.st_gid != gid:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            log.warning(
                "cannot hand %s to group %d (%s); the admin socket may be unreachable", path, gid, exc
            )
    if wanted != current:
        posix_acl.set_mode(path, wanted)  # keeps the agents' traverse grants (hivecore.agent_users)
        if not created:
            log.warning("state dir: %s was %#o; now %#o", path, current, wanted)
