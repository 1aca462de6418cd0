"""Usage per agent: every turn the harness reports (``report_turn``), and the **stuck** judgement.

Records
    One row per reported turn in the ``turns`` table (store migration 6): when it ended (Unix
    seconds, the daemon's clock), its duration, input/output/cache tokens, cost in USD as the
    Claude CLI reports it, tool calls and result status. At most :data:`MAX_TURNS_KEPT` rows are kept
    per agent (the oldest go); running totals per agent live in ``usage_totals``, so "total" stays
    true after old rows go. A report is an agent's own claim: it is bounded (:class:`TurnReport`'s
    checks) and rate-limited (:data:`MAX_REPORTS_PER_MINUTE`), never trusted for anything but display.

Stuck (:func:`stuck_reason`, pure)
    A running, unpaused agent is stuck when its current turn (messages handed out by ``recv`` and not
    yet acked, the connection still open, no ``recv`` since) has run longer than the turn limit, or
    when it is not in a turn, not polling, and mail has waited for it longer than ``stuck_after``
    with no poll in that time. An agent that needs a login is waiting on purpose, never stuck.

The sqlite functions run on the store thread; :func:`summaries` reads both tables in one call.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
from collections.abc import Callable, Iterable

import attrs

from hivecore.errors import BadInput

MAX_TURNS_KEPT = 5000
"""Turn rows kept per agent (a hostile agent cannot grow the database past this)."""
MAX_REPORTS_PER_MINUTE = 120
MAX_DURATION = 7 * 24 * 3600.0
MAX_TOKENS = 10**10
"""Per turn and per kind (input, output, cache read, cache creation)."""
MAX_COST_USD = 10_000.0
MAX_TOOL_CALLS = 100_000
_STATUS_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _finite(what: str, value: float, limit: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= limit:
        raise BadInput(f"{what} must be a number from 0 to {limit:g}")
    return float(value)


def _count(what: str, value: int, limit: int) -> int:
    if isinstance(value, bool) or not 0 <= value <= limit:
        raise BadInput(f"{what} must be a whole number from 0 to {limit}")
    return value


def duration(value: float) -> float:
    return _finite("duration_seconds", value, MAX_DURATION)


def tokens(what: str) -> Callable[[int], int]:
    return lambda value: _count(what, value, MAX_TOKENS)


def cost(value: float) -> float:
    return _finite("cost_usd", value, MAX_COST_USD)


def tool_calls(value: int) -> int:
    return _count("tool_calls", value, MAX_TOOL_CALLS)


def status(value: str) -> str:
    if not _STATUS_RE.fullmatch(value):
        raise BadInput("status is a word of a-z, 0-9 and _ (at most 32), such as ok, error or timeout")
    return value


@attrs.frozen(kw_only=True)
class Turn:
    """One reported turn, checked (the record the ``report_turn`` request carries)."""

    duration_seconds: float
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    status: str = "ok"

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens


@attrs.frozen(kw_only=True)
class Summary:
    """An agent's usage: today (the UTC day) and in total; ``last_turn_at`` in Unix seconds."""

    turns_today: int = 0
    tokens_today: int = 0
    cost_today_usd: float = 0.0
    turns_total: int = 0
    tokens_total: int = 0
    cost_total_usd: float = 0.0
    last_turn_at: int | None = None
    last_status: str | None = None


