"""Joining the swarm when the connection itself is wrong (docs/swarm.md, production setup): a wrong
password, a server whose TLS certificate the hive does not trust, nothing listening. The link's state
line must say which flag to look at while it retries, not a bare timeout. A real ``nats-server`` (with
TLS from a throwaway CA made by ``openssl``) and a real link."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from actors.swarm_link import SwarmLink
from hivecore import swarm as sw
from tests.nats_server import NATS_SERVER, NatsServer, free_port
from tests.test_swarm_link import RowsStandIn, roots, running
from tests.waiting import eventually

__all__ = ["roots"]  # the fixture, imported


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def link(url: str, root: Path, **settings: object) -> SwarmLink:
    return SwarmLink(sw.SwarmSettings(url=url, hive_name="alpha", **settings), RowsStandIn(), root)  # type: ignore[arg-type]


def _ca(dir: Path, name: str) -> tuple[Path, Path]:
    key, cert = dir / f"{name}-key.pem", dir / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@attrs.frozen
class TlsServer:
    server: NatsServer
    ca: Path
    other_ca: Path
    """A CA that did not sign the server's certificate."""


@pytest.fixture
def tls_server() -> Iterator[TlsServer]:
    """nats-server with ``tls { … }`` (a certificate for 127.0.0.1 from a throwaway CA) and one user."""
    if NATS_SERVER is None or shutil.which("openssl") is None:
        pytest.skip("needs nats-server and openssl")
    root = Path(tempfile.mkdtemp(prefix="natstls", dir="/tmp"))
    ca, ca_key = _ca(root, "ca")
    other_ca, _ = _ca(root, "other-ca")
    key, csr, cert = root / "server-key.pem", root / "server.csr", root / "server.pem"
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
         "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "1", "-extfile", str(root / "ext.cnf"), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    config = root / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{ store_dir: {str(root / 'store')!r} }}\n"
        f"tls {{ cert_file: {str(cert)!r}, key_file: {str(key)!r} }}\n"
        'authorization { users: [ { user: "alpha", password: "alpha-pw" } ] }\n'
    )
    server = NatsServer(port, root / "store", root / "nats.log", config=config)
    server.start()
    try:
        yield TlsServer(server, ca, other_ca)
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


def _creds(root: Path, text: str) -> Path:
    path = root / "alpha.creds"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


