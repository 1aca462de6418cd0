"""Alarms: the conditions that need a human, decided in one place (pure; :mod:`actors.alarms` does
the I/O and the raising/clearing).

An :class:`Observation` is what the actor read at one instant (Unix seconds throughout);
:func:`evaluate` turns it into the alarms that hold now, keyed by a stable :attr:`Alarm.key`;
:func:`diff` compares two evaluations. Conditions and their defaults (:class:`Thresholds`):

=====================  ==============================================================  =========
key                    raised while                                                     default
=====================  ==============================================================  =========
``manager_unread``     mail to the manager has waited unread (never handed out) longer  15 min
``unacked:<n>``        the oldest message to running ``<n>`` not acked is older than    30 min
``crash_loop:<n>``     ``<n>`` is held stopped after K crashes in M minutes             3 in 10
``stuck:<n>``          ``<n>``'s row says it is stuck (:func:`hivecore.usage.stuck_reason`)
``disk:<label>``       the filesystem is at least 85 % (warn) / 95 % (crit) used
``approval:<id>``      approval ``<id>`` has been pending longer than                   24 h
``notify``             a notification endpoint fails (:mod:`hivecore.services.webhooks`)
=====================  ==============================================================  =========
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from hivecore.errors import Refused
from hivecore.names import MANAGER_AGENT

Level = Literal["warn", "crit"]


@attrs.frozen
class Thresholds:
    """When each alarm is raised (seconds, counts, fractions)."""

    manager_unread: float = 15 * 60.0
    oldest_unacked: float = 30 * 60.0
    crash_loop_crashes: int = 3
    crash_loop_window: float = 10 * 60.0
    approval_age: float = 24 * 3600.0
    disk_warn: float = 0.85
    disk_crit: float = 0.95


@attrs.frozen
class Alarm:
    """One raised alarm. ``key`` is stable while the condition holds (``crash_loop:coder``)."""

    key: str
    kind: str
    """``manager_unread``, ``unacked``, ``crash_loop``, ``stuck``, ``disk``, ``approval``, ``notify``."""
    level: Level
    message: str
    agent: str | None = None
    since: float = 0.0
    """Unix seconds the condition began (its oldest message, the hold, the approval …)."""


@attrs.frozen
class Inbox:
    """One recipient's mail not yet acked: how many rows, the oldest one's ``sent_at``, and the
    oldest of those never handed out (None: every one was handed out)."""

    count: int
    oldest_unacked: float
    oldest_unread: float | None
    oldest_from: str = ""


@attrs.frozen
class Disk:
    label: str
    path: str
    used: float
    """Fraction used (0..1) of what an unprivileged user may fill."""
    free_bytes: int


@attrs.frozen
class Hold:
    agent: str
    reason: str
    since: float


@attrs.frozen
class Observation:
    now: float
    inboxes: Mapping[str, Inbox] = attrs.field(factory=dict)
    """By recipient inbox (``manager`` for the manager, agent names; the operator's is not watched)."""
    stuck: Mapping[str, str] = attrs.field(factory=dict)
    """Agent → why its row says stuck."""
    holds: Sequence[Hold] = ()
    disks: Sequence[Disk] = ()
    pending_approvals: Sequence[tuple[int, str, float]] = ()
    """``(id, agent, requested at)`` of every pending approval."""
    extra: Sequence[Alarm] = ()
    """Alarms other parts raise themselves (notification delivery)."""
    not_reading: frozenset[str] = frozenset()
    """Agents that are not running or are paused: their mail waits on purpose (no ``unacked``
    alarm; a crash has its own notice and a crash loop its own alarm)."""


MANAGER_INBOX = MANAGER_AGENT
"""The manager's inbox name in the broker."""


def _minutes(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def evaluate(obs: Observation, t: Thresholds) -> dict[str, Alarm]:
    """Every alarm that holds in ``obs`` under ``t``, by key."""
    out: list[Alarm] = []
    for inbox, box in sorted(obs.inboxes.items()):
        if inbox == MANAGER_INBOX:
            if box.oldest_unread is not None and obs.now - box.oldest_unread > t.manager_unread:
                waited = obs.now - box.oldest_unread
                out.append(
                    Alarm(
                        "manager_unread",
                        "manager_unread",
                        "warn",
                        f"the manager has not read its inbox for {_minutes(waited)} "
                        f"({box.count} message(s) waiting)",
                        agent=None,
                        since=box.oldest_unread,
                    )
                )
            continue
        if inbox not in obs.not_reading and obs.now - box.oldest_unacked > t.oldest_unacked:
            waited = obs.now - box.oldest_unacked
            sender = f" from {box.oldest_from}" if box.oldest_from else ""
            out.append(
                Alarm(
                    f"unacked:{inbox}",
                    "unacked",
                    "warn",
                    f"{inbox}'s oldest unacked message{sender} is {_minutes(waited)} old "
                    f"({box.count} not acked)",
                    agent=inbox,
                    since=box.oldest_unacked,
                )
            )
    out.extend(
        Alarm(
            f"crash_loop:{hold.agent}",
            "crash_loop",
            "crit",
            f"{hold.agent} is held stopped: {hold.reason}; release it with `hivectl release {hold.agent}`",
            agent=hold.agent,
            since=hold.since,
        )
        for hold in obs.holds
    )
    for agent, why in sorted(obs.stuck.items()):
        out.append(Alarm(f"stuck:{agent}", "stuck", "warn", f"{agent} is stuck: {why}", agent=agent))
    for disk in obs.disks:
        if disk.used < t.disk_warn:
            continue
        level: Level = "crit" if disk.used >= t.disk_crit else "warn"
        out.append(
            Alarm(
                f"disk:{disk.label}",
                "disk",
                level,
                f"{disk.label} ({disk.path}) is {disk.used:.0%} full; {disk.free_bytes / 2**30:.1f} GiB free",
            )
        )
    for aid, agent, at in obs.pending_approvals:
        if obs.now - at > t.approval_age:
            out.append(
                Alarm(
                    f"approval:{aid}",
                    "approval",
                    "warn",
                    f"approval {aid} for {agent} has been pending for {_minutes(obs.now - at)}",
                    agent=agent,
                    since=at,
                )
            )
    out.extend(obs.extra)
    return {a.key: a for a in out}


def diff(before: Mapping[str, Alarm], after: Mapping[str, Alarm]) -> tuple[list[Alarm], list[Alarm]]:
    """``(raised, cleared)`` from ``before`` to ``after``: an alarm is raised when its key is new or
    its level changed (a message that only counts on, "for 16 min" → "for 17 min", is not)."""
    raised = [a for k, a in after.items() if k not in before or before[k].level != a.level]
    cleared = [a for k, a in before.items() if k not in after]
    return raised, cleared


def carry_since(before: Mapping[str, Alarm], after: Mapping[str, Alarm], now: float) -> dict[str, Alarm]:
    """``after`` with each alarm that has no ``since`` of its own given the one it had in ``before``
    (else ``now``): an alarm's age runs from when it was first raised."""
    out: dict[str, Alarm] = {}
    for key, alarm in after.items():
        if alarm.since == 0.0:
            prev = before.get(key)
            alarm = attrs.evolve(alarm, since=prev.since if prev is not None else now)
        out[key] = alarm
    return out


def crash_loop(crashes: Iterable[float], now: float, t: Thresholds) -> bool:
    """Whether the crash times ``crashes`` (Unix seconds) hold K within the last M minutes."""
    recent = [c for c in crashes if now - c <= t.crash_loop_window]
    return len(recent) >= t.crash_loop_crashes


def crash_loop_reason(t: Thresholds) -> str:
    return f"crash loop ({t.crash_loop_crashes} crashes within {_minutes(t.crash_loop_window)})"


class AgentHeld(Refused):
    """A start of an agent the crash-loop hold keeps stopped."""


class Holds:
    """Agents held stopped (crash loop), by name. Plain synchronous state: see the module doc."""

    def __init__(self) -> None:
        self._held: dict[str, Hold] = {}
        self.crashes: dict[str, collections.deque[float]] = {}
        """Recent crash times (Unix seconds) by agent, the crash-loop count's history."""

    def get(self, name: str) -> Hold | None:
        return self._held.get(name)

    def all(self) -> list[Hold]:
        return sorted(self._held.values(), key=lambda h: h.agent)

    def load(self, holds: Iterable[Hold]) -> None:
        self._held = {h.agent: h for h in holds}

    def hold(self, hold: Hold) -> None:
        self._held[hold.agent] = hold

    def discard(self, name: str) -> Hold | None:
        """End ``name``'s hold and forget its crash history (a release, or the agent's destroy: a
        new agent of that name starts clean); the hold it had, if any."""
        self.crashes.pop(name, None)
        return self._held.pop(name, None)

    def refuse_start(self, name: str) -> None:
        """Raise :class:`AgentHeld` naming the reason and the way out when ``name`` is held."""
        hold = self._held.get(name)
        if hold is not None:
            raise AgentHeld(
                f"{name} is held stopped: {hold.reason}; find the cause in its log "
                f"(hivectl logs {name}), then release it with `hivectl release {name}` and start it"
            )


def disk_usage(label: str, path: str) -> Disk | None:
    """The filesystem of ``path`` (blocking: run it in a thread); None when it cannot be read."""
    import os

    try:
        vfs = os.statvfs(path)
    except OSError:
        return None
    used = vfs.f_blocks - vfs.f_bfree
    usable = used + vfs.f_bavail
    if usable <= 0:
        return None
    return Disk(label, path, used / usable, vfs.f_bavail * vfs.f_frsize)


def distinct_disks(paths: Iterable[tuple[str, str]]) -> list[Disk]:
    """:func:`disk_usage` of each path, one per filesystem (by device; blocking)."""
    import os

    out: list[Disk] = []
    seen: set[int] = set()
    for label, path in paths:
        try:
            dev = os.stat(path).st_dev
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        disk = disk_usage(label, path)
        if disk is not None:
            out.append(disk)
    return out
