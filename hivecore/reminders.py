"""Reminders (reference §9.2 ``remind``, §10.1 ``reminders``): the records, the limits and the pure
rules. Light on purpose (attrs and the errors only): the wire records, ``hivectl`` and ``hive-mcp``
import it. The sqlite half is :mod:`hivecore.reminder_store`; the actor that fires them is
:mod:`actors.reminder_scheduler`.

A reminder is ``message`` delivered to its caller's own inbox, from ``reminder``, once it is due
(``delay_seconds`` from now, or at ``at``, Unix seconds). With ``file_path`` (a path inside the
caller's state dir) or a message longer than :data:`INLINE_BYTES`, the text is written to a file in
the caller's state dir when it fires and the message is a pointer to it (:func:`pointer`).
"""

from __future__ import annotations

import math

import attrs

from hivecore.errors import BadInput, HiveError

MAX_MESSAGE_BYTES = 32 * 1024
"""The longest reminder text (UTF-8 bytes); a request line is at most 64 KiB."""
INLINE_BYTES = 4096
"""A longer message (without ``file_path``) is written to a file and delivered as a pointer."""
MAX_DELAY = 366 * 24 * 3600
"""The furthest a reminder may be due: a year and a day from now (seconds)."""
MAX_PENDING_PER_AGENT = 100
"""Pending reminders one agent (or the manager) may have: one agent must not fill the store."""
MAX_REMINDS_PER_MINUTE = 60
"""``remind`` calls one caller may make in a sliding minute: a reminder due at once, acked and asked
again in a loop would otherwise write rows as fast as the store takes them."""
MAX_FILE_PATH = 255
MAX_PATH_PARTS = 8
MAX_NAME_BYTES = 240
"""The longest part of ``file_path`` (UTF-8 bytes): the file is written through a temp file beside
it, ``.<name>.<pid>.tmp``, which must fit NAME_MAX (255) too."""
FILE_DIR = "reminders"
"""Where an oversized message without ``file_path`` is written, inside the caller's state dir."""
BACKOFF_BASE = 5.0
BACKOFF_MAX = 600.0
MAX_ATTEMPTS = 8
"""Deliveries tried before a reminder is given up (``failed``; the operator sees ``last_error``)."""
KEEP_DONE = 30 * 24 * 3600
"""Sent and failed rows are deleted this many seconds after they were due."""
MAX_ID = 10**18
PREVIEW = 1024
"""Characters of a message shown in a listing (the whole text is in the store)."""

Status = str
"""``pending`` (waiting or retrying), ``sent``, ``failed`` (given up after :data:`MAX_ATTEMPTS`)."""


class UnknownReminder(HiveError):
    http_status = 404

    def __init__(self, reminder_id: int) -> None:
        super().__init__(f"no pending reminder {reminder_id}")
        self.reminder_id = reminder_id


@attrs.frozen(kw_only=True)
class Reminder:
    """One reminder as the operator and the dashboard see it (times in Unix seconds)."""

    id: int
    agent: str
    """Whose it is (``hm1nd`` for the manager): delivered to that agent's inbox, from ``reminder``."""
    message: str
    """The text (cut to :data:`PREVIEW` characters in listings)."""
    size: int
    """The text's length in UTF-8 bytes."""
    file_path: str | None = None
    due_at: float
    created_at: float
    status: Status = "pending"
    attempt_count: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None
    """When the next delivery is tried (a retry after a failure); ``None`` once sent or failed."""
    sent_at: float | None = None


@attrs.frozen(kw_only=True)
class LooseReminders:
    """One caller's reminders not yet delivered (:func:`split_due`): ``due`` ones are past their
    time (a delivery failed and is retried), ``pending`` ones are still to come; each oldest first."""

    due: list[Reminder]
    pending: list[Reminder]


# --- checks (the request records' fields) ---------------------------------------------------------


def delay(value: float | None) -> float | None:
    """``delay_seconds``: from 0 to :data:`MAX_DELAY`."""
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"delay_seconds must be 0 or more, got {value}")
    if value > MAX_DELAY:
        raise BadInput(f"delay_seconds is at most {MAX_DELAY} (a year), got {value}")
    return float(value)


