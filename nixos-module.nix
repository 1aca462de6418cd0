# services.hive-c0re: the hyperhive host daemon (hivecore), with the nixos-container runtime.
#
#   imports = [ ./path/to/hivecore/nixos-module.nix ];
#   services.hive-c0re = { enable = true; adminUsers = [ "mara" ]; };
{ config, lib, pkgs, utils, ... }:

let
  cfg = config.services.hive-c0re;
  inherit (lib) mkEnableOption mkOption mkIf types optionals;

  # what systemd-analyze would accept for MemoryMax= / CPUQuota=, roughly; the daemon checks the
  # values exactly (hivecore/limits.py) and refuses to start on a bad one
  memoryMaxType = types.strMatching "[0-9]+([.][0-9]+)?[KMGT]?|[0-9]+([.][0-9]{1,2})?%|infinity";
  cpuQuotaType = types.strMatching "[0-9]+([.][0-9]{1,2})?%";

  defaultPackage = pkgs.python3Packages.buildPythonApplication {
    pname = "hivecore";
    version = "0.1.0";
    pyproject = true;
    src = lib.cleanSource ./.;
    build-system = [ pkgs.python3Packages.setuptools ];
    dependencies = with pkgs.python3Packages; [ trio attrs cattrs hypercorn quart quart-trio httpx prometheus-client ];
    doCheck = false;
  };

  args = [
    "serve"
    "--state-dir" cfg.stateDir
    "--runtime" "nixos"
    "--dashboard-host" cfg.dashboardHost
    "--dashboard-port" (toString cfg.dashboardPort)
    "--runtime-dir" "/run/hyperhive"
    "--host-socket" "/run/hyperhive/host.sock"
    "--admin-group" cfg.adminGroup
    "--operator-pronouns" cfg.operatorPronouns
    "--crash-watch-interval" (toString cfg.crashWatchInterval)
    "--agent-memory-max" cfg.agentMemoryMax
    "--agent-cpu-quota" cfg.agentCpuQuota
    "--alarm-manager-unread" (toString cfg.alarmManagerUnreadMinutes)
    "--alarm-unacked" (toString cfg.alarmUnackedMinutes)
    "--crash-loop" cfg.crashLoop
    "--alarm-approval-age" (toString cfg.alarmApprovalAgeHours)
    "--retention-days" (toString cfg.retentionDays)
  ]
  ++ builtins.concatMap (url: [ "--notify-url" url ]) cfg.notifyUrls
  ++ optionals (cfg.notifyUrlFile != null) [ "--notify-url-file" cfg.notifyUrlFile ]
  ++ optionals (cfg.notifyOn != null) [ "--notify-on" (builtins.concatStringsSep "," cfg.notifyOn) ]
  ++ optionals (cfg.hyperhiveFlake != null) [ "--hyperhive-flake" cfg.hyperhiveFlake ]
  ++ optionals (cfg.domain != null) [ "--domain" cfg.domain ]
  ++ optionals (cfg.agentEnvFile != null) [ "--agent-env-file" cfg.agentEnvFile ]
  ++ optionals (cfg.metricsListen != null) [ "--metrics-listen" cfg.metricsListen ]
  # the swarm (docs/swarm.md): only with swarmUrl; the daemon refuses the others without it
  ++ optionals (cfg.swarmUrl != null) [ "--swarm" cfg.swarmUrl ]
  ++ optionals (cfg.hiveName != null) [ "--hive-name" cfg.hiveName ]
  ++ optionals (cfg.swarmCredsFile != null) [ "--swarm-creds" cfg.swarmCredsFile ]
  ++ optionals (cfg.swarmTlsCaFile != null) [ "--swarm-tls-ca" cfg.swarmTlsCaFile ]
  ++ optionals (cfg.swarmOperatorHives != [ ]) [
    "--swarm-operator-hives"
    (builtins.concatStringsSep "," cfg.swarmOperatorHives)
  ]
  ++ cfg.extraArgs;