async def test_tls_with_the_servers_ca_joins(
    tls_server: TlsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    root = roots()
    url = f"tls://127.0.0.1:{tls_server.server.port}"
    a = link(url, root, tls_ca=tls_server.ca, creds=_creds(root, "alpha:alpha-pw"))
    await running(nursery, a)
    await eventually(lambda: a.state == "connected", 30)
    assert a.error is None


@pytest.mark.parametrize("scheme", ["tls", "nats"])
async def test_an_untrusted_tls_certificate_names_swarm_tls_ca(
    scheme: str, tls_server: TlsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    """Without --swarm-tls-ca (also with nats://: the server upgrades the connection to TLS), and with
    a CA that did not sign the certificate."""
    root = roots()
    url = f"{scheme}://127.0.0.1:{tls_server.server.port}"
    a = link(url, root, creds=_creds(root, "alpha:alpha-pw"))
    b = link(url, roots(), tls_ca=tls_server.other_ca, creds=_creds(root, "alpha:alpha-pw"))
    await running(nursery, a)
    await running(nursery, b)
    await eventually(lambda: a.error is not None and "not trusted" in a.error, 30)
    assert a.state in ("connecting", "reconnecting")
    assert "certificate verify failed" in (a.error or "")
    assert "pass the CA that signed its certificate with --swarm-tls-ca FILE" in (a.error or "")
    await eventually(lambda: b.error is not None and "not trusted" in b.error, 30)
    assert f"--swarm-tls-ca {tls_server.other_ca} is not the CA that signed it" in (b.error or "")


async def test_a_wrong_password_says_authorization_violation_and_names_the_creds_file(
    tls_server: TlsServer, roots: Callable[[], Path], nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    root = roots()
    creds = _creds(root, "alpha:wrong")
    a = link(f"tls://127.0.0.1:{tls_server.server.port}", root, tls_ca=tls_server.ca, creds=creds)
    await running(nursery, a)
    # said while it retries, and still said after the attempt timed out (not a bare TooSlowError)
    await eventually(lambda: a.error is not None and "Authorization Violation" in a.error, 30)
    assert f"NATS refused the user in --swarm-creds {creds}" in (a.error or "")
    await eventually(lambda: a.state == "reconnecting", 30)
    assert "Authorization Violation" in (a.error or "")
    assert a.state != "connected"
    assert any("Authorization Violation" in r.getMessage() for r in caplog.records)  # "retrying" line
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]  # asyncio's TLS noise


def test_connect_errors_are_explained_with_the_flag_to_look_at() -> None:
    s = sw.SwarmSettings(url="nats://127.0.0.1:1", hive_name="alpha")
    text = "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    assert sw.explain_connect_error(text, s) == (
        f"nothing accepts connections at nats://127.0.0.1:1 ({text}); is nats-server running there?"
    )
    assert sw.explain_connect_error("Error: nats: 'Authorization Violation'", s).startswith(
        "NATS refused this hive: no --swarm-creds (Error: nats: 'Authorization Violation')"
    )
    assert sw.explain_connect_error("OSError: something else", s) == "OSError: something else"


async def test_mail_and_operator_commands_to_a_hive_that_never_joined_are_refused_at_once(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    """A typo'd hive (``coder@bta``) would wait in HIVE_MAIL for its 14 days (an ask: its TTL), and
    ``stop`` would say the hive is not connected now: all say no such hive joined, nothing queued."""
    from hivecore.errors import BadInput, Refused
    from hivecore.wire.host import SwarmOpRequest
    from tests.test_swarm_auth import inbox, start_hive

    a = await start_hive(nursery, nats_server.url, "alpha", roots())
    b = await start_hive(nursery, nats_server.url, "beta", roots())
    await eventually(lambda: a.link.state == "connected" and b.link.state == "connected", 30)
    await eventually(lambda: "beta" in a.link._claims, 10)
    with pytest.raises(BadInput) as refused:
        await a.broker.send("coder", "coder@bta", "typo")
    assert str(refused.value) == (
        "cannot send to coder@bta: no hive 'bta' has joined this swarm ('hivectl swarm' lists the "
        "hives); nothing was sent"
    )
    with pytest.raises(BadInput, match="cannot ask coder@bta: no hive 'bta' has joined this swarm"):
        await a.questions.ask("coder", "typo?", to="coder@bta")
    assert a.link.outbox_depth == 0
    with pytest.raises(Refused, match="cannot stop coder@bta: no hive 'bta' has joined this swarm"):
        await a.ops.ask(SwarmOpRequest(op="stop", target="coder@bta", timeout=10), None)
    await a.broker.send("coder", "coder@beta", "a hive that joined")

    async def got() -> bool:
        rows: list[tuple[str, str]] = await inbox(b, "coder")
        return rows == [("coder@alpha", "a hive that joined")]

    await eventually(got, 10)
    # not connected: it cannot know; the mail waits in the outbox as for a hive that is down
    nats_server.kill()
    await eventually(lambda: a.link.state != "connected", 30)
    await a.broker.send("coder", "coder@bta", "queued")
    assert a.link.outbox_depth == 1


async def test_nats_gone_says_nothing_accepts_connections_not_a_bare_error(
    nats_server: NatsServer, roots: Callable[[], Path], nursery: trio.Nursery
) -> None:
    a = link(nats_server.url, roots())
    await running(nursery, a)
    await eventually(lambda: a.state == "connected", 30)
    await trio.to_thread.run_sync(nats_server.kill)
    await eventually(lambda: a.error is not None and a.error.startswith("nothing accepts connections"), 30)
    seen = set()
    for _ in range(60):  # every error nats-py reports from here on reaches the line explained
        seen.add(a.error)
        await trio.sleep(0.05)
    want = "nothing accepts connections at nats://127.0.0.1"
    assert all(e is not None and e.startswith(want) for e in seen), seen