def unix_time(value: float | None) -> float | None:
    """``at``: Unix seconds (a positive, finite number; the past is refused with the clock)."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"at is a time in Unix seconds, got {value}")
    return float(value)


def message(value: str) -> str:
    """The text: not blank, at most :data:`MAX_MESSAGE_BYTES`."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise BadInput(
            f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}: write it to a file in your "
            "state dir and remind yourself of its path"
        )
    if not value.strip():
        raise BadInput("message is empty")
    return value


def file_path(value: str | None) -> str | None:
    """A path inside the caller's state dir: relative (``notes/later.md``), or absolute under the
    state dir as the caller sees it (checked when it is used); no ``.``/``..`` parts, no NUL."""
    if value is None:
        return None
    if len(value.encode("utf-8", "surrogatepass")) > MAX_FILE_PATH:
        raise BadInput(f"file_path is longer than {MAX_FILE_PATH} bytes")
    parts = [p for p in value.split("/") if p]
    if not parts or "\0" in value or any(p in (".", "..") for p in parts) or len(parts) > MAX_PATH_PARTS:
        raise BadInput(
            f"file_path must name a file inside your state dir (at most {MAX_PATH_PARTS} parts, "
            f"no '.' or '..'), got {value[:60]!r}"
        )
    longest = max(len(p.encode("utf-8", "surrogatepass")) for p in parts)
    if longest > MAX_NAME_BYTES:
        raise BadInput(f"file_path: a name is at most {MAX_NAME_BYTES} bytes, got one of {longest}")
    return value


def reminder_id(value: int) -> int:
    if not 0 < value < MAX_ID:
        raise BadInput(f"a reminder id is a number from 1 to {MAX_ID - 1}, got {value}")
    return value


# --- the rules --------------------------------------------------------------------------------------


def due_time(delay_seconds: float | None, at: float | None, now: float) -> float:
    """When a reminder asked at ``now`` is due: exactly one of ``delay_seconds`` and ``at``; ``at``
    must not be in the past nor more than :data:`MAX_DELAY` ahead."""
    if (delay_seconds is None) == (at is None):
        raise BadInput(
            "give exactly one of delay_seconds (seconds from now) and at (Unix seconds), "
            + ("not both" if at is not None else "got neither")
        )
    if delay_seconds is not None:
        return now + delay_seconds
    assert at is not None
    if at < now - 1:  # a second's grace for the caller's clock reading
        raise BadInput(f"at {at:.0f} is in the past (now is {now:.0f}); give a later time")
    if at > now + MAX_DELAY:
        raise BadInput(f"at {at:.0f} is more than a year ahead (now is {now:.0f})")
    return max(at, now)


def state_relative(path: str, state_dir: str) -> tuple[str, ...]:
    """``file_path`` (checked by :func:`file_path`) as parts below the state dir; an absolute path
    must be under ``state_dir`` (the caller's state dir as it sees it)."""
    if path.startswith("/"):
        prefix = state_dir.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise BadInput(f"file_path {path[:60]!r} is outside your state dir ({state_dir})")
        path = path[len(prefix) :]
    parts = tuple(p for p in path.split("/") if p)
    if not parts:
        raise BadInput("file_path names your state dir itself; name a file inside it")
    return parts


def written_to_file(text: str, path: str | None) -> bool:
    """Whether the text goes to a file when it fires (a ``file_path``, or longer than inline)."""
    return path is not None or len(text.encode("utf-8", "surrogatepass")) > INLINE_BYTES


def default_parts(reminder: int) -> tuple[str, ...]:
    """Where an oversized message without ``file_path`` is written, below the state dir."""
    return (FILE_DIR, f"reminder-{reminder}.md")


def pointer(visible_path: str, size: int) -> str:
    """The message delivered for a reminder whose text is in a file."""
    return f"reminder: the text ({size} bytes) is in {visible_path}; read it there"


def backoff(attempts: int) -> float:
    """Seconds before the next delivery after ``attempts`` failed ones (doubling, capped)."""
    return float(min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX))


def split_due(rows: list[Reminder], now: float) -> LooseReminders:
    """A caller's pending reminders split into due (``due_at <= now``) and still to come."""
    pending = sorted((r for r in rows if r.status == "pending"), key=lambda r: (r.due_at, r.id))
    return LooseReminders(
        due=[r for r in pending if r.due_at <= now], pending=[r for r in pending if r.due_at > now]
    )