in
{
  options.services.hive-c0re = {
    enable = mkEnableOption "the hive-c0re host daemon of hyperhive";

    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = lib.literalMD "hivecore built from this checkout";
      description = "Package providing `bin/hive-c0re` and `bin/hivectl`.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/hyperhive";
      description = "Agents' state, config repos, the meta flake and the database.";
    };

    dashboardHost = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address the dashboard binds. Logging in needs the operator token (stateDir/operator-token); it speaks plain HTTP, so keep it on loopback or behind the gateway.";
    };

    dashboardPort = mkOption {
      type = types.port;
      default = 7000;
      description = "Dashboard HTTP port.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open dashboardPort in the firewall (only sensible with a non-loopback dashboardHost and a gateway in front).";
    };

    adminGroup = mkOption {
      type = types.str;
      default = "hive-admin";
      description = "Group that may use /run/hyperhive/host.sock (mode 0660). Membership is full control of the hive.";
    };

    adminUsers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "mara" ];
      description = "Users added to adminGroup (they can run hivectl).";
    };

    operatorPronouns = mkOption {
      type = types.str;
      default = "she/her";
      example = "they/them";
      description = "Pronouns agents use for the operator (HIVE_OPERATOR_PRONOUNS); takes effect on the next rebuild.";
    };

    metricsListen = mkOption {
      type = types.nullOr (types.strMatching "(127[.][0-9.]+|\\[::1\\]):[0-9]+");
      default = null;
      example = "127.0.0.1:9464";
      description = ''
        A second `/metrics` listener without auth, on a loopback address only (every local
        process can read it, agent containers on the host's network too). The dashboard's
        `/metrics` takes the operator token as a bearer header. See docs/operations.md.
      '';
    };

    hyperhiveFlake = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Flake reference of hyperhive itself, rendered into the meta flake.";
    };

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Public domain of the gateway; agent URLs become https://<domain>/agent/<name>/.";
    };

    agentEnvFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/hyperhive/agents.env";
      description = ''
        A file of KEY=VALUE lines exported to every agent (ANTHROPIC_BASE_URL for a gateway,
        ANTHROPIC_API_KEY …). A path as a string, never a Nix path: a Nix path would copy the
        secrets into the world-readable store. It must be mode 0600 and owned by root; the daemon
        refuses to start otherwise. Read again at each agent start. See docs/agents.md.
      '';
    };

    crashWatchInterval = mkOption {
      type = types.ints.positive;
      default = 10;
      description = "Seconds between crash_watch polls.";
    };

    openFilesLimit = mkOption {
      type = types.ints.positive;
      default = 65536;
      description = ''
        LimitNOFILE of the unit. Every dashboard client, host.sock client and agent socket holds a
        file descriptor; systemd's default soft limit (1024) is reachable by a busy dashboard.
      '';
    };

    agentMemoryMax = mkOption {
      type = memoryMaxType;
      default = "4G";
      example = "8G";
      description = "MemoryMax= of every agent container (container@h-<name>.service): a size, a percentage of the RAM or `infinity`. Applied on each spawn, start and rebuild.";
    };

    agentCpuQuota = mkOption {
      type = cpuQuotaType;
      default = "200%";
      example = "50%";
      description = "CPUQuota= of every agent container, a percentage of one CPU (`200%` = two CPUs' worth). Applied on each spawn, start and rebuild.";
    };

    alarmManagerUnreadMinutes = mkOption {
      type = types.ints.positive;
      default = 15;
      description = "Alarm when mail to the manager has waited unread this many minutes (docs/operations.md, Alarms).";
    };

    alarmUnackedMinutes = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "Alarm when an agent's oldest unacked message is this many minutes old.";
    };

    crashLoop = mkOption {
      type = types.strMatching "[1-9][0-9]*/[0-9]+([.][0-9]+)?";
      default = "3/10";
      description = "K/MINUTES: K crashes within MINUTES hold an agent stopped (an alarm) until `hivectl release NAME`.";
    };

    alarmApprovalAgeHours = mkOption {
      type = types.ints.positive;
      default = 24;
      description = "Alarm when an approval has been pending this many hours.";
    };

    notifyUrls = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ntfy+https://ntfy.sh/my-hive-topic" "https://hooks.example.org/hive" ];
      description = ''
        Where notifications are POSTed (docs/operations.md, Notifications): http(s)://… gets a JSON
        document, ntfy+http(s)://HOST/TOPIC a plain-text line. The URLs end up in the unit file in
        the world-readable store: a URL carrying a secret token is readable by every local user.
      '';
    };

    notifyUrlFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/hyperhive/notify-urls";
      description = ''
        A file of notification URLs, one a line (for URLs that carry a secret token): a path as a
        string, never a Nix path (that would copy it into the world-readable store). Mode 0600,
        owned by root; the daemon refuses to start otherwise.
      '';
    };

    notifyOn = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [ "approval_added" "alarm_raised" ];
      description = "The notification kinds sent (null: approval_added, question_asked, alarm_raised, container_crash).";
    };

    swarmUrl = mkOption {
      type = types.nullOr (types.strMatching "(nats|tls)://[^/@]+:[0-9]+");
      default = null;
      example = "tls://nats.example.org:4222";
      description = ''
        Join a swarm: the NATS server (JetStream enabled) every hive of the swarm uses. Null: this
        hive is alone. Needs hiveName. See docs/swarm.md.
      '';
    };

    hiveName = mkOption {
      type = types.nullOr (types.strMatching "[a-z][a-z0-9-]{0,8}");
      default = null;
      example = "lab";
      description = ''
        This hive's name in the swarm (the agent-name rules). The first hive to join with it keeps
        it, by the identity key in the state dir (`swarm-identity`); back that file up with the state.
      '';
    };

    swarmCredsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/hyperhive/hive.creds";
      description = ''
        The hive's NATS credentials (a `.creds` file: user JWT and NKey seed). A path as a string,
        never a Nix path (that would copy the secret into the world-readable store).
      '';
    };

    swarmTlsCaFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The CA certificate that signed the NATS server's certificate (TLS to NATS).";
    };

    swarmOperatorHives = mkOption {
      type = types.listOf (types.strMatching "[a-z][a-z0-9-]{0,8}");
      default = [ ];
      example = [ "lab" ];
      description = ''
        Hives of the swarm whose operators may start, stop, restart, rebuild, kill, pause and resume
        this hive's agents and approve or deny its approvals (`--swarm-operator-hives`). Empty: none;
        every such request is refused and audited. See docs/swarm.md (Operator reach).
      '';
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 60;
      description = ''
        WatchdogSec= of the unit: the daemon pings systemd from its event loop every half of it, and
        systemd restarts a daemon whose loop stops answering for this long. 0 turns the watchdog off.
        See docs/operations.md (Readiness).
      '';
    };

    retentionDays = mkOption {
      type = types.ints.unsigned;
      default = 180;
      description = "Days the audit trail and finished jobs are kept (0: forever); the hourly sweep drops older rows, a checkpoint keeps the audit hash chain verifiable. See docs/operations.md.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra arguments for `hive-c0re serve`.";
    };
  };

  config = mkIf cfg.enable {
    boot.enableContainers = true;
    users.groups.${cfg.adminGroup}.members = cfg.adminUsers;
    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = optionals cfg.openFirewall [ cfg.dashboardPort ];

    systemd.services.hive-c0re = {
      description = "hyperhive host daemon (hive-c0re)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = [ pkgs.git config.nix.package pkgs.nixos-container "/run/current-system/sw" ];
      environment.HYPERHIVE_GIT = "${pkgs.git}/bin/git";
      serviceConfig = {
        # systemd parses Exec lines itself (not a shell): it expands %-specifiers and $VAR/${VAR} even
        # inside quotes, so shell quoting is not enough. escapeSystemdExecArgs JSON-quotes each argument
        # and doubles every % and $ (tests/test_nixos_module_eval.py checks the round trip).
        ExecStart = utils.escapeSystemdExecArgs ([ "${cfg.package}/bin/hive-c0re" ] ++ args);
        # READY=1 once every actor serves and host.sock answers; WATCHDOG=1 from the event loop
        # (hivecore/readiness.py); only the daemon itself may notify, never an agent it started
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = cfg.watchdogSec;
        # the first start may lock and evaluate the meta flake before the sockets answer
        TimeoutStartSec = 300;
        Restart = "on-failure";
        RestartSec = 2;
        # containers are not our children; only the daemon itself is stopped
        KillMode = "process";
        TimeoutStopSec = 10;
        LimitNOFILE = cfg.openFilesLimit;
        RuntimeDirectory = "hyperhive";
        RuntimeDirectoryMode = "0751";
        # the agents' socket dirs are bind-mounted into their containers: keep them across restarts
        RuntimeDirectoryPreserve = "yes";
        StateDirectory = "hyperhive";
        StateDirectoryMode = "0750";
      };
    };
  };
}
