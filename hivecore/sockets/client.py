"""The one JSON-lines Unix socket client (``hivectl``, ``hive-c0re VERB``, tests, the agent harness).

Blocking and standard library only, so a CLI starts fast: connect to a socket path, send one line,
read answer lines until the server closes. Every failure to talk is an :class:`Unreachable` whose
message says what happened and what to do about it; what the lines *mean* is the caller's business.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import NamedTuple


class Unreachable(Exception):
    """The server could not be reached or did not answer; the message names the fix."""


class Hints(NamedTuple):
    """The remedies named in connect errors (they differ per socket and per client)."""

    start: str = "start it with `hive-c0re serve`"
    """How to start the server."""
    choose: str = "point hivectl at its socket with --socket PATH or HIVE_HOST_SOCK"
    """How to name another socket."""
    group: str | None = "hive-admin"
    """The group whose members may connect, if any."""


HOST_SOCK_HINTS = Hints()


def connect(path: str, timeout: float | None, hints: Hints = HOST_SOCK_HINTS) -> socket.socket:
    """A connected socket whose operations time out after ``timeout`` seconds (None: never)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise Unreachable(
            f"no socket at {path}: the daemon is not running ({hints.start}), or {hints.choose}"
        ) from None
    except PermissionError:
        sock.close()
        if hints.group is None:
            raise Unreachable(f"permission denied on {path}") from None
        raise Unreachable(
            f"permission denied on {path}: you are not in the {hints.group} group, or your login "
            f"predates the group grant (log in again, or run `newgrp {hints.group}`)"
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise Unreachable(
            f"nothing is listening on {path}: the daemon is down (the socket is left over from a stopped "
            f"daemon); {hints.start}"
        ) from None
    except TimeoutError:
        sock.close()
        raise Unreachable(f"connecting to {path} did not complete within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
    return sock


def exchange(
    path: str, line: bytes, timeout: float | None, hints: Hints = HOST_SOCK_HINTS
) -> Generator[bytes, None, None]:
    """Send ``line`` (ending in ``\\n``); yield each answer line (without its ``\\n``) until the
    server closes. ``timeout`` bounds each step (connect, send, each line), not the whole exchange.
    At least one line is yielded, else :class:`Unreachable`."""
    sock = connect(path, timeout, hints)
    with sock, sock.makefile("rb") as answers:
        answered = False
        try:
            # the server may answer early (a refusal) and close: then read what it said
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(line)
            while answer := answers.readline():
                answered = True
                yield answer.rstrip(b"\n")
        except TimeoutError:
            raise Unreachable(f"no answer from the daemon within {timeout:g} s") from None
        except ConnectionResetError:
            if not answered:
                raise Unreachable("the daemon reset the connection without answering") from None
        except OSError as exc:
            raise Unreachable(f"lost the connection to the daemon: {exc.strerror or exc}") from None
        if not answered:
            raise Unreachable("the daemon closed the connection without answering")


def request(path: str, line: bytes, timeout: float | None, hints: Hints = HOST_SOCK_HINTS) -> bytes:
    """Send ``line``; the first answer line (the connection is closed after it)."""
    answers = exchange(path, line, timeout, hints)
    try:
        return next(answers)
    finally:
        answers.close()
