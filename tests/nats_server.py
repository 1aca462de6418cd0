"""A real ``nats-server -js`` for the swarm tests: loopback, a free port, its own store dir, killed
(its process group) at the end. ``.ci/setup.sh`` installs Debian's ``nats-server``; without the binary
the tests that need it are skipped with that reason.

``nats_auth_server``: the production shape (docs/swarm.md): an account ``HIVES`` with JetStream,
one user per hive with exactly :func:`hivecore.swarm_perms.permissions`, and an ``admin`` user that
may do anything; :meth:`NatsServer.creds` writes a hive's ``--swarm-creds`` file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class NatsServer:
    port: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    config: Path | None = None
    """A nats-server.conf (then it names the port and store itself)."""
    secrets: dict[str, str] = attrs.field(factory=dict)
    """hive → the ``--swarm-creds`` text of its user (user:password or an nkey seed)."""

    def creds(self, hive: str) -> Path:
        """A 0600 ``--swarm-creds`` file for ``hive``'s user, beside the server's log."""
        path = self.log.parent / f"{hive}.creds"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.secrets[hive] + "\n")
        return path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port and store) and wait until it accepts connections."""
        assert NATS_SERVER is not None
        cmd = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        if self.config is not None:
            cmd = [NATS_SERVER, "-c", str(self.config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nats-server exited; see {self.log}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise AssertionError(f"nats-server did not listen on {self.port}; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (.ci/setup.sh installs Debian's nats-server)")
    root = Path(tempfile.mkdtemp(prefix="nats", dir="/tmp"))
    server = NatsServer(free_port(), root / "store", root / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


ADMIN_PASSWORD = "admin-pw"
HIVES_WITH_USERS = ("alpha", "beta", "gamma")
"""Users of :func:`nats_auth_server`: alpha and beta by password, gamma by an nkey."""


def auth_config(port: int, store: Path, secrets: dict[str, str], *, omit: str | None = None) -> str:
    """A nats-server.conf: account ``HIVES`` (JetStream), one permissioned user per hive, ``admin``;
    ``omit``: a subject left out of every hive's list (a server set up with a missing permission)."""
    import nkeys  # nats-py[nkeys]

    from hivecore import swarm_perms

    users = []
    for hive, secret in secrets.items():
        if secret.startswith("SU"):
            nkey = nkeys.from_seed(secret.encode()).public_key.decode()
            users.append(swarm_perms.server_user(hive, nkey=nkey))
        else:
            users.append(swarm_perms.server_user(hive, password=secret.partition(":")[2]))
    if omit is not None:
        users = ["\n".join(x for x in u.splitlines() if x.strip() != json.dumps(omit)) for u in users]
    users.append(f'{{ user: "admin", password: "{ADMIN_PASSWORD}" }}')
    return (
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{ store_dir: {str(store)!r} }}\n"
        "accounts {\n  HIVES {\n    jetstream: enabled\n    users: [\n"
        + "\n".join(users)
        + "\n    ]\n  }\n}\n"
    )


@pytest.fixture
def nats_auth_server() -> Iterator[NatsServer]:
    yield from auth_server()


def auth_server(omit: str | None = None) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (.ci/setup.sh installs Debian's nats-server)")
    import secrets as random

    import nkeys

    root = Path(tempfile.mkdtemp(prefix="natsa", dir="/tmp"))
    port = free_port()
    secrets = {h: f"{h}:{random.token_hex(12)}" for h in HIVES_WITH_USERS[:2]}
    secrets["gamma"] = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    config = root / "nats.conf"
    config.write_text(auth_config(port, root / "store", secrets, omit=omit))
    server = NatsServer(port, root / "store", root / "nats.log", config=config, secrets=secrets)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
