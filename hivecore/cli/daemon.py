"""``hive-c0re``: the daemon's command line (``serve``, and every hivectl verb).

Only ``serve`` imports the daemon (trio, hypercorn, quart …), lazily: ``hive-c0re --help`` and
``hive-c0re VERB`` start as fast as ``hivectl``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hivecore.errors import HiveError
from hivecore.limits import (
    DEFAULT_AGENT_UID_BASE,
    DEFAULT_CPU_QUOTA,
    DEFAULT_EVAL_MEMORY_TEXT,
    DEFAULT_MEMORY_MAX,
    cpu_quota_arg,
    memory_max_arg,
    size_arg,
    validate_agent_uid_base,
    validate_cpu_quota,
    validate_memory_max,
)

if TYPE_CHECKING:
    from hivecore.alarms import Thresholds
    from hivecore.config import Config
    from hivecore.swarm import SwarmSettings

log = logging.getLogger("hive-c0re")

SHUTDOWN_GRACE_SECONDS = 5.0


def _on_nixos() -> bool:
    return Path("/etc/NIXOS").exists()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hive-c0re",
        description="hyperhive host daemon",
        epilog="Every other verb (list, status, spawn, kill, destroy, purge, pending, approve, deny, "
        "request-spawn, …) is a host.sock client, exactly as `hivectl VERB`; see `hivectl --help`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description="Run the hive-c0re daemon until SIGINT/SIGTERM.",
    )
    nixos = _on_nixos()
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/hyperhive") if nixos else Path("hive-state"),
        help="where agents, repos, the database and sockets live "
        "(default: /var/lib/hyperhive on NixOS, else ./hive-state)",
    )
    serve.add_argument(
        "--runtime",
        choices=["process", "nixos"],
        default="nixos" if nixos else "process",
        help="container runtime: 'process' runs agents as supervised local processes "
        "(default off NixOS); 'nixos' uses nixos-container",
    )
    serve.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address the dashboard binds (default 127.0.0.1)",
    )
    serve.add_argument(
        "--dashboard-auth",
        choices=["token", "none"],
        default="token",
        help="'token' (default): log in with the operator token in <state-dir>/operator-token; "
        "'none': no auth, only with a loopback --dashboard-host",
    )
    serve.add_argument("--dashboard-port", type=int, default=7000, help="dashboard port (default 7000)")
    serve.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        help="where the sockets live: host.sock, manager/mcp.sock, agents/<name>/mcp.sock "
        "(default <state-dir>/run; /run/hyperhive under the NixOS module)",
    )
    serve.add_argument(
        "--host-socket", type=Path, default=None, help="admin socket path (default <runtime-dir>/host.sock)"
    )
    serve.add_argument(
        "--admin-group",
        default=None,
        help="group owning the admin socket (default hive-admin when that group exists)",
    )
    serve.add_argument(
        "--operator-pronouns",
        default="she/her",
        help="pronouns agents use for the operator (default she/her)",
    )
    serve.add_argument(
        "--hyperhive-flake",
        default=None,
        help="flake reference of hyperhive itself, rendered into the meta flake",
    )
    serve.add_argument(
        "--crash-watch-interval",
        type=float,
        default=10.0,
        help="seconds between crash_watch polls (default 10)",
    )
    serve.add_argument("--domain", default=None, help="public domain of the gateway, for agent URLs")
    serve.add_argument(
        "--agent-memory-max",
        type=memory_max_arg,
        default=DEFAULT_MEMORY_MAX,
        help="nixos runtime: MemoryMax of each agent container: a size (4G, 512M), a percentage of the "
        f"RAM or 'infinity' (default {DEFAULT_MEMORY_MAX})",
    )
    serve.add_argument(
        "--agent-cpu-quota",
        type=cpu_quota_arg,
        default=DEFAULT_CPU_QUOTA,
        help="nixos runtime: CPUQuota of each agent container, a percentage of one CPU "
        "(default 200%%: two CPUs' worth)",
    )
    serve.add_argument(
        "--eval-memory-max",
        type=size_arg,
        default=DEFAULT_EVAL_MEMORY_TEXT,
        help="address space one nix evaluation of agent config may map: bytes with an optional "
        f"K/M/G suffix (default {DEFAULT_EVAL_MEMORY_TEXT})",
    )
    serve.add_argument(
        "--eval-timeout",
        type=float,
        default=120.0,
        help="seconds one nix evaluation of agent config (or lock of the meta flake) may take (default 120)",
    )
    serve.add_argument(
        "--agent-uid-base",
        type=int,
        # a string default goes through type=int too: a bad HIVE_AGENT_UID_BASE is a usage error
        default=os.environ.get("HIVE_AGENT_UID_BASE", DEFAULT_AGENT_UID_BASE),
        help="process runtime as root: agents run as uids above this one, each its own, with this "
        f"id as their shared group (default $HIVE_AGENT_UID_BASE, else {DEFAULT_AGENT_UID_BASE}; "
        "see docs/security.md)",
    )
    serve.add_argument(
        "--agent-env-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="KEY=VALUE lines exported to every agent (e.g. ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY); "
        "mode 0600, owned by root or the daemon's user; read again at every agent start",
    )
    serve.add_argument(
        "--turn-limit",
        type=float,
        default=1800.0,
        help="seconds a turn may run (given to agents as HIVE_TURN_LIMIT); past it the agent shows "
        "as stuck (default 1800)",
    )
    serve.add_argument(
        "--stuck-after",
        type=float,
        default=600.0,
        help="seconds an agent may leave its mail unread (not polling, not in a turn) before it shows "
        "as stuck (default 600)",
    )
    alarm = serve.add_argument_group("alarms", "when an alarm is raised (docs/operations.md, Alarms)")
    alarm.add_argument(
        "--alarm-manager-unread",
        type=float,
        default=15.0,
        metavar="MINUTES",
        help="mail to the manager waits unread this long (default 15)",
    )
    alarm.add_argument(
        "--alarm-unacked",
        type=float,
        default=30.0,
        metavar="MINUTES",
        help="an agent's oldest unacked message is this old (default 30)",
    )
    alarm.add_argument(
        "--crash-loop",
        default="3/10",
        metavar="K/MINUTES",
        help="K crashes within MINUTES hold an agent stopped until `hivectl release` (default 3/10)",
    )
    alarm.add_argument(
        "--alarm-approval-age",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="an approval has been pending this long (default 24)",
    )
    alarm.add_argument(
        "--alarm-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="seconds between alarm evaluations (default 15)",
    )
    notify = serve.add_argument_group("notifications", "who gets told (docs/operations.md, Notifications)")
    notify.add_argument(
        "--notify-url",
        action="append",
        default=[],
        metavar="URL",
        help="POST notifications here (repeatable): http(s)://… gets a JSON document, "
        "ntfy+http(s)://HOST/TOPIC a plain-text line for an ntfy-style topic",
    )
    notify.add_argument(
        "--notify-url-file",
        metavar="FILE",
        default=None,
        help="more --notify-url values, one a line (# comments): for URLs that carry a secret, which "
        "the command line would show to every local user; mode 0600, root's or the daemon's",
    )
    notify.add_argument(
        "--notify-on",
        action="append",
        default=[],
        metavar="KINDS",
        help="comma-separated kinds to notify (repeatable): approval_added, question_asked, alarm_raised, "
        "container_crash, alarm_cleared, approval_resolved (default: the first four)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=None,
        help="also serve /metrics without auth on this loopback address (127.0.0.1:PORT or "
        "[::1]:PORT; any local process can read it); the dashboard's /metrics needs the token",
    )
    swarm = serve.add_argument_group("swarm", "join hives on other hosts over NATS JetStream (docs/swarm.md)")
    swarm.add_argument(
        "--swarm",
        metavar="URL",
        default=None,
        help="the NATS server (JetStream enabled): nats://HOST:PORT or tls://HOST:PORT; without it "
        "this hive is alone and nothing below applies",
    )
    swarm.add_argument(
        "--hive-name",
        default=None,
        help="this hive's name in the swarm (the agent-name rules; unique: the first hive to join "
        "with it keeps it, by the identity key in <state-dir>/swarm-identity)",
    )
    swarm.add_argument(
        "--swarm-creds",
        type=Path,
        default=None,
        metavar="FILE",
        help="this hive's NATS credentials (mode 0600): a .creds file (nsc's user JWT and nkey seed), "
        "a user nkey seed (one line SU...) or one line user:password (docs/swarm.md)",
    )
    swarm.add_argument(
        "--swarm-tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="the CA of the NATS server's certificate",
    )
    swarm.add_argument(
        "--swarm-heartbeat-ttl",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a hive silent this long shows unreachable (default 10; the first hive to create the "
        "heartbeat bucket sets it for the swarm)",
    )
    swarm.add_argument(
        "--swarm-operator-hives",
        default=None,
        metavar="A,B",
        help="hives whose operators may start, stop, restart, rebuild, kill, pause and resume this "
        "hive's agents and approve or deny its approvals (comma-separated hive names; default none)",
    )
    serve.add_argument(
        "--retention-days",
        type=float,
        default=180.0,
        help="days the audit trail and finished jobs are kept; the hourly sweep drops older rows "
        "(0: keep forever; default 180)",
    )
    serve.add_argument(
        "--no-ensure-manager",
        dest="ensure_manager",
        action="store_false",
        help="do not create/start the manager (hm1nd) at startup (tests, debugging)",
    )
    serve.add_argument(
        "--log-level",
        default=os.environ.get("HIVE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    login = sub.add_parser(
        "login-url",
        help="print a dashboard login URL (reads the operator token; the daemon never logs it)",
        description="Print http://…/login#token=… for the operator who can read <state-dir>/operator-token "
        "(the token sits in the URL's fragment, which a browser never sends to a server).",
    )
    login.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/hyperhive") if nixos else Path("hive-state"),
        help="the daemon's --state-dir (default: /var/lib/hyperhive on NixOS, else ./hive-state)",
    )
    login.add_argument(
        "--url",
        default="http://127.0.0.1:7000",
        help="the dashboard's address (default http://127.0.0.1:7000)",
    )
    perms = sub.add_parser(
        "swarm-permissions",
        help="print the NATS permissions of one hive's user (docs/swarm.md, production setup)",
        description="Print what hive NAME's NATS user may publish and subscribe to: by default one entry "
        "for an account's users list in nats-server.conf, with --nsc the 'nsc edit user' command.",
    )
    perms.add_argument("name", metavar="NAME", help="the hive's --hive-name")
    how = perms.add_mutually_exclusive_group()
    how.add_argument(
        "--nkey", metavar="PUBLIC_KEY", help="the user logs in with this nkey (U...), not a password"
    )
    how.add_argument(
        "--nsc", metavar="ACCOUNT", nargs="?", const="HIVES", help="print the nsc command instead"
    )
    return parser


def login_url(state_dir: Path, base_url: str) -> str:
    """``<base_url>/login#token=<token>`` from ``<state_dir>/operator-token`` (never through a symlink).

    Raises :class:`HiveError` naming the file when it cannot be read (missing: the daemon writes it
    on its first start; not permitted: run as the operator, root under the NixOS module).
    """
    path = state_dir / "operator-token"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise HiveError(
            f"cannot read the operator token {path}: {exc.strerror or exc} (the daemon writes it on its "
            "first start; only the operator who can read it gets a login URL)"
        ) from None
    with os.fdopen(fd, "rb") as f:
        token = f.read(4096).decode("utf-8", "replace").strip()
    if not token or not token.isascii() or not token.isprintable():
        raise HiveError(f"the operator token {path} is malformed; delete it and restart the daemon")
    return f"{base_url.rstrip('/')}/login#token={token}"


def _default_group() -> str | None:
    import grp

    try:
        grp.getgrnam("hive-admin")
    except KeyError:
        return None
    return "hive-admin"


def config_from_args(args: argparse.Namespace) -> Config:
    from hivecore.config import AUTH_NONE_NIXOS, Config, is_loopback

    if not 0 <= args.dashboard_port <= 65535:
        raise HiveError(f"--dashboard-port {args.dashboard_port} is not a port number")
    if args.eval_timeout <= 0:
        raise HiveError("--eval-timeout must be positive")
    if args.crash_watch_interval <= 0:
        raise HiveError("--crash-watch-interval must be positive")
    if args.dashboard_auth == "none" and not is_loopback(args.dashboard_host):
        raise HiveError(
            f"--dashboard-auth none is only allowed with a loopback --dashboard-host, not "
            f"{args.dashboard_host!r}: anyone who reaches the port could run every operator action"
        )
    if args.dashboard_auth == "none" and args.runtime == "nixos":
        raise HiveError(AUTH_NONE_NIXOS)
    if not args.turn_limit > 0 or not args.stuck_after > 0:
        raise HiveError("--turn-limit and --stuck-after must be positive numbers of seconds")
    thresholds = alarm_thresholds(args)
    notify_urls, notify_on = notify_settings(args)
    if args.metrics_listen is not None:
        from hivecore.config import parse_listen

        try:
            parse_listen(args.metrics_listen)
        except ValueError as exc:
            raise HiveError(f"--metrics-listen {exc}") from None
    swarm = swarm_settings(args)
    if not 0 <= args.retention_days < 1e6:
        raise HiveError("--retention-days is a number of days from 0 (keep forever) up")
    env_file = args.agent_env_file.absolute() if args.agent_env_file else None
    if env_file is not None:
        from hivecore.agent_env import load_env_file

        load_env_file(env_file)  # refuse to start with an unusable file (EnvError names the problem)
    return Config(
        state_dir=args.state_dir.absolute(),
        runtime=args.runtime,
        dashboard_host=args.dashboard_host,
        dashboard_port=args.dashboard_port,
        host_socket=args.host_socket.absolute() if args.host_socket else None,
        runtime_dir=args.runtime_dir.absolute() if args.runtime_dir else None,
        admin_group=args.admin_group if args.admin_group is not None else _default_group(),
        operator_pronouns=args.operator_pronouns,
        hyperhive_flake=args.hyperhive_flake,
        crash_watch_interval=args.crash_watch_interval,
        domain=args.domain,
        ensure_manager=args.ensure_manager,
        agent_memory_max=validate_memory_max(args.agent_memory_max),
        agent_cpu_quota=validate_cpu_quota(args.agent_cpu_quota),
        dashboard_auth=args.dashboard_auth,
        agent_uid_base=validate_agent_uid_base(args.agent_uid_base),
        eval_memory_max=args.eval_memory_max,
        eval_timeout=args.eval_timeout,
        agent_env_file=env_file,
        turn_limit=args.turn_limit,
        stuck_after=args.stuck_after,
        metrics_listen=args.metrics_listen,
        alarm_thresholds=thresholds,
        alarm_interval=args.alarm_interval,
        notify_urls=notify_urls,
        notify_on=notify_on,
        swarm=swarm,
        retention_days=args.retention_days or None,
    )


def swarm_settings(args: argparse.Namespace) -> SwarmSettings | None:
    """``--swarm`` and friends, checked (:class:`HiveError` naming the flag); None without ``--swarm``."""
    from hivecore.swarm import SwarmSettings, validate_hive_name
    from hivecore.swarm_ops import operator_hives

    if args.swarm is None:
        if args.hive_name or args.swarm_creds or args.swarm_tls_ca or args.swarm_operator_hives:
            raise HiveError(
                "--hive-name, --swarm-creds, --swarm-tls-ca and --swarm-operator-hives need --swarm "
                "nats://HOST:PORT"
            )
        return None
    if not args.hive_name:
        raise HiveError("--swarm needs --hive-name NAME (this hive's name in the swarm)")
    try:
        validate_hive_name(args.hive_name)
    except HiveError as exc:
        raise HiveError(f"--hive-name: {exc}") from None
    for flag, path in (("--swarm-creds", args.swarm_creds), ("--swarm-tls-ca", args.swarm_tls_ca)):
        if path is not None and not path.is_file():
            raise HiveError(f"{flag} {path}: no such file")
    if args.swarm_creds is not None:
        from hivecore.swarm import load_credentials

        load_credentials(args.swarm_creds)  # refused at start, naming the flag, not at the first join
    return SwarmSettings(
        url=args.swarm,
        hive_name=args.hive_name,
        creds=args.swarm_creds.absolute() if args.swarm_creds else None,
        tls_ca=args.swarm_tls_ca.absolute() if args.swarm_tls_ca else None,
        heartbeat_ttl=args.swarm_heartbeat_ttl,
        operator_hives=operator_hives(args.swarm_operator_hives),
    )


def notify_settings(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``--notify-url`` and ``--notify-on``, checked (:class:`HiveError` naming the flag)."""
    from hivecore import webhook

    for url in args.notify_url:
        webhook.parse_endpoint(url)
    from_file = webhook.read_url_file(args.notify_url_file) if args.notify_url_file else []
    kinds = webhook.parse_kinds(args.notify_on) if args.notify_on else frozenset(webhook.DEFAULT_KINDS)
    return (*args.notify_url, *from_file), tuple(sorted(kinds))


