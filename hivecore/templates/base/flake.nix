# The hyperhive base flake (seeded by hive-c0re into <state>/base/). No inputs: everything here is
# plain Nix with builtins, so the meta flake evaluates offline and never forces nixpkgs.
{
  description = "hyperhive base: mkAgent";

  outputs = { self }: {
    lib.mkAgent = { name, source, command, identity }:
      let
        m = import (source + "/agent.nix");
        v =
          if builtins.isFunction m
          then m (builtins.mapAttrs (_: _: { }) (builtins.functionArgs m))
          else m;
        module =
          if builtins.isAttrs v then v
          else throw "agent.nix of ${name} must be a NixOS module: an attribute set, or a function returning one";
        settings = (module.hive or { }).agent or { };
        # whom `send`/`ask` may address (null: anyone); the manager and the operator always
        recipients = (module.hyperhive or { }).allowedRecipients or null;
        allowedRecipients =
          if recipients == null || (builtins.isList recipients && builtins.all builtins.isString recipients)
          then recipients
          else throw "agent.nix of ${name}: hyperhive.allowedRecipients must be a list of agent names";
        env = settings.env or { };
        checked =
          if builtins.isAttrs env && builtins.all builtins.isString (builtins.attrValues env)
          then env
          else throw "agent.nix of ${name}: hive.agent.env must be an attribute set of strings";
      in {
        inherit command;
        # the agent's own variables first; hive-c0re's identity (HIVE_*, PATH, PYTHONPATH) wins
        env = checked // identity;
        settings = builtins.removeAttrs settings [ "env" ];
        inherit allowedRecipients;
      };
  };
}
