"""The systemd notification protocol (``sd_notify(3)``): one datagram per state change.

Written here rather than taken from a package, on purpose: the protocol is one ``AF_UNIX`` datagram
of ``KEY=VALUE`` lines to the path in ``$NOTIFY_SOCKET`` (``@name`` means the abstract namespace).
``systemd-python`` and ``cysystemd`` wrap libsystemd (a C build and a libsystemd the process runtime
does not otherwise need); ``sdnotify`` (2017) and ``sd-notify`` (2020) are unmaintained;
``systemd-watchdog`` is a synchronous wrapper with its own timing policy. The watchdog's timing is
what matters here and it must come from the trio loop itself (:mod:`hivecore.readiness`), so all this
module does is find the socket and send the bytes, never blocking (``MSG_DONTWAIT``: a full queue at
systemd drops the datagram, exactly as libsystemd's does not wait either).

:func:`take_environment` reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` once and
removes them from ``os.environ`` (libsystemd's ``unset_environment``), so no child (an agent, git,
nix) inherits them and talks to systemd as if it were the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

import attrs

log = logging.getLogger(__name__)

MAX_STATUS = 200
"""Characters of a ``STATUS=`` line kept (systemctl shows one line)."""


@attrs.frozen
class NotifyTarget:
    """Where the datagrams go and the watchdog interval systemd asked for."""

    address: str | bytes | None
    """The socket (``bytes`` with a leading NUL: the abstract namespace), or None: not under
    ``Type=notify`` (every send is a no-op)."""
    watchdog_usec: int | None = None
    """``WATCHDOG_USEC`` when it is for this process (``WATCHDOG_PID`` unset or ours), else None."""

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half the timeout (sd_watchdog_enabled(3)), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None


def parse_environment(env: MutableMapping[str, str], pid: int) -> NotifyTarget:
    """The target named by ``env`` (pure). A malformed value is treated as unset (and logged)."""
    raw = env.get("NOTIFY_SOCKET", "")
    address: str | bytes | None = None
    if raw.startswith("@"):
        address = b"\0" + raw[1:].encode()
    elif raw.startswith("/"):
        address = raw
    elif raw:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying systemd", raw[:80])
    usec: int | None = None
    text = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if text:
        try:
            usec = int(text)
        except ValueError:
            usec = None
        if usec is None or usec <= 0:
            log.warning("WATCHDOG_USEC=%r is not a positive number; no watchdog pings", text[:40])
            usec = None
    if usec is not None and owner and owner != str(pid):
        usec = None  # meant for another process (our parent), sd_watchdog_enabled(3)
    return NotifyTarget(address, usec)


def take_environment(env: MutableMapping[str, str] | None = None) -> NotifyTarget:
    """:func:`parse_environment` of ``os.environ`` (or ``env``), removing the three variables."""
    env = os.environ if env is None else env
    target = parse_environment(env, os.getpid())
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    return target


class Notifier:
    """Sends notification datagrams to one target; never raises, never blocks."""

    def __init__(self, target: NotifyTarget) -> None:
        self.target = target
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.target.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines`` (``READY=1``, ``STATUS=…``). True when it was sent."""
        if self.target.address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.target.address)
        except OSError as exc:
            self.failed += 1
            if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                log.warning("sd_notify to %r failed (%d so far): %s", self.target.address, self.failed, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_line(status))

    def status(self, status: str) -> bool:
        return self.send(status_line(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", status_line(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(text: str) -> str:
    """``STATUS=<text>`` on one line, cut to :data:`MAX_STATUS` characters."""
    one = " ".join(text.split())
    return "STATUS=" + (one[: MAX_STATUS - 1] + "…" if len(one) > MAX_STATUS else one)
