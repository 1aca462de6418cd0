# This agent's configuration. hive-c0re builds it only after the operator approves a commit:
# commit your change here, then ask for it with request_apply_commit(<agent>, <sha>).
{ ... }:
{
  hive.agent = {
    # the model the harness runs (haiku, sonnet, opus)
    model = "haiku";
  };
}
