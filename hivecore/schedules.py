"""Scheduled prompts (the late original's SCH3DUL3S; reference §10.1 ``scheduled_prompts``): records,
limits and the pure rules. Light (attrs, the errors): the wire records and ``hivectl`` import it.
Rows: :mod:`hivecore.schedule_store`; the actor that fires them: :mod:`actors.prompt_scheduler`.

A schedule sends ``body`` (as the operator) to each of its targets, once (``at``) or every
``interval_seconds``; each firing records, per target, what happened (``last_result``). The
operator creates one directly; the manager may only *request* one (an approval of kind
``schedule_prompt``): its row waits in state ``requested`` until the operator approves it.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import attrs

from hivecore.errors import BadInput, HiveError

MAX_BODY = 4096
"""The body (UTF-8 bytes): a message's limit."""
MAX_TARGETS = 32
MIN_INTERVAL = 1
MAX_INTERVAL = 366 * 24 * 3600
MAX_AHEAD = 366 * 24 * 3600
MAX_ACTIVE = 200
"""Schedules active or requested at once (a hostile manager's requests count too)."""
MAX_DESCRIPTION = 1024
MAX_ID = 10**18
KEEP_DONE = 30 * 24 * 3600
"""Finished and cancelled schedules are deleted this many seconds after they ended."""

State = str
"""``requested`` (waiting for the operator's approval), ``active``, ``done`` (a one-shot that
fired), ``cancelled``."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(?:([0-9]{1,7})([smhdw]))+")
_PART_RE = re.compile(r"([0-9]{1,7})([smhdw])")


class UnknownSchedule(HiveError):
    http_status = 404

    def __init__(self, schedule_id: int, what: str = "") -> None:
        super().__init__(f"no schedule {schedule_id}{what}")
        self.schedule_id = schedule_id


@attrs.frozen(kw_only=True)
class ScheduleTarget:
    """One target of a schedule and what its last firing did."""

    target: str
    cancelled_at: float | None = None
    last_fired_at: float | None = None
    last_result: str | None = None
    """``sent (message 42)``, ``not sent: coder is not running``, ``failed: …``."""
    fired: int = 0
    """How many firings reached this target (sent or not)."""


@attrs.frozen(kw_only=True)
class Schedule:
    """A scheduled prompt (times in Unix seconds)."""

    id: int
    owner: str
    """Who asked: ``operator``, or ``hm1nd`` (through an approval)."""
    body: str
    interval_seconds: int | None = None
    """``None``: one-shot."""
    next_fire_at: float | None = None
    """``None`` once done, cancelled, or while it waits for approval."""
    created_at: float
    source: str = "operator"
    """``operator`` or ``approval:<id>``."""
    state: State = "active"
    cancelled_at: float | None = None
    description: str | None = None
    targets: list[ScheduleTarget] = attrs.field(factory=list)


# --- checks ---------------------------------------------------------------------------------------


def duration(text: str) -> int:
    """``90s``, ``5m``, ``1h30m``, ``2d``, ``1w`` (or plain seconds, ``3600``) → seconds, from
    :data:`MIN_INTERVAL` to :data:`MAX_INTERVAL`."""
    t = text.strip().lower()
    if t.isascii() and t.isdigit() and len(t) <= 12:
        seconds = int(t)
    elif _DURATION_RE.fullmatch(t):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART_RE.findall(t))
    else:
        raise BadInput(
            f"not a duration: {text[:40]!r}; write e.g. 90s, 5m, 1h30m, 2d or 1w (or plain seconds)"
        )
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise BadInput(f"the interval must be {MIN_INTERVAL} s to a year, got {seconds} s")
    return seconds


def optional_duration(value: str | None) -> str | None:
    if value is not None:
        duration(value)
    return value


def when(text: str) -> float:
    """A time: Unix seconds (``1764630000``) or ISO 8601 (``2026-12-01T12:00:00Z``; without an
    offset it is UTC)."""
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise BadInput(
                f"not a time: {text[:40]!r}; give Unix seconds or ISO 8601 (2026-12-01T12:00:00Z)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"not a time: {text[:40]!r}; give Unix seconds or ISO 8601")
    return value


def optional_when(value: str | None) -> str | None:
    if value is not None:
        when(value)
    return value


def targets(value: list[str]) -> list[str]:
    """Agent names (``@`` and blanks dropped, ``manager`` for the manager), de-duplicated, 1 to
    :data:`MAX_TARGETS`; whether each exists is checked with the hive."""
    from hivecore.names import MANAGER_AGENT, MANAGER_NAME, validate_name

    names: list[str] = []
    for item in value:
        for part in item.split(","):
            name = part.strip().removeprefix("@")
            if name:
                names.append(MANAGER_NAME if name == MANAGER_AGENT else validate_name(name))
    names = list(dict.fromkeys(names))
    if not names:
        raise BadInput("name at least one target agent (to)")
    if len(names) > MAX_TARGETS:
        raise BadInput(f"at most {MAX_TARGETS} targets, got {len(names)}")
    return names


def body(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY:
        raise BadInput(f"body is {size} bytes; the limit is {MAX_BODY}")
    if not value.strip():
        raise BadInput("body is empty")
    return value


def description(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_DESCRIPTION:
        raise BadInput(f"description is longer than {MAX_DESCRIPTION} characters")
    return value


def schedule_id(value: int) -> int:
    if not 0 < value < MAX_ID:
        raise BadInput(f"a schedule id is a number from 1 to {MAX_ID - 1}, got {value}")
    return value


# --- the rules --------------------------------------------------------------------------------------


def first_fire(every: str | None, at: str | None, now: float) -> tuple[float, int | None]:
    """``(first firing, interval)`` for exactly one of ``every`` and ``at`` (not in the past, at
    most a year ahead); a recurring schedule first fires one interval from now."""
    if (every is None) == (at is None):
        raise BadInput(
            "give exactly one of every (a duration: 1h, 30m) and at (a time), "
            + ("not both" if every is not None else "got neither")
        )
    if every is not None:
        interval = duration(every)
        return now + interval, interval
    assert at is not None
    fire = when(at)
    if fire < now - 1:
        raise BadInput(f"at {fire:.0f} is in the past (now is {now:.0f}); give a later time")
    if fire > now + MAX_AHEAD:
        raise BadInput(f"at {fire:.0f} is more than a year ahead (now is {now:.0f})")
    return max(fire, now), None


def next_after(fired_at: float, interval: int | None, now: float) -> float | None:
    """The next firing after one due at ``fired_at`` (``None``: a one-shot is done). Missed
    firings (the daemon was down) are not made up: the next is at least one interval from now."""
    if interval is None:
        return None
    nxt = fired_at + interval
    return nxt if nxt > now else now + interval


def summary(s: Schedule, *, whole: bool = False) -> str:
    """Whom, when and what, on one line (``whole``: the whole body after a line break, as an
    approval card shows it: the operator approves exactly what will be sent)."""
    whom = ", ".join(t.target for t in s.targets)
    if s.interval_seconds:
        when_ = f"every {s.interval_seconds} s"
    elif s.next_fire_at is not None:
        stamp = dt.datetime.fromtimestamp(s.next_fire_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        when_ = f"once at {stamp}"
    else:
        when_ = "once"
    if whole:
        return f"to {whom}, {when_}:\n{s.body}"
    text = s.body if len(s.body) <= 200 else s.body[:199] + "…"
    return f"to {whom}, {when_}: {text}"
