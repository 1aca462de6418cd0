"""Per-hive NATS permissions (docs/swarm.md "Production setup"): the one list of subjects a hive's
NATS user may publish and subscribe to, and its renderings (a ``nats-server.conf`` user entry, or
the ``nsc edit user`` flags). ``hive-c0re swarm-permissions NAME`` prints them; the tests start a
server with exactly this list (tests/nats_server.py). Pure: no I/O.

What hive ``X`` may do, and nothing else (subjects of nats-server 2.9's JetStream API):

- write its own keys: ``$KV.hive_claims.X``, ``$KV.hive_heartbeats.X``, ``$KV.hive_agents.X.>``;
- send as itself: mail ``hive.*.mail.X``, operator requests ``hive.*.ops.X``, events ``hive.X.events.>``;
- read the swarm's buckets (watch and get: they are shared by design) and the events stream;
- create the swarm's streams (JetStream refuses a create that differs from an existing stream, so
  this never changes one; an administrator may create them first) but never update, purge or
  delete a stream or a message;
- create, read, fetch from and ack only its own mail consumer ``mail-X`` with the filter
  ``hive.X.mail.*`` (the create subject names both; nats-server checks the filter it names);
- receive on its own reply inboxes ``_INBOX.X.>`` (the client's ``inbox_prefix``) and its operator
  requests ``hive.X.ops.*``, and answer a request it received (``allow_responses``), not publish to
  another hive's inbox.
"""

from __future__ import annotations

import json

import attrs

from hivecore import swarm as sw
from hivecore import swarm_mail as sm
from hivecore import swarm_view as sv

EVENTS_STREAM = sv.STREAM
"""Dashboard events per hive (``hive.<from>.events.<kind>``; issue 20 item 5)."""
API = "$JS.API"


@attrs.frozen
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True
    """A hive may answer the requests it received (one reply each, NATS's default)."""


def inbox_prefix(hive: str) -> str:
    """The reply-inbox prefix of ``hive``'s connection (nats-py ``inbox_prefix``): ``_INBOX.<hive>``."""
    return f"_INBOX.{sw.validate_hive_name(hive)}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def permissions(hive: str) -> Permissions:
    """Everything ``hive``'s NATS user needs (the module docstring says why each); :class:`InvalidName`
    for a bad name."""
    x = sw.validate_hive_name(hive)
    buckets = (sw.CLAIMS_BUCKET, sw.HEARTBEATS_BUCKET, sw.AGENTS_BUCKET)
    streams = [kv_stream(b) for b in buckets] + [sm.STREAM, EVENTS_STREAM]
    publish = [
        f"$KV.{sw.CLAIMS_BUCKET}.{x}",
        f"$KV.{sw.HEARTBEATS_BUCKET}.{x}",
        f"$KV.{sw.AGENTS_BUCKET}.{x}.>",
        sm.subject("*", x),
        f"hive.*.ops.{x}",
        f"hive.{x}.events.>",
    ]
    for stream in streams:
        publish += [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.CREATE.{stream}"]
    for stream in [kv_stream(b) for b in buckets] + [EVENTS_STREAM]:
        publish += [
            f"{API}.CONSUMER.CREATE.{stream}",  # an ephemeral reader (a watch)
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.STREAM.MSG.GET.{stream}",
            f"$JS.FC.{stream}.>",  # flow-control answers of an ordered consumer
        ]
    mail = sm.consumer_name(x)
    publish += [
        f"{API}.CONSUMER.CREATE.{sm.STREAM}.{mail}.{sm.inbox_filter(x)}",
        f"{API}.CONSUMER.INFO.{sm.STREAM}.{mail}",
        f"{API}.CONSUMER.DELETE.{sm.STREAM}.{mail}",
        f"{API}.CONSUMER.MSG.NEXT.{sm.STREAM}.{mail}",
        f"$JS.ACK.{sm.STREAM}.{mail}.>",
    ]
    subscribe = [f"{inbox_prefix(x)}.>", f"hive.{x}.ops.*"]
    return Permissions(tuple(publish), tuple(subscribe))


def _quoted(items: tuple[str, ...], indent: str) -> str:
    return "\n".join(f"{indent}{json.dumps(s)}" for s in items)


def server_user(hive: str, *, password: str | None = None, nkey: str | None = None) -> str:
    """One entry of an account's ``users: [...]`` in ``nats-server.conf``: ``user``/``password``
    (``password`` None: a ``$<HIVE>_NATS_PASSWORD`` variable from the server's environment) or
    ``nkey`` (a public user nkey, ``U…``), with :func:`permissions`."""
    perms = permissions(hive)
    if nkey is not None:
        who = f"nkey: {json.dumps(nkey)}"
    else:
        variable = f"${hive.upper().replace('-', '_')}_NATS_PASSWORD"
        secret = json.dumps(password) if password is not None else variable
        who = f"user: {json.dumps(hive)}, password: {secret}"
    return (
        f"{{ {who}, permissions: {{\n"
        f"    publish: {{ allow: [\n{_quoted(perms.publish, '      ')}\n    ] }}\n"
        f"    subscribe: {{ allow: [\n{_quoted(perms.subscribe, '      ')}\n    ] }}\n"
        f"    allow_responses: {'true' if perms.allow_responses else 'false'}\n"
        "} }"
    )


def nsc_command(hive: str, account: str = "HIVES") -> str:
    """The ``nsc edit user`` command that gives an existing nsc user ``hive`` :func:`permissions`."""
    perms = permissions(hive)
    parts = [f"nsc edit user -a {account} -n {hive}"]
    parts += [f"--allow-pub '{s}'" for s in perms.publish]
    parts += [f"--allow-sub '{s}'" for s in perms.subscribe]
    if perms.allow_responses:
        parts.append("--allow-pub-response 1")
    return " \\\n    ".join(parts)