def day_start(now: float) -> int:
    """The Unix time of the start of ``now``'s UTC day."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(day.timestamp())


# --- sqlite (the store thread) ------------------------------------------------------------------------


def record(conn: sqlite3.Connection, agent: str, turn: Turn, ended_at: float) -> None:
    """Insert one turn, bump the agent's totals and drop its rows past :data:`MAX_TURNS_KEPT`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO turns(agent, ended_at, duration, input_tokens, output_tokens, cache_read_tokens,"
            " cache_creation_tokens, cost_usd, tool_calls, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                agent,
                ended_at,
                turn.duration_seconds,
                turn.input_tokens,
                turn.output_tokens,
                turn.cache_read_tokens,
                turn.cache_creation_tokens,
                turn.cost_usd,
                turn.tool_calls,
                turn.status,
            ),
        )
        conn.execute(
            "INSERT INTO usage_totals(agent, turns, tokens, cost_usd) VALUES (?, 1, ?, ?) "
            "ON CONFLICT(agent) DO UPDATE SET turns=turns+1, tokens=tokens+excluded.tokens, "
            "cost_usd=cost_usd+excluded.cost_usd",
            (agent, turn.tokens, turn.cost_usd),
        )
        conn.execute(
            "DELETE FROM turns WHERE agent=? AND id <= (SELECT id FROM turns WHERE agent=? "
            "ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (agent, agent, MAX_TURNS_KEPT),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def summaries(conn: sqlite3.Connection, names: Iterable[str] | None, today: int) -> dict[str, Summary]:
    """Every agent's (or ``names``') :class:`Summary`; agents without a turn are absent."""
    where, args = "", ()  # type: tuple[str, tuple[str, ...]]
    wanted = None if names is None else sorted(set(names))
    if wanted is not None:
        where = f" WHERE agent IN ({','.join('?' * len(wanted))})"
        args = tuple(wanted)
        if not wanted:
            return {}
    out: dict[str, dict[str, object]] = {}
    for agent, turns, tokens, cost_usd in conn.execute(
        f"SELECT agent, turns, tokens, cost_usd FROM usage_totals{where}", args
    ):
        out[agent] = {"turns_total": turns, "tokens_total": tokens, "cost_total_usd": cost_usd}
    day_where = (where + " AND" if where else " WHERE") + " ended_at >= ?"
    for agent, turns, tokens, cost_usd in conn.execute(
        "SELECT agent, count(*), coalesce(sum(input_tokens+output_tokens+cache_read_tokens+"
        f"cache_creation_tokens), 0), coalesce(sum(cost_usd), 0) FROM turns{day_where} GROUP BY agent",
        (*args, today),
    ):
        out.setdefault(agent, {}).update(turns_today=turns, tokens_today=tokens, cost_today_usd=cost_usd)
    for agent, ended_at, last_status in conn.execute(
        "SELECT agent, ended_at, status FROM turns WHERE id IN "
        f"(SELECT max(id) FROM turns{where} GROUP BY agent)",
        args,
    ):
        out.setdefault(agent, {}).update(last_turn_at=int(ended_at), last_status=last_status)
    return {agent: Summary(**fields) for agent, fields in out.items()}  # type: ignore[arg-type]


def waiting_mail(conn: sqlite3.Connection, inboxes: Iterable[str]) -> dict[str, int]:
    """``sent_at`` of the oldest message not yet handed out, per inbox that has one."""
    wanted = sorted(set(inboxes))
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT recipient, min(sent_at) FROM messages WHERE acked_at IS NULL AND delivered_at IS NULL "
        f"AND recipient IN ({','.join('?' * len(wanted))}) GROUP BY recipient",
        wanted,
    )
    return {r[0]: int(r[1]) for r in rows}


def forget(conn: sqlite3.Connection, agent: str) -> None:
    """Drop an agent's usage (its state was purged)."""
    conn.execute("DELETE FROM turns WHERE agent=?", (agent,))
    conn.execute("DELETE FROM usage_totals WHERE agent=?", (agent,))


# --- stuck (pure) -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Liveness:
    """What the broker knows of an agent's reading, at ``now`` (Unix seconds)."""

    now: float
    turn_since: float | None = None
    """When its current turn's messages were handed out (None: not in a turn)."""
    polling: bool = False
    """A ``recv`` of it is waiting right now."""
    idle_since: float = 0.0
    """When it last polled (or when the daemon started, if it has not since)."""
    oldest_waiting: int | None = None
    """``sent_at`` of its oldest message not yet handed out."""


@attrs.frozen(kw_only=True)
class Activity:
    """One agent's usage and liveness, as its row shows them."""

    summary: Summary
    live: Liveness
    pending_reminders: int = 0
    """Its reminders not delivered yet (:func:`hivecore.reminder_store.pending_counts`)."""
    parent: str | None = None
    """Who requested its spawn (:mod:`hivecore.topology`), read in the same store call."""


@attrs.frozen
class ActivityRows:
    """What :meth:`hivecore.services.usage.Usage.read_activity` read (one snapshot of the database)
    at ``now`` (Unix seconds)."""

    now: float
    summaries: dict[str, Summary]
    waiting: dict[str, int]
    """Inbox → ``sent_at`` of its oldest message not handed out yet."""
    reminders: dict[str, int]
    parents: dict[str, str]


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def stuck_reason(
    live: Liveness, *, running: bool, paused: bool, needs_login: bool, turn_limit: float, stuck_after: float
) -> str | None:
    """Why the agent is stuck (one sentence for its row), or None (module doc)."""
    if not running or paused:
        return None
    if live.turn_since is not None:
        ran = live.now - live.turn_since
        if ran > turn_limit:
            return f"its turn has run {_span(ran)}, past the {_span(turn_limit)} limit"
        return None
    if needs_login or live.polling or live.oldest_waiting is None:
        return None
    quiet = live.now - max(live.idle_since, live.oldest_waiting)
    if quiet > stuck_after:
        waited = _span(live.now - live.oldest_waiting)
        return f"mail has waited {waited} and it has not polled for {_span(quiet)}"
    return None