def alarm_thresholds(args: argparse.Namespace) -> Thresholds:
    """The ``--alarm-*`` and ``--crash-loop`` flags as :class:`~hivecore.alarms.Thresholds`
    (:class:`HiveError` naming the flag on a bad value)."""
    from hivecore.alarms import Thresholds

    for flag, value in (
        ("--alarm-manager-unread", args.alarm_manager_unread),
        ("--alarm-unacked", args.alarm_unacked),
        ("--alarm-approval-age", args.alarm_approval_age),
        ("--alarm-interval", args.alarm_interval),
    ):
        if not value > 0:
            raise HiveError(f"{flag} must be a positive number, not {value}")
    crashes, _, minutes = str(args.crash_loop).partition("/")
    try:
        k, m = int(crashes), float(minutes)
    except ValueError:
        k, m = 0, 0.0
    if k < 1 or not m > 0:
        raise HiveError(f"--crash-loop takes K/MINUTES (e.g. 3/10), not {args.crash_loop!r}")
    return Thresholds(
        manager_unread=args.alarm_manager_unread * 60,
        oldest_unacked=args.alarm_unacked * 60,
        crash_loop_crashes=k,
        crash_loop_window=m * 60,
        approval_age=args.alarm_approval_age * 3600,
    )


async def serve(config: Config) -> None:
    """Run the daemon; the first SIGINT/SIGTERM cancels it (bounded by a 5 s grace period)."""
    import signal

    import trio

    from hivecore import readiness
    from hivecore.daemon import limit_worker_threads
    from hivecore.daemon import main as daemon_main
    from hivecore.fdlimit import raise_nofile_limit
    from hivecore.runtime.process import seal_inherited_fds
    from hivecore.sdnotify import Notifier, take_environment
    from hivecore.shutdown import exit_watchdog

    # systemd's variables are taken out of the environment first: no child inherits them
    notifier = Notifier(take_environment())
    limit_worker_threads()  # the daemon alone in this process: see its docstring
    raise_nofile_limit()  # agents' connections stop at a reserve below it (hivecore.fdlimit)
    if sealed := seal_inherited_fds():  # no child (agent, git, nix) gets what our parent left open
        log.info("fds inherited from the parent, now closed on exec: %s", ", ".join(map(str, sealed)))
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                from web.app import daemon_app

                daemon = await nursery.start(partial(daemon_main, config, web_factory=daemon_app))
                nursery.start_soon(
                    partial(
                        readiness.run,
                        notifier,
                        str(config.host_socket_path),
                        daemon.status_summary,
                        daemon.healthy,
                    ),
                    name="readiness",
                )
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    notifier.stopping(f"stopping ({signal.Signals(signum).name})")
                    # whatever is stuck, the process is gone within EXIT_LIMIT (docs/install.md)
                    exit_watchdog()
                    nursery.cancel_scope.cancel(reason=f"received {signal.Signals(signum).name}")
                    # if a task refuses to die (it should not), do not hang past the grace period
                    nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_SECONDS
                    break
    finally:
        notifier.stopping()  # a second STOPPING=1 after a signal's is harmless; a crash needs one
        notifier.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in ("serve", "login-url", "swarm-permissions"):
        # the original's admin client lives in the same binary: `hive-c0re list`, `hive-c0re spawn x`
        from hivecore.cli import hivectl

        return hivectl.main(argv)
    args = build_parser().parse_args(argv)
    if args.command == "swarm-permissions":
        from hivecore import swarm_perms

        try:
            if args.nsc is not None:
                print(swarm_perms.nsc_command(args.name, args.nsc))
            else:
                print(swarm_perms.server_user(args.name, nkey=args.nkey))
        except HiveError as exc:
            print(f"hive-c0re: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "login-url":
        try:
            print(login_url(args.state_dir, args.url))
        except HiveError as exc:
            print(f"hive-c0re: {exc}", file=sys.stderr)
            return 1
        return 0
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config: Config | None = None
    try:
        config = config_from_args(args)
        import trio

        from hivecore.readiness import install_wedge_hook

        install_wedge_hook()

        trio.run(serve, config)
    except (HiveError, OSError, BaseExceptionGroup) as exc:
        failures = [_startup_failure(leaf, config) for leaf in _leaves(exc)]
        if None in failures:
            raise
        for message in dict.fromkeys(failures):  # once each, in order
            print(f"hive-c0re: {message}", file=sys.stderr)
        return 1
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _startup_failure(exc: BaseException, config: Config | None) -> str | None:
    """One line for a failure that is the operator's to fix (a flag), else None (a bug: traceback)."""
    if isinstance(exc, HiveError):
        path = getattr(exc, "path", None)  # hivecore.sockets.server.ListenError
        if config is not None and path is not None and path == config.host_socket_path:
            return f"{exc}; choose another path with --host-socket"
        return str(exc)
    frames = [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]
    from_web = any("hypercorn" in f.co_filename and f.co_name.endswith("create_sockets") for f in frames)
    if config is None or not isinstance(exc, OSError) or not from_web:
        return None
    where = f"{config.dashboard_host}:{config.dashboard_port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"dashboard port {config.dashboard_port} is already in use ({where}); "
            "choose another with --dashboard-port (0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to bind the dashboard to {where} (ports below 1024 need privileges); "
            "choose another with --dashboard-port"
        )
    reason = exc.strerror or str(exc)
    return f"cannot bind the dashboard to {where}: {reason}; check --dashboard-host and --dashboard-port"


if __name__ == "__main__":
    sys.exit(main())
