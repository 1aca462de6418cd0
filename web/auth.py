"""Dashboard auth: one operator token, browser sessions with a CSRF token, or a bearer header.

* On the first start :func:`ensure_token` writes ``<state>/operator-token`` (0600, 256 random bits);
  the daemon logs the login page and the token file's path, never the token (``hive-c0re login-url``
  prints ``/login#token=…`` for the operator who can read the file).
* ``POST /login`` with the token sets ``hive_session`` (HttpOnly, SameSite=Strict, Path=/). Each
  session has its own CSRF token, handed to the page in the ``/api/state`` snapshot; every POST with
  a session must carry it (``X-CSRF-Token`` header or a ``csrf`` form field).
* API clients may send ``Authorization: Bearer <token>`` on any route instead (a browser never sends
  that header on its own, so it needs no CSRF token).
* ``none`` (loopback binds only): no login, but POSTs still need the process's CSRF token, so a web
  page in the operator's browser cannot drive the daemon with a cross-site form.
Sessions live in memory: a daemon restart logs every browser out.

Failed logins (a wrong token on ``POST /login`` or in a bearer header) are logged with the client's
address and never the secret, and counted per address by :class:`LoginThrottle`: past
:data:`MAX_FAILED_LOGINS` in :data:`FAILED_LOGIN_WINDOW` seconds every *wrong* token from that
address is answered 429 with ``Retry-After`` until the window has room again. The right token is
never throttled: agents of the process runtime share the operator's loopback address, and one of
them failing on purpose must not lock the operator out (the ``hive-c0re login-url`` link, a bearer
header and ``POST /login`` with the token always work). Telling a throttled guesser that a guess was
right costs nothing: the token has 256 random bits; the limit is there to log and slow noise.
"""

from __future__ import annotations

import collections
import hmac
import math
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from hivecore import audit
from hivecore.errors import HiveError

SESSION_COOKIE = "hive_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 256
"""Oldest sessions are dropped past this many (a login loop cannot grow memory)."""
TOKEN_BYTES = 32
MIN_TOKEN_CHARS = 16
MAX_FAILED_LOGINS = 5
"""Failed logins one client address may make per :data:`FAILED_LOGIN_WINDOW`."""
FAILED_LOGIN_WINDOW = 60.0
"""Seconds a failed login counts against its address."""
MAX_THROTTLED_CLIENTS = 4096
"""Addresses tracked at once (the oldest are forgotten first): a spray of addresses cannot grow memory."""


def ensure_token(path: Path) -> tuple[str, bool]:
    """The operator token at ``path``, created (0600, never through a symlink) when missing.

    Returns ``(token, created)``. A token file that is not a regular file, or too short, is an error
    the operator must fix (it is never silently replaced).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise HiveError(f"cannot read the operator token {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HiveError(f"the operator token {path} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(f.fileno(), 0o600)
        text = f.read(4096).decode("utf-8", "replace").strip()
    if len(text) < MIN_TOKEN_CHARS or not text.isascii() or not text.isprintable():
        raise HiveError(
            f"the operator token {path} is malformed (want at least {MIN_TOKEN_CHARS} printable "
            "ASCII characters); delete it and restart to get a new one"
        )
    return text, False


Principal = Literal["bearer", "session", "open"]


@attrs.frozen
class Session:
    """One browser session: its CSRF token and what the audit trail says about it."""

    csrf: str
    login_at: str
    """When it logged in (RFC 3339, UTC)."""
    client: str
    """The address it logged in from."""
    label: str
    """Its identifier in the audit trail (a hash of the cookie: never the cookie)."""


@attrs.define
class Auth:
    """Who a request is (:meth:`principal`) and whether a POST may change anything (:meth:`csrf_ok`)."""

    mode: Literal["token", "none"]
    token: str | None
    _sessions: collections.OrderedDict[str, Session] = attrs.field(factory=collections.OrderedDict)
    _open_csrf: str = attrs.field(factory=lambda: secrets.token_urlsafe(TOKEN_BYTES))
    throttle: LoginThrottle = attrs.field(factory=lambda: LoginThrottle())

    def token_ok(self, given: str | None) -> bool:
        if self.token is None or given is None:
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token.encode())

    def login(self, given: str | None, client: str = "?") -> str | None:
        """A new session id for the right token (``client``: the address it came from), else ``None``."""
        if not self.token_ok(given):
            return None
        sid = secrets.token_urlsafe(TOKEN_BYTES)
        self._sessions[sid] = Session(
            csrf=secrets.token_urlsafe(TOKEN_BYTES),
            login_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            client=client,
            label=audit.secret_id(sid, "s:", 16),
        )
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid

    def logout(self, sid: str | None) -> None:
        if sid is not None:
            self._sessions.pop(sid, None)

    def principal(self, authorization: str | None, sid: str | None) -> Principal | None:
        """``bearer``/``session``/``open`` (auth ``none``), or ``None``: not authenticated."""
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(value):
                return "bearer"
        if sid is not None and sid in self._sessions:
            return "session"
        if self.mode == "none":
            return "open"
        return None

    def csrf_for(self, principal: Principal | None, sid: str | None) -> str | None:
        """The CSRF token the page must echo on POSTs (none for bearer clients)."""
        if principal == "session" and sid is not None:
            session = self._sessions.get(sid)
            return session.csrf if session is not None else None
        if principal == "open":
            return self._open_csrf
        return None

    def actor(self, principal: Principal | None, sid: str | None, client: str | None) -> audit.Actor:
        """Who a dashboard request is, for the audit trail: a session's identifier, login time and
        client address; a bearer client's token identifier (never the token) and address."""
        session = self._sessions.get(sid) if principal == "session" and sid is not None else None
        if session is not None:
            return audit.Actor(
                "operator",
                "dashboard",
                session=session.label,
                session_login=session.login_at,
                client=client,
            )
        if principal == "bearer" and self.token is not None:
            token = audit.secret_id(self.token, "operator-token sha256:", 12)
            return audit.Actor("operator", "dashboard", token=token, client=client)
        return audit.Actor("operator", "dashboard", session="open (no auth)", client=client)

    def csrf_ok(self, principal: Principal, sid: str | None, given: str | None) -> bool:
        if principal == "bearer":
            return True
        want = self.csrf_for(principal, sid)
        if want is None or given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), want.encode())


class LoginThrottle:
    """Failed logins per client address, in a sliding window (pure: the clock is injected).

    :meth:`retry_after` is the seconds until ``client`` may try again (0: now); :meth:`failed`
    records one failure and says whether it is the first one past the limit (log that one, not the
    rest). Plain state changed only in synchronous code: no lock needed on the trio thread.
    """

    def __init__(
        self,
        *,
        limit: int = MAX_FAILED_LOGINS,
        window: float = FAILED_LOGIN_WINDOW,
        max_clients: int = MAX_THROTTLED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, client: str) -> collections.deque[float]:
        times = self._failures.get(client)
        if times is None:
            return collections.deque()
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> int:
        """Whole seconds (at least 1) until ``client`` may present a credential again; 0 if it may now."""
        times = self._recent(client)
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-self.limit] + self.window - self.clock()))

    def failed(self, client: str) -> int:
        """Count one failed login of ``client``; how many it made in the window, this one included."""
        times = self._recent(client)
        times.append(self.clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        return len(times)
