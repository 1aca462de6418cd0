"""The swarm's pure half (docs/swarm.md): hive names, the identity key, the key-value layout, the
records each hive writes, and who is reachable. No I/O beyond the identity file; no NATS import
(:mod:`actors.swarm_link` is the actor that talks to NATS).

Key-value buckets (JetStream; one value per key, history 1):

=====================  =======================  ==============================================
bucket                 key                      value
=====================  =======================  ==============================================
``hive_claims``        ``<hive>``               :class:`Claim` (no TTL: a name stays claimed)
``hive_heartbeats``    ``<hive>``               :class:`Heartbeat` (bucket TTL = heartbeat TTL)
``hive_agents``        ``<hive>.<agent>``       :class:`SwarmAgent` (deleted with the agent)
=====================  =======================  ==============================================
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from hivecore.errors import HiveError, InvalidName
from hivecore.names import CONTAINER_PREFIX, MAX_AGENT_NAME
from hivecore.wire.converter import converter

CLAIMS_BUCKET = "hive_claims"
HEARTBEATS_BUCKET = "hive_heartbeats"
AGENTS_BUCKET = "hive_agents"
DEFAULT_HEARTBEAT_TTL = 10.0
"""Seconds a hive stays reachable after its last heartbeat (the heartbeat bucket's TTL)."""
MIN_HEARTBEAT_TTL = 1.0
IDENTITY_FILE = "swarm-identity"
"""``<state>/swarm-identity``: this hive's secret (0600); its SHA-256 is what the claim shows."""

LinkState = Literal["off", "connecting", "connected", "reconnecting", "refused"]

_HIVE_RE = re.compile(r"[a-z][a-z0-9-]{0,8}")


class SwarmRefused(HiveError):
    """The swarm refused this hive (its name is claimed by another hive)."""


def validate_hive_name(name: object) -> str:
    """``name`` if it is a valid hive name (the agent-name rules: a lowercase letter, then up to 8 of
    ``a-z 0-9 -``, not starting ``h-``), else :class:`InvalidName`."""
    if not isinstance(name, str) or not _HIVE_RE.fullmatch(name):
        shown = repr(name)[:42]
        raise InvalidName(
            f"invalid hive name {shown}: use 1-{MAX_AGENT_NAME} characters, a lowercase letter followed "
            "by lowercase letters, digits or '-'"
        )
    if name.startswith(CONTAINER_PREFIX):
        raise InvalidName(f"invalid hive name {name!r}: it must not start with {CONTAINER_PREFIX!r}")
    return name


def validate_server_url(url: str) -> str:
    """``nats://HOST:PORT`` or ``tls://HOST:PORT`` (no credentials in it: use ``--swarm-creds``),
    else :class:`HiveError` naming the problem."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HiveError(f"--swarm {url!r}: {exc}") from None
    if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
        raise HiveError(f"--swarm {url!r} is not nats://HOST:PORT (or tls://HOST:PORT)")
    if parts.username or parts.password:
        raise HiveError("--swarm: put no credentials in the URL (they show in ps); use --swarm-creds FILE")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise HiveError(f"--swarm {url!r}: only nats://HOST:PORT, nothing after the port")
    return url


@attrs.frozen(kw_only=True)
class SwarmSettings:
    """``--swarm`` and friends (``None`` on the Config: not in a swarm)."""

    url: str = attrs.field(validator=lambda _i, _a, v: validate_server_url(v))
    hive_name: str = attrs.field(validator=lambda _i, _a, v: validate_hive_name(v))
    creds: Path | None = None
    """A NATS ``.creds`` file (user JWT and NKey seed)."""
    tls_ca: Path | None = None
    """The CA that signed the NATS server's certificate (then the connection is TLS)."""
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL
    operator_hives: tuple[str, ...] = attrs.field(
        default=(), validator=lambda _i, _a, v: [validate_hive_name(n) for n in v]
    )
    """``--swarm-operator-hives``: hives whose operators may run operator verbs here (docs/swarm.md)."""

    def __attrs_post_init__(self) -> None:
        if not self.heartbeat_ttl >= MIN_HEARTBEAT_TTL:
            raise HiveError(f"--swarm-heartbeat-ttl must be at least {MIN_HEARTBEAT_TTL:g} seconds")


def explain_connect_error(text: str, settings: SwarmSettings) -> str:
    """What an operator reads when nats-py reports ``text`` while the link is not connected:
    the error with the flag to look at (``--swarm-creds``, ``--swarm-tls-ca``, ``--swarm``); an
    error this does not recognise is returned as it is."""
    low = text.lower()
    if "authorization violation" in low:
        who = "this hive: no --swarm-creds"
        if settings.creds is not None:
            who = f"the user in --swarm-creds {settings.creds}"
        return (
            f"NATS refused {who} ({text}); check the user and password (or nkey) against the "
            "server's users (docs/swarm.md, production setup)"
        )
    if "certificate verify failed" in low or "certificate_verify_failed" in low:
        if settings.tls_ca is None:
            hint = "the server speaks TLS: pass the CA that signed its certificate with --swarm-tls-ca FILE"
        else:
            hint = (
                f"--swarm-tls-ca {settings.tls_ca} is not the CA that signed it, or the certificate does "
                f"not name the host in --swarm {settings.url}"
            )
        return f"the NATS server's TLS certificate is not trusted ({text}); {hint}"
    if "connect call failed" in low or "connection refused" in low:
        return f"nothing accepts connections at {settings.url} ({text}); is nats-server running there?"
    return text


# --- credentials -------------------------------------------------------------------------------------

MAX_CREDS_BYTES = 16 * 1024
_SEED_RE = re.compile(r"SU[A-Z2-7]{56}")
_USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@attrs.frozen(kw_only=True)
class NatsCredentials:
    """How the link authenticates (``--swarm-creds FILE``; docs/swarm.md): exactly one of a NATS
    ``.creds`` file (user JWT and nkey seed, nsc's), an nkey seed, or a user and password."""

    creds_file: Path | None = None
    nkey_seed: str | None = attrs.field(default=None, repr=False)
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (secrets stay out of argv and the URL)."""
        if self.creds_file is not None:
            return {"user_credentials": str(self.creds_file)}
        if self.nkey_seed is not None:
            return {"nkeys_seed_str": self.nkey_seed}
        return {"user": self.user, "password": self.password}


def parse_credentials(text: str, path: Path) -> NatsCredentials:
    """What ``--swarm-creds`` holds: a ``.creds`` file (``-----BEGIN NATS USER JWT-----`` …), a user
    nkey seed (one line ``SU…``) or one line ``user:password``; else :class:`HiveError` naming the file
    (never its content)."""
    if "-----BEGIN NATS USER JWT-----" in text and "-----BEGIN USER NKEY SEED-----" in text:
        return NatsCredentials(creds_file=path)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        line = lines[0]
        if _SEED_RE.fullmatch(line):
            return NatsCredentials(nkey_seed=line)
        user, sep, password = line.partition(":")
        if sep and _USER_RE.fullmatch(user) and password and not any(c.isspace() for c in password):
            return NatsCredentials(user=user, password=password)
    raise HiveError(
        f"--swarm-creds {path}: neither a NATS .creds file (nsc generate creds), a user nkey seed "
        "(one line SU…) nor one line user:password"
    )


def load_credentials(path: Path) -> NatsCredentials:
    """Read and parse ``--swarm-creds`` (:func:`hivecore.secretfile.read_secret_file`'s rules: a
    regular file, root's or the daemon's, mode 0600, at most 16 KiB); :class:`HiveError`. Blocking."""
    from hivecore.secretfile import read_secret_file

    text = read_secret_file(path, f"--swarm-creds {path}", MAX_CREDS_BYTES, HiveError)
    return parse_credentials(text, path)


# --- identity ----------------------------------------------------------------------------------------


def load_identity(state_root: Path) -> str:
    """This hive's identity fingerprint: SHA-256 (hex) of ``<state>/swarm-identity``, which is created
    (32 random bytes, hex, 0600) on first use. Blocking. A file that is not ours to trust (a symlink,
    unreadable, malformed) is :class:`HiveError`."""
    return fingerprint(load_secret(state_root))


def envelope_id(me: str, secret: str, outbox_id: int) -> str:
    """The id (and ``Nats-Msg-Id``) of this hive's outbox row ``outbox_id``:
    ``<me>.<16 hex of HMAC-SHA256(secret, outbox_id)>.<outbox_id>``. Stable for the row (a republish
    after a crash is a duplicate JetStream drops) and unguessable to other hives: JetStream's de-dup
    window is stream-wide, so a hive that could predict another's next id could publish it first (on
    its own subject) and have the real message acked as a duplicate and never stored."""
    token = hmac.new(secret.encode(), f"envelope:{outbox_id}".encode(), hashlib.sha256).hexdigest()
    return f"{me}.{token[:16]}.{outbox_id}"


def load_secret(state_root: Path) -> str:
    """The secret in ``<state>/swarm-identity`` (created on first use): :func:`load_identity`'s rules."""
    path = state_root / IDENTITY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        secret = secrets.token_hex(32)
        tmp = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return secret
    except OSError as exc:
        raise HiveError(f"cannot read the swarm identity {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd) as f:
        secret = f.read(256).strip()
    if not re.fullmatch(r"[0-9a-f]{64}", secret):
        raise HiveError(f"the swarm identity {path} is malformed; restore it from a backup")
    return secret


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- records ------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Claim:
    """Who holds a hive name: the SHA-256 of its identity key, the host it joined from, when."""

    identity: str
    host: str
    claimed_at: float


@attrs.frozen(kw_only=True)
class Heartbeat:
    at: float
    """Wall-clock Unix seconds when the hive wrote it."""
    agents: int = 0
    approvals: int | None = None
    """Its pending approvals (None: it does not say)."""


@attrs.frozen(kw_only=True)
class SwarmAgent:
    """One agent's row as other hives see it (a subset of the dashboard row)."""

    name: str
    is_manager: bool = False
    running: bool = False
    failed: bool = False
    paused: bool = False
    pending: str | None = None
    stuck: str | None = None
    status_text: str | None = None


@attrs.frozen(kw_only=True)
class SwarmHive:
    name: str
    reachable: bool
    last_seen: float | None = None
    """Wall-clock Unix seconds of its newest heartbeat seen (None: none seen since we joined)."""
    local: bool = False
    """This hive."""
    agents: list[SwarmAgent] = attrs.field(factory=list)
    approvals: int | None = None
    """Approvals pending on that hive, to approve there (None: not known)."""


@attrs.frozen(kw_only=True)
class SwarmStatus:
    """``swarm_status``: this hive's link and every hive it sees (``state`` ``off``: no ``--swarm``)."""

    state: LinkState
    hive: str | None = None
    server: str | None = None
    error: str | None = None
    heartbeat_ttl: float | None = None
    hives: list[SwarmHive] = attrs.field(factory=list)
    outbox: int = 0
    """Messages to other hives waiting for JetStream's ack (they flush when NATS is back)."""


OFF = SwarmStatus(state="off")


def agent_key(hive: str, agent: str) -> str:
    return f"{hive}.{agent}"


def split_agent_key(key: str) -> tuple[str, str] | None:
    """``(hive, agent)`` of a valid ``hive_agents`` key, else None (a foreign key is ignored)."""
    hive, sep, agent = key.partition(".")
    if not sep:
        return None
    try:
        return validate_hive_name(hive), validate_hive_name(agent)  # agent names follow the same rules
    except InvalidName:
        return None


def agent_row(view: Any) -> SwarmAgent:
    """The shared subset of a :class:`~hivecore.models.ContainerView`."""
    return SwarmAgent(
        name=view.name,
        is_manager=view.is_manager,
        running=view.running,
        failed=view.failed,
        paused=view.paused,
        pending=view.pending,
        stuck=view.stuck,
        status_text=view.status_text,
    )


def encode(record: object) -> bytes:
    return json.dumps(converter.unstructure(record), separators=(",", ":"), sort_keys=True).encode()


def loads(data: bytes | str) -> Any:
    """JSON from another hive, numbers finite: ``NaN``, ``Infinity`` and a float that overflows
    (``1e999``) are :class:`ValueError` (they would go on into ``/api/state`` and the SSE stream as
    ``NaN``/``Infinity``, which no browser's ``JSON.parse`` takes: one hive's heartbeat would blank
    every dashboard in the swarm)."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite)


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def decode(data: bytes, cls: type[Any]) -> Any | None:
    """``data`` as ``cls``, or None when another hive wrote something malformed (ignored, never fatal)."""
    try:
        return converter.structure(loads(data), cls)
    except Exception:
        return None


MAX_VALUE_BYTES = 8192
"""A value larger than this from another hive is ignored (a row is a few hundred bytes)."""


MAX_APPROVALS = 1_000_000
"""A pending-approvals count from another hive above this is ignored (malformed)."""


def approvals_ok(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_APPROVALS


def reachable(last_seen_local: float | None, now_local: float, ttl: float) -> bool:
    """A hive is reachable while its newest heartbeat was received less than ``ttl`` seconds ago."""
    return last_seen_local is not None and now_local - last_seen_local <= ttl


def status_rows(
    me: str,
    heartbeats: Mapping[str, tuple[float, float]],
    agents: Mapping[str, Mapping[str, SwarmAgent]],
    claimed: Iterable[str],
    now_local: float,
    ttl: float,
    approvals: Mapping[str, int] | None = None,
) -> list[SwarmHive]:
    """Every hive known (claimed, heartbeating or with rows), this one first, then by name.

    ``heartbeats``: hive → (wall-clock ``at`` of its newest heartbeat, local monotonic time received);
    ``approvals``: hive → its pending approvals, where known."""
    names = set(claimed) | set(heartbeats) | set(agents)
    out = []
    for name in sorted(names, key=lambda n: (n != me, n)):
        beat = heartbeats.get(name)
        rows = agents.get(name, {})
        out.append(
            SwarmHive(
                name=name,
                reachable=reachable(beat[1] if beat else None, now_local, ttl),
                last_seen=beat[0] if beat else None,
                local=name == me,
                agents=[rows[a] for a in sorted(rows)],
                approvals=(approvals or {}).get(name),
            )
        )
    return out
